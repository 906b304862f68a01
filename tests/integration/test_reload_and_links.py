"""A running ``pbxcal run`` follows SIGHUP (config reload) and ``pbxcal links`` changes.

Real daemon subprocess, real sandboxed Asterisk; what Asterisk holds is read through
its own CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    DaemonRun,
    Event,
    Link,
    forwarding,
    wait_for,
    wait_forwarding,
    write_calendar,
)

from pbxcal.testing.asterisk import AsteriskSandbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def active_now(title: str) -> list[Event]:
    now = datetime.now(UTC).replace(microsecond=0)
    return [
        Event(
            uid=f"{title}@test",
            title=title,
            start=now - timedelta(minutes=5),
            end=now + timedelta(minutes=30),
        )
    ]


def test_sighup_reloads_the_number_policy(
    ast: AsteriskSandbox, tmp_path: Path, daemons: list[DaemonRun]
) -> None:
    calendar = tmp_path / "anna.ics"
    write_calendar(calendar, active_now("+32 470 12 34 56"))  # a Belgian mobile
    daemon = DaemonRun(tmp_path, ast, [Link("100", calendar)])
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    # READY does not wait for the first calendar read; wait until it was read and refused
    wait_for(
        lambda: daemon.metric("pbxcal_rejected_events_total", reason="blocked-by-policy"),
        lambda count: count >= 1,
        timeout=10,
        what="the Belgian number to be refused",
    )
    assert forwarding(ast, "100") is None  # BE is not allowed by default
    with daemon.config.open("a") as config:
        config.write('\n[policy]\nallowed_countries = ["NL", "BE"]\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_forwarding(ast, "100", "+32470123456", timeout=10)
    daemon.check_alive()
    wait_for(daemon.log, lambda log: "configuration reloaded" in log, 5, what="the reload logged")


def test_links_added_and_disabled_at_run_time_are_followed(
    ast: AsteriskSandbox, tmp_path: Path, daemons: list[DaemonRun]
) -> None:
    first = tmp_path / "anna.ics"
    write_calendar(first, active_now("201"))
    daemon = DaemonRun(tmp_path, ast, [Link("100", first)])
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    wait_forwarding(ast, "100", "201", timeout=10)

    second = tmp_path / "bob.ics"
    write_calendar(second, active_now("0612345678"))
    added = subprocess.run(
        daemon.command("links", "add", "--extension", "202", "--source", str(second), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    link_id = str(json.loads(added.stdout)["added"])
    wait_forwarding(ast, "202", "+31612345678", timeout=15)

    disabled = subprocess.run(
        daemon.command("links", "disable", link_id),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert disabled.returncode == 0, disabled.stderr
    wait_forwarding(ast, "202", None, timeout=15)
    assert forwarding(ast, "100") == "201"  # the other link is unaffected
