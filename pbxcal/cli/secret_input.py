"""Reading a secret (a password, a token, a key file's JSON) into a command, never from argv.

What it does: gives a command one option, ``--NAME-file FILE`` (``-`` = standard input),
and reads the secret from that file, from stdin, or, without the option, from an
interactive prompt that does not echo (``getpass``). A command line is visible to every
user of the machine (``ps``, ``/proc/PID/cmdline``) and lands in shell history, so no
pbxcal option ever takes a secret's value; ``tests/cli/test_keys.py`` checks that no
option of the ``pbxcal`` parser is named like one.

What it must not do: echo, log or quote the secret (messages name the file and what is
wrong), fall back to reading a pipe when a prompt was expected, or strip more than the
one line break an editor or ``echo`` leaves at the end.

Use::

    add_secret_option(parser, "password", "the CalDAV password")   # --password-file
    password = read_secret_option(ns, "password", "the CalDAV password")

Start reading at ``read_secret_option``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
from typing import BinaryIO, TextIO

from pbxcal.errors import InputError

#: Largest secret read (a service-account JSON key is about 2.3 kB).
MAX_SECRET_BYTES = 64 * 1024
#: The FILE that means standard input.
STDIN = "-"


def add_secret_option(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    """Add ``--NAME-file FILE`` to ``parser``: where ``what`` is read from.

    A hidden ``--NAME`` is added too, which only refuses: without it argparse would take
    ``--NAME hunter2`` as an abbreviation of ``--NAME-file hunter2`` and then report
    that no file ``hunter2`` exists, printing the secret.
    """
    parser.add_argument(
        f"--{name}-file",
        dest=_dest(name),
        metavar="FILE",
        help=f"read {what} from FILE ('-' = standard input); default: ask for it "
        "without echo (it is never given on the command line)",
    )
    parser.add_argument(
        f"--{name}",
        dest=f"_refused_{_dest(name)}",
        nargs="?",
        action=RefuseOnCommandLine,
        help=argparse.SUPPRESS,
    )


class RefuseOnCommandLine(argparse.Action):
    """An option that only refuses its use, without repeating the value it was given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        option = option_string or self.dest
        parser.error(
            f"{option}: a secret is never given on the command line (other users can read "
            f"it in the process list); use {self.option_strings[0]}-file FILE, "
            f"{self.option_strings[0]}-file - for standard input, or leave it out to be asked"
        )


def read_secret_option(
    ns: argparse.Namespace,
    name: str,
    what: str,
    *,
    stdin: BinaryIO | None = None,
    terminal: TextIO | None = None,
) -> str:
    """The secret of ``--NAME-file``: from the file, stdin, or a prompt without echo.

    ``stdin`` and ``terminal`` replace ``sys.stdin.buffer`` / ``sys.stdin`` (tests).
    ``InputError`` (one line, naming the source, never the content) when it cannot
    be read or is empty.
    """
    source: str | None = getattr(ns, _dest(name), None)
    return read_secret(source, what, stdin=stdin, terminal=terminal)


def read_secret(
    source: str | None,
    what: str,
    *,
    stdin: BinaryIO | None = None,
    terminal: TextIO | None = None,
) -> str:
    """``what`` from the file ``source``, stdin (``-``) or, for None, a prompt."""
    if source is None:
        return _prompt(what, terminal if terminal is not None else sys.stdin)
    if source == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _decoded(_read_limited(stream, f"{what} from standard input"), what, "stdin")
    return _decoded(_read_file(source, what), what, source)


def _prompt(what: str, terminal: TextIO) -> str:
    if not terminal.isatty():
        raise InputError(
            f"cannot ask for {what}: standard input is not a terminal; "
            f"give it in a file (FILE, or '-' for standard input)"
        )
    try:
        value = getpass.getpass(f"{what[:1].upper()}{what[1:]}: ")
    except EOFError:
        raise InputError(f"no {what} given") from None
    if not value:
        raise InputError(f"no {what} given")
    return value


def _read_file(path: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise InputError(f"cannot read {what} from {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"cannot read {what} from {path}: it is a directory")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return _read_limited(stream, f"{what} from {path}")
    except OSError as exc:
        raise InputError(f"cannot read {what} from {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read_limited(stream: BinaryIO, where: str) -> bytes:
    data = stream.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise InputError(f"{where}: larger than {MAX_SECRET_BYTES} bytes")
    return data


def _decoded(data: bytes, what: str, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} from {where} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise InputError(f"{what} from {where} is empty")
    if "\0" in text:
        raise InputError(f"{what} from {where} contains a NUL byte")
    return text


def _dest(name: str) -> str:
    return f"{name.replace('-', '_')}_file"
