"""`pbxcal links` and `pbxcal check-config` through the real console script, on SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PBXCAL = Path(sys.executable).parent / "pbxcal"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *argv], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def config(tmp_path: Path) -> list[str]:
    secret = tmp_path / "ami.secret"
    secret.write_text("s3cret\n")
    path = tmp_path / "pbxcal.toml"
    path.write_text(
        '[pbx.main]\nsecret_file = "{}"\n\n[pbx.branch]\nport = 5039\nsecret_file = "{}"\n\n'
        '[[link]]\nextension = "100"\nsource = "{}"\n'.format(secret, secret, tmp_path / "a.ics")
    )
    return ["--config", str(path), "--store", f"sqlite:///{tmp_path / 'store.sqlite3'}"]


def links(config: list[str]) -> list[dict[str, object]]:
    result = run("links", *config, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)["links"]
    return rows


def test_links_add_list_disable_enable_remove(config: list[str]) -> None:
    added = run(
        "links",
        *config,
        "add",
        "--extension",
        "201",
        "--pbx",
        "branch",
        "--source",
        "https://cal.example/b.ics",
        "--timezone",
        "America/New_York",
    )
    assert added.returncode == 0, added.stderr
    assert "extension 201 on branch" in added.stdout
    rows = links(config)
    assert [(r["extension"], r["pbx"], r["active"], r["last_sync"]) for r in rows] == [
        ("201", "branch", True, None)
    ]
    link_id = str(rows[0]["id"])
    assert run("links", *config, "disable", link_id).returncode == 0
    assert links(config)[0]["active"] is False
    assert run("links", *config, "enable", link_id).returncode == 0
    assert links(config)[0]["active"] is True
    duplicate = run(
        "links",
        *config,
        "add",
        "--extension",
        "201",
        "--pbx",
        "branch",
        "--source",
        "https://cal.example/b.ics",
    )
    assert duplicate.returncode == 2
    assert "exists already" in duplicate.stderr and "Traceback" not in duplicate.stderr
    assert run("links", *config, "remove", link_id).returncode == 0
    assert links(config) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--extension", "abc", "--source", "x.ics"], "is not an extension"),
        (["--extension", "100", "--pbx", "nope", "--source", "x.ics"], "not a configured PBX"),
        (["--extension", "100", "--source", "x.ics", "--timezone", "Mars/Base"], "time zone"),
    ],
)
def test_links_add_refuses_bad_input_in_one_line(
    config: list[str], args: list[str], message: str
) -> None:
    result = run("links", *config, "add", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert links(config) == []


def test_unknown_link_id_is_a_clear_error(config: list[str]) -> None:
    result = run("links", *config, "disable", "999")
    assert result.returncode == 2
    assert "999" in result.stderr and "Traceback" not in result.stderr


def test_store_on_impossible_path_is_one_line(tmp_path: Path, config: list[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    bad = [config[0], config[1], "--store", f"sqlite:///{tmp_path / 'file' / 'store.sqlite3'}"]
    result = run("links", *bad, "list")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[pbxcal]\nregion = "XX"\ntimezone = "Mars/Base"\n\n[policy]\nmax_targets = "five"\n\n'
        '[pbx.main]\nsecret = "inline"\nport = 70000\n\n[[link]]\nextension = "100"\n'
        'source = "a.ics"\npbx = "other"\n'
    )
    result = run("check-config", str(path))
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    expected = [
        "[pbxcal] region",
        "[pbxcal] timezone",
        "[policy] max_targets",
        "[pbx.main] secret",
        "[pbx.main] secret_file",
        "[pbx.main] port",
        "[link #1] pbx",
    ]
    for where in expected:
        assert any(f"{path}: {where}:" in line for line in errors), (where, errors)
    assert len(errors) == len(expected)


def test_check_config_accepts_the_shipped_example() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "pbxcal.example.toml"
    result = run("check-config", str(example))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
