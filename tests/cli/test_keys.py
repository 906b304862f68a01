"""`pbxcal keys generate|rotate` through the real console script, and the rule that no
pbxcal option takes a secret's value on the command line.
"""

from __future__ import annotations

import argparse
import base64
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.cli.main import build_parser
from pbxcal.cli.secret_input import RefuseOnCommandLine
from pbxcal.store import Store
from pbxcal.store.secrets import key_id, read_key_file

PBXCAL = Path(sys.executable).parent / "pbxcal"


def run(*argv: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *argv], capture_output=True, text=True, timeout=60, check=False, umask=umask
    )


def keys_of(path: Path) -> list[bytes]:
    return [base64.b64decode(line) for line in path.read_text().splitlines() if line]


def assert_no_key_material(output: str, path: Path) -> None:
    for line in path.read_text().splitlines():
        assert line not in output
        assert base64.b64decode(line).hex()[:16] not in output


def test_generate_writes_a_0600_key_file_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    result = run("keys", "generate", str(path), umask=0)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [key] = keys_of(path)
    assert len(key) == 32
    assert result.stdout == (
        f'wrote {path}: 1 key (id {key_id(key)}); set [secrets] key_file = "{path}"\n'
    )
    assert_no_key_material(result.stdout + result.stderr, path)
    assert read_key_file(path).ids == (key_id(key),)


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    assert run("keys", "generate", str(path)).returncode == 0
    before = path.read_bytes()
    result = run("keys", "generate", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"pbxcal: error: {path} exists; it is never overwritten (--add puts a new key in "
        "front of its keys)\n"
    )
    assert path.read_bytes() == before


def test_generate_add_puts_a_new_current_key_first(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    assert run("keys", "generate", str(path)).returncode == 0
    [old] = keys_of(path)
    result = run("keys", "generate", "--add", str(path), umask=0)
    assert result.returncode == 0, result.stderr
    new, kept = keys_of(path)
    assert kept == old and new != old
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"new current key {key_id(new)} in front of 1 older key(s) ({key_id(old)})" in (
        result.stdout
    )
    assert_no_key_material(result.stdout + result.stderr, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys"]  # no temporary left


def test_generate_add_needs_a_private_existing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run("keys", "generate", "--add", str(missing))
    assert result.returncode == 2 and not missing.exists()
    assert "does not exist" in result.stderr
    path = tmp_path / "keys"
    assert run("keys", "generate", str(path)).returncode == 0
    path.chmod(0o644)
    before = path.read_bytes()
    result = run("keys", "generate", "--add", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"pbxcal: error: key file: {path}: mode 0644 lets other users at the keys; "
        "chmod 600 it (owned by the service's user)\n"
    )
    assert path.read_bytes() == before


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, list[str], str]]:
    key_file = tmp_path / "keys"
    assert run("keys", "generate", str(key_file)).returncode == 0
    config = tmp_path / "pbxcal.toml"
    config.write_text(f'[secrets]\nkey_file = "{key_file}"\n', encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    yield key_file, ["--config", str(config), "--store", url], url


def test_rotate_re_encrypts_and_the_old_key_can_go(setup: tuple[Path, list[str], str]) -> None:
    key_file, options, url = setup
    secrets = {}
    with Store.open(url, keys=read_key_file(key_file)) as store:
        for n in range(3):
            link = store.add_link(str(100 + n), "main", "caldav", f"https://dav.example/{n}/")
            store.save_secret(link.id, "caldav-password", f"password {n}")
            secrets[link.id] = f"password {n}".encode()
    assert run("keys", "generate", "--add", str(key_file)).returncode == 0
    new = read_key_file(key_file).current_id

    result = run("keys", "rotate", *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"re-encrypted 3 secret(s) in store {url.removeprefix('sqlite:///')} with key {new} "
        f"(keys from {key_file})\n"
    )
    again = run("keys", *options, "rotate")
    assert again.returncode == 0 and again.stdout.startswith("re-encrypted 0 secret(s)")

    key_file.write_text(key_file.read_text().splitlines()[0] + "\n")  # the old key goes
    with Store.open(url, keys=read_key_file(key_file)) as store:
        assert {link: store.load_secret(link, "caldav-password") for link in secrets} == secrets


def test_rotate_with_a_key_that_does_not_fit_changes_nothing(
    setup: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    key_file, options, url = setup
    with Store.open(url, keys=read_key_file(key_file)) as store:
        link = store.add_link("100", "main", "caldav", "https://dav.example/a/").id
        store.save_secret(link, "caldav-password", "kept")
    key_file.unlink()
    assert run("keys", "generate", str(key_file)).returncode == 0  # a different key
    result = run("keys", "rotate", *options)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"pbxcal: error: cannot decrypt secret 'caldav-password' of link {link}: it was "
        "encrypted with key "
    )
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_rotate_without_a_key_configured(tmp_path: Path) -> None:
    config = tmp_path / "pbxcal.toml"
    config.write_text("", encoding="utf-8")
    result = run(
        "keys", "rotate", "--config", str(config), "--store", f"sqlite:///{tmp_path / 's.db'}"
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"pbxcal: error: {config}: no encryption key configured for stored credentials: set "
        "[secrets] key_file or key_credential (make a key file with: pbxcal keys generate "
        "FILE)\n"
    )


# -- no secret on the command line ---------------------------------------------------------

#: An option named like this would take the secret itself as its value.
SECRET_VALUED = re.compile(
    r"--(?:[a-z0-9-]+-)?(password|passwd|passphrase|secret|token|api-key|private-key|key)"
)


def every_option(
    parser: argparse.ArgumentParser, path: str = "pbxcal"
) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_option(sub, f"{path} {name}")
        else:
            yield path, action


def test_no_option_of_pbxcal_takes_a_secret_as_its_value() -> None:
    offending = []
    seen = 0
    for command, action in every_option(build_parser()):
        seen += 1
        if isinstance(action, RefuseOnCommandLine) or action.nargs == 0:
            continue  # the guard that only refuses, or a flag without a value
        for option in action.option_strings:
            if SECRET_VALUED.fullmatch(option):
                offending.append(f"{command} {option}")
    assert seen > 50
    assert offending == [], "secrets are read from files, stdin or prompts (secret_input)"


def test_keys_commands_take_no_key_material() -> None:
    options = {
        option
        for command, action in every_option(build_parser())
        if command.startswith("pbxcal keys")
        for option in action.option_strings
    }
    assert options == {"-h", "--help", "--add", "--config", "--store"}
