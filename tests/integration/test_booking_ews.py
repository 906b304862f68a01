"""Booking into an on-premises Exchange calendar (the EWS SOAP fake on loopback, read and
written by the real exchangelib) through a real ``pbxcal run``: the link is added with
the real CLI (basic auth, a service account impersonating the mailbox, the password on
standard input), the agent with ``pbxcal agents add``, the booking over the admin API.

The test shows: the booking becomes one calendar item in the mailbox (CreateItem with
``SendMeetingInvitations="SendToNone"``; Exchange mails nobody), carrying the booking's
UID, subject and times and the guest as attendee; the daemon's sync reads it back and
the slot is no longer offered (busy in the synced data). Moved with the guest's token
next to where it was (its own synced item, found by its UID, does not block the move
although a 15-minute buffer reaches it)
(outside the daemon: the write-back builds its exchangelib account from the stored,
encrypted credentials as the sync does), the same item gets the new times (UpdateItem,
``AlwaysOverwrite``, ``SendToNone``) and the synced data follows; cancelled, the item is
deleted (DeleteItem, ``SendMeetingCancellations="SendToNone"``) and the slot is free
again. A mailbox the service account may read but not write refuses a booking with a
one-line 502 and nothing stays booked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for

from pbxcal.store import Store, load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.ews_fake import FakeEws

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SERVICE = "svc-pbxcal"
PASSWORD = "ews-pw-8c1f"
MAILBOX = "erik@example.org"
AMS = ZoneInfo("Europe/Amsterdam")


def cli(
    daemon: DaemonRun, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    sub, *rest = args
    return subprocess.run(daemon.command(sub, *rest), capture_output=True, text=True,
                          timeout=120, input=stdin)  # fmt: skip


def api(daemon: DaemonRun, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"http://{daemon.listen}/api/v1{path}", timeout=60,
                         headers={"Authorization": f"Bearer {token}"}, **kwargs)  # fmt: skip


def starts(daemon: DaemonRun, token: str, day: date) -> list[str]:
    answer = api(daemon, token, "GET", "/agents/erik/availability", params={
        "from": day.isoformat(), "to": day.isoformat(), "duration": "30"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return [f"{datetime.fromisoformat(s['start']).astimezone(AMS):%H:%M}"
            for s in answer.json()["slots"]]  # fmt: skip


def item_event(exchange: FakeEws, uid: str) -> icalendar.Event | None:
    text = exchange.items(MAILBOX).get(uid)
    if text is None:
        return None
    (event,) = icalendar.Calendar.from_ical(text).walk("VEVENT")
    return event


def stored(daemon: DaemonRun, link_id: int) -> dict[str, str]:
    """UID -> DTSTART (UTC, iCalendar text) of the link's synced events."""
    with Store.open(daemon.store) as store:
        events = store.load_events(link_id)[0]
    out = {}
    for row in events:
        event = icalendar.Event.from_ical(row.ical)
        out[row.uid] = event.decoded("DTSTART").astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return out


def context(daemon: DaemonRun, keys: Path) -> Any:
    """A WebContext outside the daemon (no sync: the write-back makes its own account)."""
    from pbxcal.config.loader import load_config
    from pbxcal.service.clock import SystemClock
    from pbxcal.service.metrics import Metrics
    from pbxcal.web import WebContext
    from pbxcal.web.i18n import Templates

    store = Store.open(daemon.store, keys=load_key_ring(str(keys), None))
    return WebContext(
        config=load_config(daemon.config), store=store, keys=None, sync=None,
        clock=SystemClock(), metrics=Metrics(), templates=Templates(("en",)),
    )  # fmt: skip


