"""Reading a secret into a command (``pbxcal.cli.secret_input``): a file, stdin or a prompt
without echo, never argv. The prompt is also driven for real, through a pseudo-terminal
that is the child process's controlling terminal, to see that nothing is echoed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbxcal.cli import secret_input
from pbxcal.cli.secret_input import add_secret_option, read_secret, read_secret_option
from pbxcal.errors import InputError

PASSWORD = "Tr0ub4dor&3 ü"
WHAT = "the CalDAV password"


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pbxcal links add")
    add_secret_option(p, "password", WHAT)
    return p


def error_of(call: object) -> str:
    with pytest.raises(InputError) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{PASSWORD}\n", PASSWORD),
        (f"{PASSWORD}\r\n", PASSWORD),
        (PASSWORD, PASSWORD),
        (f" {PASSWORD} \n\n", f" {PASSWORD} \n"),  # only one line break is dropped
        ('{"type": "service_account",\n "x": 1}\n', '{"type": "service_account",\n "x": 1}'),
    ],
)
def test_from_a_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content, encoding="utf-8", newline="")
    ns = parser().parse_args(["--password-file", str(path)])
    assert read_secret_option(ns, "password", WHAT) == expected


def test_from_stdin() -> None:
    ns = parser().parse_args(["--password-file", "-"])
    stdin = io.BytesIO(f"{PASSWORD}\n".encode())
    assert read_secret_option(ns, "password", WHAT, stdin=stdin) == PASSWORD


def test_from_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr(secret_input.getpass, "getpass", fake_getpass)
    ns = parser().parse_args([])
    assert read_secret_option(ns, "password", WHAT, terminal=Terminal(tty=True)) == PASSWORD
    assert prompts == ["The CalDAV password: "]


def test_no_prompt_without_a_terminal_and_no_empty_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_prompt(prompt: str = "") -> str:
        raise AssertionError("prompted without a terminal")

    monkeypatch.setattr(secret_input.getpass, "getpass", must_not_prompt)
    assert error_of(lambda: read_secret(None, WHAT, terminal=Terminal(tty=False))) == (
        f"cannot ask for {WHAT}: standard input is not a terminal; give it in a file "
        "(FILE, or '-' for standard input)"
    )
    monkeypatch.setattr(secret_input.getpass, "getpass", lambda prompt="": "")
    assert error_of(lambda: read_secret(None, WHAT, terminal=Terminal(tty=True))) == (
        f"no {WHAT} given"
    )

    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(secret_input.getpass, "getpass", eof)
    assert error_of(lambda: read_secret(None, WHAT, terminal=Terminal(tty=True))) == (
        f"no {WHAT} given"
    )


def test_unusable_sources_are_one_line_errors_without_the_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert error_of(lambda: read_secret(str(missing), WHAT)) == (
        f"cannot read {WHAT} from {missing}: No such file or directory"
    )
    assert error_of(lambda: read_secret(str(tmp_path), WHAT)) == (
        f"cannot read {WHAT} from {tmp_path}: it is a directory"
    )
    empty = tmp_path / "empty"
    empty.write_text(" \n", encoding="utf-8")
    assert error_of(lambda: read_secret(str(empty), WHAT)) == f"{WHAT} from {empty} is empty"
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(PASSWORD.encode("latin-1"))
    message = error_of(lambda: read_secret(str(latin1), WHAT))
    assert message == f"{WHAT} from {latin1} is not UTF-8 text"
    assert "Tr0ub4dor" not in message
    nul = tmp_path / "nul"
    nul.write_bytes(b"abc\0def")
    assert error_of(lambda: read_secret(str(nul), WHAT)).endswith("contains a NUL byte")
    huge = io.BytesIO(b"x" * (64 * 1024 + 1))
    assert error_of(lambda: read_secret("-", WHAT, stdin=huge)) == (
        f"{WHAT} from standard input: larger than 65536 bytes"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--password", PASSWORD],
        [f"--password={PASSWORD}"],
        ["--password"],
    ],
)
def test_the_secret_itself_is_never_an_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # without the guard argparse would read "--password X" as "--password-file X" and
    # then say that the file X (the password) does not exist
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--password: a secret is never given on the command line" in err
    assert "--password-file" in err
    assert PASSWORD not in err
    assert "--password " not in parser().format_help().replace("--password-file", "")


# -- the real prompt, on a pseudo-terminal -------------------------------------------------

_CHILD = """
import fcntl, hashlib, os, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes the controlling terminal
from pbxcal.cli.secret_input import read_secret
value = read_secret(None, "the CalDAV password")
print("GOT", hashlib.sha256(value.encode()).hexdigest(), flush=True)
"""


def _read_until(master: int, marker: bytes, seen: bytearray, deadline: float) -> None:
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"waited for {marker!r}; the terminal showed {bytes(seen)!r}"
        ready, _, _ = select.select([master], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        assert chunk, f"terminal closed before {marker!r}: {bytes(seen)!r}"
        seen.extend(chunk)


def test_the_prompt_on_a_real_terminal_does_not_echo() -> None:
    master, slave = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        deadline = time.monotonic() + 30
        _read_until(master, b"The CalDAV password: ", seen, deadline)
        os.write(master, PASSWORD.encode() + b"\n")
        digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
        _read_until(master, f"GOT {digest}".encode(), seen, deadline)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    assert PASSWORD.encode() not in seen, "the password was echoed"
    assert b"Warning" not in seen  # getpass did not fall back to echoing input
