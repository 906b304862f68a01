"""Booking with a Microsoft 365 calendar (the protocol-level Graph fake on TLS loopback,
read and written through the real MSAL and pbxcal's Graph client) against a real
``pbxcal run``: the link is added with the real CLI, read by the daemon's real sync
(which stores the mailbox's working hours and zone with the sync state), the agent with
``pbxcal agents add``, and everything asked over the admin API.

The tests show: an agent whose booking link is that calendar and who has no hours or
zone of their own is offered Outlook's working hours (Monday-Thursday 08:30-16:00) in
Outlook's zone (Pacific Standard Time = America/Los_Angeles), the meeting in the
mailbox busy; an agent with their own hours and zone on the same link keeps them. A
booking is created in the mailbox (``POST /users/{mailbox}/events``) with the booking's
UID as ``transactionId`` (a repeated POST gives the same event) and a Teams meeting,
then moved (``PATCH``, the same event) and cancelled (``DELETE``) through the guest's
token outside the daemon (its own Graph client from the stored credentials).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for

from pbxcal.store import Store, load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.graph_fake import TENANT, FakeGraph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SECRET = "app-secret-4d2a"
MAILBOX = "carla@contoso.com"
LA = ZoneInfo("America/Los_Angeles")
AMS = ZoneInfo("Europe/Amsterdam")
MAILBOX_SETTINGS = {
    "timeZone": "Pacific Standard Time",
    "workingHours": {
        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday"],
        "startTime": "08:30:00.0000000", "endTime": "16:00:00.0000000",
        "timeZone": {"name": "Pacific Standard Time"},
    },
}  # fmt: skip


@dataclass
class Service:
    daemon: DaemonRun
    graph: FakeGraph
    token: str
    link_id: int
    monday: date  # a Monday 7-13 days ahead (in Los Angeles)
    keys: Path


def cli(
    daemon: DaemonRun, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    sub, *rest = args
    return subprocess.run(daemon.command(sub, *rest), capture_output=True, text=True,
                          timeout=120, input=stdin)  # fmt: skip


def local(day: date, hh: int, mm: int = 0, zone: ZoneInfo = LA) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)


def graph_time(moment: datetime) -> dict[str, str]:
    utc = moment.astimezone(ZoneInfo("UTC"))
    return {"dateTime": utc.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


@pytest.fixture(scope="module")
def service(
    asterisk: AsteriskSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("booking-graph")
    asterisk.cli("database deltree pbxcal")
    soon = datetime.now(LA).date() + timedelta(days=7)
    monday = soon + timedelta(days=(7 - soon.weekday()) % 7)
    with FakeGraph() as graph:
        graph.add_app("app-1", SECRET)
        graph.add_mailbox(MAILBOX, MAILBOX_SETTINGS)
        graph.put_event(MAILBOX, {
            "id": "m1", "subject": "Supplier call", "showAs": "busy",
            "start": graph_time(local(monday, 10)), "end": graph_time(local(monday, 11)),
        })  # fmt: skip
        extra = '\n[portal]\npublic_url = "https://pbx.example.com"\n'
        keys = new_key_file(work)
        daemon = DaemonRun(work, asterisk, [], interval=3600, key_file=keys,
                           pbx_extra='extensions = ["100-299"]\n', extra_config=extra)  # fmt: skip
        daemon.start()
        try:
            daemon.wait_ready(60)
            added = cli(
                daemon, "links", "add", "--provider", "graph", "--source", MAILBOX,
                "--tenant", TENANT, "--client-id", "app-1", "--client-secret-file", "-",
                "--authority-host", graph.authority_host, "--graph-url", graph.graph_url,
                "--ca-file", graph.ca_file, "--extension", "102", "--json", stdin=SECRET + "\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            link_id = int(json.loads(added.stdout)["added"])
            with Store.open(daemon.store) as store:
                wait_for(lambda: store.load_events(link_id)[1],
                         lambda s: s is not None and s.working_hours is not None,
                         timeout=60, what="the mailbox read")  # fmt: skip
            for args in (
                ["add", "carla", "--pbx", "main", "--extension", "102", "--name", "Carla",
                 "--email", MAILBOX, "--booking-link", str(link_id), "--conflict-link",
                 str(link_id), "--settings", '{"min_notice_minutes": 0, "horizon_days": 60}'],
                ["add", "dirk", "--pbx", "main", "--extension", "103", "--name", "Dirk",
                 "--booking-link", str(link_id), "--conflict-link", str(link_id), "--settings",
                 json.dumps({"min_notice_minutes": 0, "horizon_days": 60,
                             "timezone": "Europe/Amsterdam", "hours": {"fri": ["10:00-12:00"]}})],
            ):  # fmt: skip
                done = cli(daemon, "agents", *args)
                assert done.returncode == 0, done.stderr
            done = cli(daemon, "admin-token", "create", "--name", "ops")
            assert done.returncode == 0, done.stderr
            yield Service(daemon, graph, done.stdout.strip(), link_id, monday, keys)
        finally:
            daemon.terminate()


def api(svc: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {svc.token}"}
    return httpx.request(method, f"http://{svc.daemon.listen}/api/v1{path}", headers=headers,
                         timeout=30, **kwargs)  # fmt: skip


def starts_by_day(answer: httpx.Response, zone: ZoneInfo) -> dict[date, list[str]]:
    assert answer.status_code == 200, answer.text
    days: dict[date, list[str]] = {}
    for slot in answer.json()["slots"]:
        start = datetime.fromisoformat(slot["start"]).astimezone(zone)
        days.setdefault(start.date(), []).append(f"{start:%H:%M}")
    return days


def test_outlook_working_hours_and_zone_are_the_agents_defaults(service: Service) -> None:
    monday = service.monday
    answer = api(service, "GET", "/agents/carla/availability", params={
        "from": monday.isoformat(), "to": (monday + timedelta(days=6)).isoformat(),
        "duration": "30"})  # fmt: skip
    assert answer.json()["timezone"] == "America/Los_Angeles"
    days = starts_by_day(answer, LA)
    day = ["08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "11:30", "12:00", "12:30",
           "14:00", "14:30", "15:00", "15:30"]  # the default lunch break stays  # fmt: skip
    expected = {monday + timedelta(days=n): day for n in range(4)}  # Monday to Thursday
    expected[monday] = [t for t in day if t not in ("10:00", "10:30")]  # the supplier call
    assert days == expected
    shown = api(service, "GET", "/agents/carla").json()["settings"]
    assert shown["timezone"] == "America/Los_Angeles"
    assert shown["hours"]["mon"] == ["08:30-16:00"] and shown["hours"]["fri"] == []


def test_an_agents_own_hours_and_zone_win_over_outlooks(service: Service) -> None:
    friday = service.monday + timedelta(days=4)
    answer = api(service, "GET", "/agents/dirk/availability", params={
        "from": service.monday.isoformat(), "to": (friday + timedelta(days=2)).isoformat(),
        "duration": "30"})  # fmt: skip
    assert answer.json()["timezone"] == "Europe/Amsterdam"
    assert starts_by_day(answer, AMS) == {friday: ["10:00", "10:30", "11:00", "11:30"]}


def context(svc: Service) -> Any:
    """A WebContext outside the daemon (no sync: the write-back makes its own client)."""
    from pbxcal.config.loader import load_config
    from pbxcal.service.clock import SystemClock
    from pbxcal.service.metrics import Metrics
    from pbxcal.web import WebContext
    from pbxcal.web.i18n import Templates

    store = Store.open(svc.daemon.store, keys=load_key_ring(str(svc.keys), None))
    return WebContext(
        config=load_config(svc.daemon.config), store=store, keys=None, sync=None,
        clock=SystemClock(), metrics=Metrics(), templates=Templates(("en",)),
    )  # fmt: skip


def test_a_booking_is_created_moved_and_cancelled_in_microsoft_365(service: Service) -> None:
    from pbxcal.booking import cancel, reschedule
    from pbxcal.booking.writeback import _graph_source

    graph = service.graph
    tuesday = service.monday + timedelta(days=1)
    start = local(tuesday, 9).astimezone(UTC)
    answer = api(service, "POST", "/agents/carla/bookings",
                 json={"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "subject": "Kitchen quote",
                       "guest_name": "Gail", "guest_email": "gail@example.org"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    uid, token = answer.json()["uid"], answer.json()["manage_url"].rsplit("/", 1)[-1]
    with graph._lock:
        made = [dict(e) for e in graph._mailboxes[MAILBOX].events.values()
                if e.get("transactionId") == uid]  # fmt: skip
    assert len(made) == 1 and graph.requests["events (create)"] == 1
    event = made[0]
    assert event["subject"] == "Kitchen quote" and event["start"] == graph_time(start)
    assert event["end"] == graph_time(start + timedelta(minutes=30))
    assert event["isOnlineMeeting"] is True and event["onlineMeetingProvider"] == "teamsForBusiness"
    assert event["onlineMeeting"]["joinUrl"].startswith("https://teams.microsoft.com/")
    assert "gail@example.org" in event["body"]["content"] and "attendees" not in event
    # the event comes back with the next read (stored under Graph's id); with a 15 min
    # buffer before, moving to 09:30 touches it: it must not count against its own move
    queued = api(service, "POST", f"/links/{service.link_id}/sync")
    assert queued.status_code == 202, queued.text
    with Store.open(service.daemon.store) as store:
        wait_for(lambda: [e.uid for e in store.load_events(service.link_id)[0]],
                 lambda uids: event["id"] in uids, timeout=30,
                 what="the event synced back")  # fmt: skip
    buffered = api(service, "PUT", "/agents/carla", json={"settings": {"buffer_before": 15}})
    assert buffered.status_code == 200, buffered.text
    ctx = context(service)
    try:
        link = ctx.store.get_link(service.link_id)
        source = _graph_source(ctx.store, link)
        again = asyncio.run(source.create_event({"subject": "x", "start": event["start"],
                                                 "end": event["end"]}, uid))  # fmt: skip
        assert again["id"] == event["id"] and graph.requests["events (create)"] == 1
        moved = asyncio.run(reschedule(ctx, token, local(tuesday, 9, 30).astimezone(UTC)))
        assert moved.sequence == 1 and graph.requests["events (update)"] == 1
        patched = graph.written_event(MAILBOX, event["id"])
        assert patched is not None and patched["start"] == graph_time(local(tuesday, 9, 30))
        assert patched["onlineMeeting"] == event["onlineMeeting"]  # the same meeting
        cancelled = asyncio.run(cancel(ctx, token))
        assert cancelled.status == "cancelled" and graph.requests["events (delete)"] == 1
        assert graph.written_event(MAILBOX, event["id"]) is None
    finally:
        ctx.store.close()
        api(service, "PUT", "/agents/carla", json={"settings": {"buffer_before": 0}})
