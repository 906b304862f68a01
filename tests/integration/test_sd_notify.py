"""The sd_notify protocol for real: ``pbxcal run`` talking to a socket like systemd's.

The test binds an ``AF_UNIX``/``SOCK_DGRAM`` socket in ``tmp_path``, starts the daemon
with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC=2000000`` against the Asterisk sandbox, and
checks the datagrams: ``READY=1`` with a ``STATUS=`` summary, ``WATCHDOG=1`` beats
(at least every second: half the watchdog interval), and ``STOPPING=1`` after SIGTERM,
in that order, with exit status 0 within 5 s.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import DaemonRun, Event, Link, write_calendar

from pbxcal.testing.asterisk import AsteriskSandbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """Datagrams (monotonic arrival time, text) until the deadline."""
    got = []
    while time.monotonic() < until:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.append((time.monotonic(), data.decode()))
    return got


def test_ready_watchdog_stopping(
    asterisk: AsteriskSandbox, notify_socket: socket.socket, tmp_path: Path
) -> None:
    if not asterisk.running:
        asterisk.start()
    asterisk.cli("database deltree pbxcal")
    cal = tmp_path / "anna.ics"
    now = datetime.now(UTC)
    write_calendar(cal, [Event("a", "201", now - timedelta(minutes=1), now + timedelta(hours=1))])
    daemon = DaemonRun(
        tmp_path,
        asterisk,
        [Link("100", cal)],
        extra_env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "2000000"},
    )
    daemon.start()
    assert daemon.proc is not None
    try:
        started = time.monotonic()
        messages: list[tuple[float, str]] = []
        while not any("READY=1" in m for _, m in messages):
            assert time.monotonic() - started < 30, f"no READY=1; got {messages}\n{daemon.log()}"
            daemon.check_alive()
            messages += receive(notify_socket, time.monotonic() + 0.5)
        ready_at, ready = next((t, m) for t, m in messages if "READY=1" in m)
        print(f"READY=1 {ready_at - started:.2f}s after start: {ready!r}")
        status = re.search(r"^STATUS=(.*)$", ready, re.MULTILINE)
        assert status, ready
        assert re.fullmatch(
            r"1/1 PBX connected, 1 links, \d+ forwardings active", status.group(1)
        ), status.group(1)
        # at READY the PBX was contacted: the daemon answers ready on HTTP too
        assert daemon.http("/readyz")[0] == 200

        messages += receive(notify_socket, time.monotonic() + 3.0)
        beats = [t for t, m in messages if t > ready_at and "WATCHDOG=1" in m]
        print(f"{len(beats)} WATCHDOG=1 within 3 s after READY")
        assert len(beats) >= 2, messages
        gaps = [b - a for a, b in zip([ready_at, *beats], beats, strict=False)]
        assert max(gaps) < 2.0, f"watchdog gap {max(gaps):.2f}s >= WATCHDOG_USEC"
        # the STATUS summary follows the state: the forwarding is active by now
        statuses = [m for _, m in messages if "STATUS=" in m]
        assert any("1 forwardings active" in m for m in statuses), statuses

        term_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=5)
        exited = time.monotonic() - term_at
        tail = receive(notify_socket, time.monotonic() + 0.3)
        print(f"exit {code} {exited:.2f}s after SIGTERM; last datagrams: {tail[-2:]}")
        assert code == 0, daemon.log()
        assert exited < 5.0
        stops = [i for i, (_, m) in enumerate(tail) if "STOPPING=1" in m]
        assert len(stops) == 1, tail
        assert not any("READY=1" in m for _, m in tail), tail
        # nothing after STOPPING=1 claims the service is alive
        assert not any("WATCHDOG=1" in m for _, m in tail[stops[0] + 1 :]), tail
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)
