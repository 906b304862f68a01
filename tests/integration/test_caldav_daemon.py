"""A CalDAV calendar (a real Radicale) linked from the CLI drives a forwarding on the
sandboxed Asterisk through ``pbxcal run`` (issue #9 item 3, end to end).

The password goes in on standard input and is stored encrypted; an appointment added in
Radicale that starts now becomes a forwarding within the poll interval; with Radicale
down the link is "unreachable" and the last known appointment keeps driving the
forwarding; a wrong password is refused when the link is added.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    PBXCAL,
    DaemonRun,
    forwarding,
    ics_time,
    new_key_file,
    wait_for,
    wait_forwarding,
)

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.radicale import RadicaleServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "app-specific-pw-7f3a"


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[RadicaleServer]:
    server = RadicaleServer(tmp_path / "radicale", {"alice": PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def event(uid: str, title: str, start: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:{ics_time(start)}\r\nDTSTART:{ics_time(start)}\r\n"
        f"DTEND:{ics_time(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def cli(
    daemon: DaemonRun, *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *argv, "--config", str(daemon.config), "--store", daemon.store],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def show(daemon: DaemonRun, link: str) -> dict[str, Any]:
    result = cli(daemon, "links", "show", link, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_a_caldav_calendar_drives_a_forwarding(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, radicale: RadicaleServer
) -> None:
    keys = new_key_file(tmp_path)
    calendar_url = radicale.make_calendar("alice", "work")
    daemon = DaemonRun(tmp_path, ast, [], key_file=keys)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()

    wrong = cli(daemon, "links", "add", "--provider", "caldav", "--source", calendar_url,
                "--username", "alice", "--password-file", "-", "--extension", "101",
                stdin="not-the-password\n")  # fmt: skip
    assert wrong.returncode == 2 and "wrong user name or password" in wrong.stderr, wrong.stderr
    assert "not-the-password" not in wrong.stderr

    added = cli(daemon, "links", "add", "--provider", "caldav", "--source", calendar_url,
                "--username", "alice", "--password-file", "-", "--extension", "100", "--json",
                stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    link = str(json.loads(added.stdout)["added"])
    store_file = Path(daemon.store.removeprefix("sqlite:///"))
    assert PASSWORD.encode() not in store_file.read_bytes()  # encrypted at rest

    now = datetime.now(UTC)
    radicale.put("alice", "work", "a.ics", event("a@t", "201", now - timedelta(minutes=1),
                                                 now + timedelta(minutes=10)))  # fmt: skip
    added_at = datetime.now(UTC)
    seen = wait_forwarding(ast, "100", "201", timeout=15)
    print(f"forwarding on {(seen - added_at).total_seconds():.2f}s after the appointment was put")
    wait_for(lambda: show(daemon, link)["status"], lambda s: s == "connected", 10, what="ok")

    synced = cli(daemon, "links", "sync", link, "--json")  # the admin tool, same code path
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["status"] == "connected"

    radicale.stop()  # the server is down: the last known appointment keeps driving it
    wait_for(lambda: show(daemon, link)["status"], lambda s: s == "unreachable", 15,
             what="status unreachable")  # fmt: skip
    assert forwarding(ast, "100") == "201"
    daemon.check_alive()