def test_a_booking_is_created_moved_and_cancelled_in_exchange(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    from pbxcal.booking import cancel, reschedule

    soon = datetime.now(AMS).date() + timedelta(days=7)
    monday = soon + timedelta(days=(7 - soon.weekday()) % 7)
    with FakeEws() as exchange:
        exchange.add_user(SERVICE, PASSWORD)
        exchange.add_mailbox(MAILBOX)
        exchange.allow_impersonation(SERVICE)
        keys = new_key_file(tmp_path)
        portal = '\n[portal]\npublic_url = "https://pbx.example.com"\n'
        daemon = DaemonRun(tmp_path, ast, [], interval=3600, key_file=keys,
                           pbx_extra='extensions = ["100-299"]\n', extra_config=portal)  # fmt: skip
        daemons.append(daemon)
        daemon.start()
        daemon.wait_ready(60)
        added = cli(daemon, "links", "add", "--provider", "ews", "--source", exchange.url,
                    "--mailbox", MAILBOX, "--username", SERVICE, "--auth", "basic",
                    "--impersonation", "--password-file", "-", "--extension", "102", "--json",
                    stdin=PASSWORD + "\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
        link_id = int(json.loads(added.stdout)["added"])
        settings = {"timezone": "Europe/Amsterdam", "min_notice_minutes": 0, "horizon_days": 60}
        done = cli(daemon, "agents", "add", "erik", "--pbx", "main", "--extension", "102",
                   "--name", "Erik", "--email", MAILBOX, "--booking-link", str(link_id),
                   "--conflict-link", str(link_id), "--settings", json.dumps(settings))  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = cli(daemon, "admin-token", "create", "--name", "ops")
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip()
        exchange.wait_for_stream(1, timeout=30)  # read once and subscribed
        assert "10:00" in starts(daemon, token, monday)

        start = datetime(monday.year, monday.month, monday.day, 10, tzinfo=AMS).astimezone(UTC)
        answer = api(daemon, token, "POST", "/agents/erik/bookings", json={
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "subject": "Boiler service",
            "guest_name": "Gail", "guest_email": "gail@example.org"})  # fmt: skip
        assert answer.status_code == 201, answer.text
        uid, manage = answer.json()["uid"], answer.json()["manage_url"].rsplit("/", 1)[-1]
        assert answer.json().get("join_url") is None  # no online meeting on-premises
        event = item_event(exchange, uid)
        assert event is not None and str(event["SUMMARY"]) == "Boiler service"
        assert event.decoded("DTSTART") == start
        assert event.decoded("DTEND") == start + timedelta(minutes=30)
        assert str(event["ATTENDEE"]) == "mailto:gail@example.org"
        created = [r.body for r in exchange.requests if r.operation == "CreateItem"]
        assert len(created) == 1 and 'SendMeetingInvitations="SendToNone"' in created[0]
        assert exchange.sent == []
        # busy in the synced data: the daemon read the new item back (push or fresh sync)
        wait_for(lambda: stored(daemon, link_id), lambda s: s.get(uid) == f"{start:%Y%m%dT%H%M%SZ}",
                 timeout=30, what="the booked item synced back")  # fmt: skip
        assert "10:00" not in starts(daemon, token, monday)

        # with 15 minutes before each meeting, the move to 10:30 touches the booking's own
        # synced item (the same UID): it must not count against its own move
        buffered = api(daemon, token, "PUT", "/agents/erik",
                       json={"settings": {"buffer_before": 15}})  # fmt: skip
        assert buffered.status_code == 200, buffered.text
        moved_to = start + timedelta(minutes=30)
        ctx = context(daemon, keys)
        try:
            moved = asyncio.run(reschedule(ctx, manage, moved_to))
            assert moved.sequence == 1 and moved.start == moved_to
            event = item_event(exchange, uid)
            assert event is not None and event.decoded("DTSTART") == moved_to
            updated = [r.body for r in exchange.requests if r.operation == "UpdateItem"]
            assert len(updated) == 1 and 'ConflictResolution="AlwaysOverwrite"' in updated[0]
            assert 'SendMeetingInvitationsOrCancellations="SendToNone"' in updated[0]
            assert len(exchange.items(MAILBOX)) == 1  # the same item, not a second one
            wait_for(lambda: stored(daemon, link_id),
                     lambda s: s.get(uid) == f"{moved_to:%Y%m%dT%H%M%SZ}",
                     timeout=30, what="the moved item synced back")  # fmt: skip
            # the daemon's availability cache learns of another process's move (stamps)
            wait_for(lambda: starts(daemon, token, monday),
                     lambda s: "09:30" in s and "10:30" not in s and "11:00" not in s,
                     timeout=10, what="the moved booking's slots")  # fmt: skip

            cancelled = asyncio.run(cancel(ctx, manage))
            assert cancelled.status == "cancelled"
            assert exchange.items(MAILBOX) == {}
            deleted = [r.body for r in exchange.requests if r.operation == "DeleteItem"]
            assert len(deleted) == 1 and 'SendMeetingCancellations="SendToNone"' in deleted[0]
            assert exchange.sent == []
            wait_for(lambda: stored(daemon, link_id), lambda s: uid not in s,
                     timeout=30, what="the deleted item gone from the synced data")  # fmt: skip
            # the same for the cancel
            wait_for(lambda: starts(daemon, token, monday), lambda s: "10:30" in s,
                     timeout=10, what="the cancelled slot offered again")  # fmt: skip
            buffered = api(daemon, token, "PUT", "/agents/erik",
                           json={"settings": {"buffer_before": 0}})  # fmt: skip
            assert buffered.status_code == 200, buffered.text
        finally:
            ctx.store.close()

        # a mailbox the account may read but not write: a one-line refusal, nothing booked
        exchange.deny_writes(MAILBOX)
        answer = api(daemon, token, "POST", "/agents/erik/bookings", json={
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "subject": "Boiler service",
            "guest_name": "Gail", "guest_email": "gail@example.org"})  # fmt: skip
        assert answer.status_code == 502, answer.text
        message = answer.json()["detail"]
        assert answer.json()["error"] == "calendar-failed" and "denied" in message
        assert PASSWORD not in answer.text and "\n" not in message
        assert exchange.items(MAILBOX) == {}
        assert "10:00" in starts(daemon, token, monday)  # nothing stayed booked
        daemon.check_alive()
