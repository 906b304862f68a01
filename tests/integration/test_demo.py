"""The README's demo (``scripts/demo.py``) run as a user runs it, checked step by step.

The module runs the demo once, as a subprocess with the shortest ``--lead`` it allows
(its own sandboxed Asterisk, Radicale, aiosmtpd and ``pbxcal run``), within
``DEMO_TIMEOUT``; each test then reads one step back from what it printed:

* forwarding for 100 (a calendar file) switches on (201, then 201 and the mobile number
  ringing in parallel) and off again, and the premium-rate number never rings;
* the CalDAV link for 101 (``pbxcal links add``): "202", added while pbxcal runs, on and off;
* the portal link for 102: the customer's status page, the admin API's list, "203" on
  and off;
* the booking: ``pbxcal agents add`` for 101, the guest's confirmation page, the event
  read back from Radicale and the iTIP ``REQUEST`` the SMTP server received, with the
  same UID, the guest as attendee with RSVP and the time the guest picked.

A demo that stops early, prints a step's failure or takes too long fails every test
with its output. The machine's Asterisk root comes from the session's ``asterisk_root``
fixture, so building it is not counted against the demo's time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.py"
#: The demo's shortest lead (``MIN_LEAD`` in scripts/demo.py; the last test checks it).
LEAD = 15
#: The whole run, start to exit: the CI budget for this module.
DEMO_TIMEOUT = 180.0
GUEST = "sam@guest.example"
SUBJECT = "Quote for a new kitchen"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")

WATCH = re.compile(r"\(t\s*([+-]\d+\.\d)s\)\s+pbxcal/fwd/(\d+) = (\S+)")


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.0f} s\n{self.stdout}\n{self.stderr}"

    def forwarding(self, extension: str) -> list[str]:
        """What Asterisk held for ``extension``, each change as the demo saw it."""
        return [value for _, ext, value in WATCH.findall(self.stdout) if ext == extension]

    def section(self, heading: str) -> str:
        """The output from the line that starts with ``heading`` to the next unindented
        line after it."""
        lines = self.stdout.splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
        assert first is not None, f"no {heading!r} in the demo's output\n{self.explain()}"
        rest = lines[first + 1 :]
        end = next((i for i, line in enumerate(rest) if line and not line[0].isspace()), None)
        return "\n".join(lines[first : first + 1 + (len(rest) if end is None else end)])

    def fields(self, heading: str) -> dict[str, str]:
        """The ``NAME  value`` lines of the section under ``heading``."""
        found = re.findall(r"^    ([A-Z]+) +(.+)$", self.section(heading), re.M)
        return dict(found)


def run_demo(*args: str, timeout: float) -> DemoRun:
    """``scripts/demo.py args`` to its end; on timeout it is interrupted (Ctrl-C: its
    ``with`` blocks stop Asterisk, Radicale and pbxcal), then its group killed."""
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(DEMO), *args], cwd=REPO, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        err += f"\n(test: the demo did not finish within {timeout:.0f} s)"
    return DemoRun(process.returncode, out, err, time.monotonic() - began)


@pytest.fixture(scope="module")
def demo(asterisk_root: Path) -> DemoRun:
    run = run_demo("--lead", str(LEAD), timeout=DEMO_TIMEOUT)
    print(f"demo: {run.seconds:.1f} s")  # shown with -s: the figure for the README
    return run


def test_the_demo_runs_to_its_end_within_three_minutes(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.explain()
    assert "demo: " not in demo.stderr, demo.explain()  # no step reported a failure
    assert re.search(r"^Done in \d+ s\.", demo.stdout, re.M), demo.explain()
    assert demo.seconds < DEMO_TIMEOUT, demo.explain()


def switched_on_then_off(values: list[str], target: str) -> bool:
    """``target`` was forwarded to at some point, and nothing is forwarded at the end."""
    return target in values and values[-1] == "(none)" and values.index(target) < len(values) - 1


def test_forwarding_for_100_switches_on_in_parallel_and_off(demo: DemoRun) -> None:
    values = demo.forwarding("100")
    assert switched_on_then_off(values, "+31612345678&201"), demo.explain()
    # 201 alone before both and the mobile number alone after (201 ended first)
    assert values.index("+31612345678&201") < values.index("+31612345678"), values
    assert not any("900" in value for value in values), values  # premium rate refused
    plan = demo.section("pbxcal plan says:")
    assert '"reason": "blocked-by-policy"' in plan and '"targets": ["201"]' in plan, plan


def test_caldav_link_for_101_forwards_an_appointment_added_while_running(
    demo: DemoRun,
) -> None:
    linked = demo.section("CalDAV calendar https://")
    assert re.search(r"extension 101: link \d+ added", linked), linked
    assert switched_on_then_off(demo.forwarding("101"), "202"), demo.explain()


def test_portal_link_for_102_is_made_listed_and_forwards(demo: DemoRun) -> None:
    invited = demo.section("The admin invites the customer of extension 102")
    assert re.search(r"/i/[\w-]{20,}", invited), invited
    status = demo.section("The customer opens it")
    assert "Your linked calendar" in status and "Account carol" in status, status
    listed = demo.section("The admin API (GET /api/v1/links) now lists:")
    assert re.search(r"link \d+: extension 102 \(caldav\)", listed), listed
    assert re.search(r"link \d+: extension 101 \(caldav\) connected", listed), listed
    assert switched_on_then_off(demo.forwarding("102"), "203"), demo.explain()


def test_guest_books_the_first_free_time_and_gets_the_invitation(demo: DemoRun) -> None:
    agent = demo.section("The admin makes extension 101 an agent")
    assert "agent bob: main/101 Bob Jansen" in agent, agent
    picked = re.search(r"picks the first free time: (.+) \(at=(\S+)\)\.", demo.stdout)
    assert picked is not None, demo.explain()
    at = datetime.strptime(picked.group(2), "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    confirmation = demo.section("They type name, e-mail and subject")
    assert "Your meeting is booked" in confirmation, confirmation
    assert f"An invitation is on its way to {GUEST}." in confirmation, confirmation
    assert f"Subject {SUBJECT}" in confirmation, confirmation

    stored = demo.fields("Bob's calendar in Radicale now holds the meeting")
    mail = demo.fields("The guest's mailbox")
    assert "method=REQUEST" in demo.section("The guest's mailbox"), demo.explain()
    assert mail["METHOD"] == "REQUEST", mail
    assert mail["SEQUENCE"] == "0", mail
    assert stored["UID"] == mail["UID"] and mail["UID"].endswith("@pbxcal"), (stored, mail)
    start = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    for event in (stored, mail):
        assert event["SUMMARY"] == SUBJECT, event
        assert event["DTSTART"] == start, (event, start)
        assert event["ORGANIZER"] == "mailto:bob@demo.example", event
        assert event["ATTENDEE"].startswith(f"mailto:{GUEST} ("), event
        assert "RSVP=TRUE" in event["ATTENDEE"], event
    local = at.astimezone(AMSTERDAM)  # within Bob's hours: weekdays 9-17 but lunch 13-14
    assert local.weekday() < 5 and 9 <= local.hour < 17 and local.hour != 13, local


def test_a_lead_shorter_than_the_shortest_is_refused() -> None:
    refused = run_demo("--lead", str(LEAD - 1), timeout=60)
    assert refused.returncode == 2, refused.explain()
    assert f"--lead must be {LEAD} to 600 seconds" in refused.stderr, refused.explain()
