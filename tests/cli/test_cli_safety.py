"""Issues #7 and #8 through the real console script: no traceback, no leak, one store.

Every hostile input ends in one line on stderr with exit 2; URLs are shown redacted and
stored text is printed escaped; the global options stand before or after an action;
the store a command wrote is named, and root's writes stay the service user's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEEK = ROOT / "examples" / "week.ics"
PBXCAL = Path(sys.executable).parent / "pbxcal"


def run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY",)}
    environment.update(env or {})
    return subprocess.run(
        [str(PBXCAL), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment,
        cwd=cwd or ROOT,
    )


def one_line_error(result: subprocess.CompletedProcess[str], needle: str = "") -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pbxcal"), lines
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "ami.secret"
    path.write_text("s3cret-ami-password\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def config(tmp_path: Path, secret: Path) -> Path:
    path = tmp_path / "pbxcal.toml"
    path.write_text(f'[pbx.main]\nsecret_file = "{secret}"\nextensions = ["100-199"]\n')
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(text)
    return path


# --- issue #7 item 5: one line, exit 2, never a traceback ----------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--extension", "100", "--source", "/a.ics", "--timezone", "Europe"], "time zone"),
        (["--extension", "100", "--source", "/a.ics", "--timezone", "A" * 256], "time zone"),
        (["--extension", "100", "--source", "/a.ics", "--timezone", "../../etc"], "time zone"),
    ],
)
def test_links_add_hostile_timezones(
    config: Path, store: str, args: list[str], needle: str
) -> None:
    one_line_error(run("links", "add", "--config", str(config), "--store", store, *args), needle)


@pytest.mark.parametrize("link_id", ["99999999999999999999999", "-1", "0", "1e3", "٣"])
def test_links_remove_impossible_ids(config: Path, store: str, link_id: str) -> None:
    result = run("links", "--config", str(config), "--store", store, "remove", link_id)
    one_line_error(result, "link id")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[pbxcal]\ntimezone = "Europe"\n', "[pbxcal] timezone"),
        (f'[pbxcal]\ntimezone = "{"x" * 256}"\n', "[pbxcal] timezone"),
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ('[pbxcal]\nextension_pattern = "[0-9]{1,4294967295}"\n', "extension_pattern"),
        ('[pbxcal]\nextension_pattern = "(1+)+0"\n', "too slow"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "plan", "links"])
def test_hostile_configs(tmp_path: Path, text: str, needle: str, command: str) -> None:
    path = write_config(tmp_path, text)
    argv = {
        "check-config": ["check-config", str(path)],
        "plan": ["plan", "--config", str(path), "--ics", str(WEEK), "--extension", "100",
                 "--from", "2026-03-30", "--to", "2026-03-31"],
        "links": ["links", "list", "--config", str(path), "--store", "sqlite://"],
    }[command]
    one_line_error(run(*argv), needle)


def test_plan_over_an_expansion_limit_is_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[sync]\nmax_instances_per_link = 2\n")
    result = run("plan", "--config", str(path), "--ics", str(WEEK), "--extension", "100",
                 "--from", "2026-03-30", "--to", "2026-04-06", "--json")
    one_line_error(result, str(WEEK))
    path = write_config(tmp_path, "[sync]\nmax_events = 1\n")
    result = run("plan", "--config", str(path), "--ics", str(WEEK), "--extension", "100",
                 "--from", "2026-03-30", "--to", "2026-04-06", "--json")
    one_line_error(result, str(WEEK))


# --- issue #7 item 2: the pattern's reach ----------------------------------------------


def test_check_config_warns_about_a_pattern_that_switches_the_policy_off(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[pbxcal]\nextension_pattern = "[0-9]{2,8}"\n')
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert all(w.startswith(f"pbxcal: warning: {path}: [pbxcal] extension_pattern: ")
               for w in warnings)
    assert "leading 0" in warnings[0] and "more than 6 digits" in warnings[1]
    assert "OK" in result.stdout and "2 warnings" in result.stdout


# --- issue #8 item 6 (e): secret files -------------------------------------------------


def test_check_config_reports_a_missing_secret_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'[pbx.main]\nsecret_file = "{tmp_path / "nope"}"\n')
    one_line_error(run("check-config", str(path)), "[pbx.main] secret_file: ")
    assert "does not exist" in run("check-config", str(path)).stderr


def test_check_config_warns_about_a_readable_secret_and_never_shows_it(
    tmp_path: Path, secret: Path
) -> None:
    secret.chmod(0o644)
    path = write_config(tmp_path, f'[pbx.main]\nsecret_file = "{secret}"\n')
    result = run("check-config", str(path))
    assert result.returncode == 0
    assert "readable by its group or others (mode 0644)" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    directory = write_config(tmp_path, f'[pbx.main]\nsecret_file = "{tmp_path}"\n')
    one_line_error(run("check-config", str(directory)), "not a regular file")


# --- issue #7 item 6: sources are checked, URLs redacted, stored text escaped ----------


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("https://[bad/cal.ics", "can be parsed"),
        ("ftp://cal.example/a.ics", "not supported"),
        ("x\r\nAction: Originate", "one line"),
        ("a" * 100_000, "longer than 2048"),
        ("/srv/\x1b[2Ja.ics", "control characters"),
    ],
)
def test_links_add_checks_the_source_like_the_config(
    config: Path, store: str, source: str, needle: str
) -> None:
    line = one_line_error(
        run("links", "add", "--config", str(config), "--store", store,
            "--extension", "100", "--source", source),
        needle,
    )
    assert "Originate" not in line and "\x1b" not in line
    listed = run("links", "list", "--config", str(config), "--store", store, "--json")
    assert json.loads(listed.stdout)["links"] == []


def test_a_private_url_is_never_shown(config: Path, store: str) -> None:
    url = "https://user:pw@cal.example/anna.ics?token=s3cret-token"
    added = run("links", "add", "--config", str(config), "--store", store,
                "--extension", "100", "--source", url)
    assert added.returncode == 0, added.stderr
    assert "s3cret" not in added.stdout and ":pw@" not in added.stdout
    assert "https://cal.example/anna.ics?…" in added.stdout
    for extra in ([], ["--json"]):
        listed = run("links", "list", "--config", str(config), "--store", store, *extra)
        assert listed.returncode == 0, listed.stderr
        assert "s3cret" not in listed.stdout and ":pw@" not in listed.stdout
        assert "cal.example/anna.ics" in listed.stdout


def test_stored_text_is_printed_escaped(config: Path, store: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pbxcal.store import Store

    with Store.open(store) as db:
        link = db.add_link("100", "main", "ics", "/srv/a.ics", {})
        db.log_sync(
            link.id,
            datetime.now(UTC),
            "error",
            0,
            {},
            "cannot read https://u:p@cal.example/a.ics?token=s3cret \x1b[2J\r\nforged line",
        )
    listed = run("links", "list", "--config", str(config), "--store", store)
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\r" not in listed.stdout
    assert "s3cret" not in listed.stdout
    assert "\\x1b[2J\\r\\nforged line" in listed.stdout
    assert not any(line.startswith("forged") for line in listed.stdout.splitlines())


def test_a_relative_file_source_is_stored_absolute(
    config: Path, store: str, tmp_path: Path
) -> None:
    added = run("links", "add", "--config", str(config), "--store", store,
                "--extension", "100", "--source", "cal/anna.ics", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = run("links", "list", "--config", str(config), "--store", store, "--json")
    assert json.loads(listed.stdout)["links"][0]["source"] == str(tmp_path / "cal" / "anna.ics")


# --- issue #8 item 6 (b, d): one store, named; global options anywhere ------------------


@pytest.mark.parametrize(
    "order",
    [
        ["links", "--config", "C", "--store", "S", "add", "--extension", "100"],
        ["links", "add", "--config", "C", "--store", "S", "--extension", "100"],
        ["links", "--config", "C", "add", "--store", "S", "--extension", "100"],
    ],
)
def test_global_options_before_or_after_the_action(
    config: Path, store: str, order: list[str]
) -> None:
    argv = [{"C": str(config), "S": store}.get(a, a) for a in order]
    added = run(*argv, "--source", "/srv/a.ics")
    assert added.returncode == 0, added.stderr
    path = store.removeprefix("sqlite:///")
    assert added.stdout.startswith(f"link 1 added to {path}: extension 100 on main")
    for listing in (["links", "--json", "list"], ["links", "list", "--json"]):
        listed = run(*listing, "--config", str(config), "--store", store)
        assert json.loads(listed.stdout)["store"] == path
    assert run("links", "disable", "1", "--config", str(config), "--store", store).stdout == (
        f"link 1 disabled in {path}\n"
    )
    assert run("links", "remove", "1", "--store", store, "--config", str(config)).stdout == (
        f"link 1 removed from {path}\n"
    )


def test_cli_and_service_share_one_default_store(config: Path, tmp_path: Path) -> None:
    from pbxcal.config import default_store_path

    assert default_store_path() == Path("/var/lib/pbxcal/pbxcal.sqlite3")
    assert default_store_path(f"{tmp_path}:/other") == tmp_path / "pbxcal.sqlite3"
    # as the service sees it under systemd: $STATE_DIRECTORY
    state = {"STATE_DIRECTORY": str(tmp_path)}
    added = run("links", "add", "--config", str(config), "--extension", "100",
                "--source", "/srv/a.ics", env=state, cwd=tmp_path / "..")
    assert added.returncode == 0, added.stderr
    assert f"added to {tmp_path / 'pbxcal.sqlite3'}" in added.stdout
    # never the current directory
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run("links", "list", "--config", str(config), cwd=elsewhere)
    assert not (elsewhere / "pbxcal.sqlite3").exists()
    if not Path("/var/lib/pbxcal").exists():
        line = one_line_error(result, "/var/lib/pbxcal")
        assert "start the service once" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_root_writes_leave_the_store_to_the_service_user(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 64123, 64123)  # a DynamicUser-like uid owns the state directory
    added = run("links", "add", "--config", str(config), "--extension", "100",
                "--source", "/srv/a.ics", env={"STATE_DIRECTORY": str(state)})
    assert added.returncode == 0, added.stderr
    files = sorted(state.iterdir())
    assert files and all(f.stat().st_uid == 64123 for f in files), [
        (f.name, f.stat().st_uid) for f in files
    ]
    assert (state / "pbxcal.sqlite3").stat().st_mode & 0o077 == 0


def test_check_config_warns_about_a_relative_link_source(tmp_path: Path, secret: Path) -> None:
    path = write_config(
        tmp_path,
        f'[pbx.main]\nsecret_file = "{secret}"\n[[link]]\nextension = "100"\n'
        'source = "calendars/anna.ics"\n',
    )
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"pbxcal: warning: {path}: [link #1] source: a relative path is read from the "
        "service's working directory (/ under systemd); write an absolute path"
    ]
