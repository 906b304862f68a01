"""Helpers for tests that run ``pbxcal run`` as a real subprocess against the sandbox.

``DaemonRun`` writes a config (``[sync] interval = 1``, ``[http] listen`` on a free
loopback port, the AMI secret in a 0600 file, one ``[[link]]`` per calendar file) and
starts, kills and restarts the daemon with a SQLite store in the test's directory.
``write_calendar`` replaces a calendar file atomically (new inode, so the file source
sees the change). ``forwarding`` / ``blf`` read what Asterisk holds through its own CLI,
never through pbxcal. Every wait has a deadline: nothing here can hang a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pbxcal.testing.asterisk import AsteriskSandbox

PBXCAL = Path(sys.executable).parent / "pbxcal"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ics_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def whole_second(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole second (iCalendar has no fractions)."""
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


@dataclass(frozen=True)
class Event:
    uid: str
    title: str
    start: datetime
    end: datetime
    status: str | None = None


def calendar_text(events: Sequence[Event]) -> str:
    body = []
    for event in events:
        body.append(
            f"BEGIN:VEVENT\r\nUID:{event.uid}@test.pbxcal\r\n"
            f"DTSTAMP:{ics_time(event.start)}\r\n"
            f"DTSTART:{ics_time(event.start)}\r\nDTEND:{ics_time(event.end)}\r\n"
            f"SUMMARY:{event.title}\r\n"
            + (f"STATUS:{event.status}\r\n" if event.status else "")
            + "END:VEVENT\r\n"
        )
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//tests//EN\r\n"
        + "".join(body)
        + "END:VCALENDAR\r\n"
    )


def write_file_atomically(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)


def write_calendar(path: Path, events: Sequence[Event]) -> None:
    write_file_atomically(path, calendar_text(events))


# -- what Asterisk holds (read through its CLI) ------------------------------------------


def forwarding(ast: AsteriskSandbox, ext: str) -> str | None:
    """``pbxcal/fwd/<ext>`` as Asterisk holds it, or None when absent."""
    out = ast.cli(f"database get pbxcal fwd/{ext}").strip()
    if out.startswith("Value:"):
        return out.removeprefix("Value:").strip()
    assert "not found" in out, out
    return None


def blf(ast: AsteriskSandbox, ext: str) -> str:
    """The device state of ``Custom:pbxcal<ext>`` (UNKNOWN when never set)."""
    for line in ast.cli("devstate list").splitlines():
        if f"'Custom:pbxcal{ext}'" in line:
            return line.split("'")[3]
    return "UNKNOWN"


def wait_for(
    probe: Callable[[], T],
    predicate: Callable[[T], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> tuple[T, float]:
    """Poll ``probe`` until ``predicate`` holds; returns (value, monotonic time seen)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        seen = time.monotonic()
        if predicate(last):
            return last, seen
        if seen > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def wait_forwarding(
    ast: AsteriskSandbox, ext: str, value: str | None, timeout: float, interval: float = 0.05
) -> datetime:
    """Wait until Asterisk holds ``value`` for ``ext``; returns the UTC time it was seen."""
    wait_for(
        lambda: forwarding(ast, ext),
        lambda v: v == value,
        timeout,
        interval,
        what=f"pbxcal/fwd/{ext} == {value!r}",
    )
    return datetime.now(UTC)


# -- the daemon --------------------------------------------------------------------------


def new_key_file(directory: Path) -> Path:
    """A fresh encryption key file made by ``pbxcal keys generate`` (for ``[secrets]``)."""
    path = directory / "keys"
    made = subprocess.run(
        [str(PBXCAL), "keys", "generate", str(path)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    return path


@dataclass
class Link:
    extension: str
    calendar: Path


class DaemonRun:
    """One ``pbxcal run`` subprocess with its config, store and log in ``work``."""

    def __init__(
        self,
        work: Path,
        ast: AsteriskSandbox,
        links: Sequence[Link],
        *,
        secret: str | None = None,
        interval: float = 1,
        extra_env: dict[str, str] | None = None,
        pbx_extra: str = "",
        sync_extra: str = "",
        store: str | None = None,
        extra_config: str = "",
        http_extra: str = "",
        key_file: Path | None = None,
    ) -> None:
        self.work = work
        self.ast = ast
        self.listen = f"127.0.0.1:{free_port()}"
        self.config = work / "pbxcal.toml"
        self.store = store or f"sqlite:///{work / 'pbxcal.sqlite3'}"
        self.log_path = work / "pbxcal.log"
        self.extra_env = extra_env or {}
        secret_file = work / "ami.secret"
        secret_file.write_text(secret if secret is not None else ast.ami_secret)
        secret_file.chmod(0o600)
        text = (
            f'[pbxcal]\nregion = "NL"\ntimezone = "UTC"\n\n'
            f'[http]\nlisten = "{self.listen}"\n{http_extra}\n'
            f"[sync]\ninterval = {interval}\n{sync_extra}\n"
            f'[pbx.main]\nhost = "{ast.ami_host}"\nport = {ast.ami_port}\n'
            f'username = "{ast.ami_username}"\nsecret_file = "{secret_file}"\n'
            "ping_interval = 1\nping_timeout = 1\nbackoff_max = 1\n" + pbx_extra
        )
        text += extra_config
        if key_file is not None:
            text += f'\n[secrets]\nkey_file = "{key_file}"\n'

        for link in links:
            text += f'\n[[link]]\nextension = "{link.extension}"\nsource = "{link.calendar}"\n'
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self, sub: str, *args: str) -> list[str]:
        """``pbxcal SUB --config .. --store .. ARGS`` (the options belong to SUB)."""
        return [str(PBXCAL), sub, "--config", str(self.config), "--store", self.store, *args]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start #{self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(PBXCAL), "run", "--config", str(self.config), "--store", self.store],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env},
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until /readyz answers 200 (config, store, PBX contacted, first pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.http("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"pbxcal run not ready within {timeout:g}s; log:\n{self.log()}")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"pbxcal run exited with {self.proc.returncode}; log:\n{self.log()}"
            )

    def http(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of a GET on the daemon's listener; status 0 if unreachable."""
        try:
            with urllib.request.urlopen(f"http://{self.listen}{path}", timeout=timeout) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0.0 when the series is not there yet)."""
        status, body = self.http("/metrics")
        assert status == 200, status
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            sname, _, rest = series.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if sname == name and got == want:
                return float(value)
        return 0.0

    def links(self) -> list[dict[str, Any]]:
        """``pbxcal links list --json`` against the same config and store."""
        out = subprocess.run(
            self.command("links", "list", "--json"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        links: list[dict[str, Any]] = json.loads(out.stdout)["links"]
        return links

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"pbxcal run did not stop within {timeout:g}s of SIGTERM"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
