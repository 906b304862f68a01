"""Booking end to end against a real ``pbxcal run``: Radicale (CalDAV), the Google fake
and the Graph fake as the agents' calendars, read by the daemon's real sync; a real SMTP
server (aiosmtpd on loopback) receiving the iTIP mail, parsed back with ``icalendar``.

One service for the module. Agent ``anna`` (extension 100) has one Radicale calendar
that both makes her busy and receives her bookings; agent ``ben`` (extension 101) a
Google calendar; agent ``cleo`` (extension 102) a Microsoft 365 mailbox (the Graph fake
on TLS loopback, app-only). Agents are added with the real CLI (``pbxcal agents add``). The tests
show: slots computed from really synced events over a DST week (beyond the daemon's
saved expansion, so the stored events are expanded again) with buffers, the lunch
break, an all-day event (opaque blocks the day, transparent does not), a weekly meeting
with a moved occurrence, a tentative meeting (busy), a declined invitation, a free
event and a forwarding appointment (none busy); the same from Google within the saved
expansion; 20 concurrent bookings of one slot give one 201 and nineteen 409 and one
event in Radicale with the booking's UID, the guest gets ``METHOD:REQUEST`` with
``RSVP=TRUE``; moving (SEQUENCE 1, and again to a time within the buffer of its own
synced-back event: SEQUENCE 2) and cancelling (``METHOD:CANCEL``, SEQUENCE 3) through
the guest's token update and delete the Radicale event and mail the guest; the
reminder is sent once; a Google booking is inserted with the UID and a Meet link.

The buffers are the database's: twenty guests racing for two neighbouring slots of
anna's whose 15-minute buffers collide (09:00 and 09:30) give one 201, one event in
Radicale, and availability leaves out exactly what the winner's buffers cover. The
online meeting reaches the guest: the Meet link Google answers and the Teams link
Graph answers are in the API's answer, in the invitation (``LOCATION``, ``URL``, RFC
7986 ``CONFERENCE``, the text) as aiosmtpd received it, in the update after a move,
and on the guest's manage page.
"""

from __future__ import annotations

import asyncio
import email
import json
import queue
import subprocess
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest
from aiosmtpd.controller import Controller
from daemon_helpers import DaemonRun, free_port, new_key_file, wait_for

from pbxcal.store import Store, load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.google_fake import FakeGoogle
from pbxcal.testing.graph_fake import TENANT, FakeGraph
from pbxcal.testing.radicale import RadicaleServer

pytestmark = pytest.mark.integration

AMS = ZoneInfo("Europe/Amsterdam")
PASSWORD = "anna-dav-password"
MAIL_TIMEOUT = 20.0
GRAPH_SECRET = "app-secret-7c1e"
CLEO = "cleo@contoso.com"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: queue.Queue[bytes] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put(bytes(envelope.content))
        return "250 OK"

    def next(self) -> Message:
        raw = self.messages.get(timeout=MAIL_TIMEOUT)
        return email.message_from_bytes(raw, policy=default_policy)

    def next_to(self, address: str) -> Message:
        while True:
            message = self.next()
            if address in str(message["To"]):
                return message


@dataclass
class Service:
    daemon: DaemonRun
    radicale: RadicaleServer
    google: FakeGoogle
    graph: FakeGraph
    inbox: Inbox
    token: str
    anna_link: int
    ben_link: int
    keys: Path


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=AMS)


def vevent(uid: str, summary: str, start: str, end: str, *extra: str) -> str:
    lines = [
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "BEGIN:VEVENT",
        f"UID:{uid}", "DTSTAMP:20261101T000000Z", f"SUMMARY:{summary}", start, end, *extra,
        "END:VEVENT", "END:VCALENDAR", "",
    ]  # fmt: skip
    return "\r\n".join(lines)


# The DST week of 2027 (clocks go forward on Sunday 28 March) and the Monday after.
MON = date(2027, 3, 22)
# weekly on Mondays 10:00-11:00 local; the 29 March one moved to 15:00-16:00
TEAM = "\r\n".join([
    "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN",
    "BEGIN:VEVENT", "UID:team", "DTSTAMP:20261101T000000Z", "SUMMARY:Team meeting",
    "DTSTART;TZID=Europe/Amsterdam:20270301T100000",
    "DTEND;TZID=Europe/Amsterdam:20270301T110000", "RRULE:FREQ=WEEKLY;BYDAY=MO",
    "END:VEVENT",
    "BEGIN:VEVENT", "UID:team", "DTSTAMP:20261101T000000Z", "SUMMARY:Team meeting",
    "RECURRENCE-ID;TZID=Europe/Amsterdam:20270329T100000",
    "DTSTART;TZID=Europe/Amsterdam:20270329T150000",
    "DTEND;TZID=Europe/Amsterdam:20270329T160000", "END:VEVENT",
    "END:VCALENDAR", "",
])  # fmt: skip
RADICALE_EVENTS = {
    "team.ics": TEAM,
    "free.ics": vevent("free", "Focus (free)", "DTSTART;TZID=Europe/Amsterdam:20270322T113000",
                       "DTEND;TZID=Europe/Amsterdam:20270322T123000", "TRANSP:TRANSPARENT"),
    "forward.ics": vevent("fwd", "0612345678", "DTSTART;TZID=Europe/Amsterdam:20270323T090000",
                          "DTEND;TZID=Europe/Amsterdam:20270323T170000"),
    "conference.ics": vevent("conf", "Conference", "DTSTART;VALUE=DATE:20270324",
                             "DTEND;VALUE=DATE:20270325"),
    "holiday.ics": vevent("hol", "School holiday", "DTSTART;VALUE=DATE:20270325",
                          "DTEND;VALUE=DATE:20270326", "TRANSP:TRANSPARENT"),
    "tentative.ics": vevent("tent", "Maybe", "DTSTART;TZID=Europe/Amsterdam:20270326T140000",
                            "DTEND;TZID=Europe/Amsterdam:20270326T150000", "STATUS:TENTATIVE"),
    "declined.ics": vevent("decl", "Sales pitch", "DTSTART;TZID=Europe/Amsterdam:20270326T100000",
                           "DTEND;TZID=Europe/Amsterdam:20270326T110000",
                           "ORGANIZER:mailto:sales@example.org",
                           "ATTENDEE;PARTSTAT=DECLINED:mailto:anna@example.com"),
}  # fmt: skip
ANNA_SETTINGS = {
    "timezone": "Europe/Amsterdam", "durations": [30, 60], "buffer_before": 15,
    "buffer_after": 15, "horizon_days": 366, "min_notice_minutes": 0,
}  # fmt: skip


def cli(
    daemon: DaemonRun, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    sub, *rest = args
    return subprocess.run(
        daemon.command(sub, *rest), capture_output=True, text=True, timeout=120, input=stdin
    )


@pytest.fixture(scope="module")
def service(
    asterisk: AsteriskSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("booking")
    asterisk.cli("database deltree pbxcal")
    radicale = RadicaleServer(work / "radicale", {"anna": PASSWORD}).start()
    google = FakeGoogle().start()
    graph = FakeGraph().start()
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        radicale.make_calendar("anna", "work")
        for name, text in RADICALE_EVENTS.items():
            radicale.put("anna", "work", name, text)
        google.add_calendar("primary")
        info = google.add_user("client-b", "secret-b", "refresh-b")
        soon = datetime.now(AMS).date() + timedelta(days=7)
        ben_day = soon + timedelta(days=(7 - soon.weekday()) % 7)  # a Monday 7-13 days ahead
        google.put_event("primary", {
            "id": "g1", "summary": "Customer call",
            "start": {"dateTime": local(ben_day, 10).isoformat()},
            "end": {"dateTime": local(ben_day, 11).isoformat()},
        })  # fmt: skip
        google.put_event("primary", {
            "id": "g2", "summary": "+31201234567",
            "start": {"dateTime": local(ben_day, 14).isoformat()},
            "end": {"dateTime": local(ben_day, 17).isoformat()},
        })  # fmt: skip
        google.put_event("primary", {
            "id": "g3", "summary": "Training",
            "start": {"date": (ben_day + timedelta(days=1)).isoformat()},
            "end": {"date": (ben_day + timedelta(days=2)).isoformat()},
        })  # fmt: skip
        keys = new_key_file(work)
        extra = (
            '\n[portal]\npublic_url = "https://pbx.example.com"\n'
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nfrom = "pbxcal@example.com"\n'
        )
        daemon = DaemonRun(work, asterisk, [], interval=3600, key_file=keys,
                           pbx_extra='extensions = ["100-299"]\n', extra_config=extra)  # fmt: skip
        with Store.open(daemon.store, keys=load_key_ring(str(keys), None)) as store:
            anna = store.add_link(
                "100", "main", "caldav", radicale.calendar_url("anna", "work"),
                {"username": "anna", "owner_emails": ["anna@example.com"]},
            )  # fmt: skip
            store.save_secret(anna.id, "caldav-password", PASSWORD)
            ben = store.add_link("101", "main", "google", "primary",
                                 {"auth": "user", "api_endpoint": google.api_endpoint})  # fmt: skip
            store.save_secret(ben.id, "google-credentials", json.dumps(info))
        for args in (
            ["add", "anna", "--pbx", "main", "--extension", "100", "--name", "Anna de Vries",
             "--email", "anna@example.com", "--booking-link", str(anna.id),
             "--conflict-link", str(anna.id), "--settings", json.dumps(ANNA_SETTINGS)],
            ["add", "ben", "--pbx", "main", "--extension", "101", "--name", "Ben",
             "--email", "ben@example.com", "--booking-link", str(ben.id),
             "--conflict-link", str(ben.id), "--settings", '{"min_notice_minutes": 0}'],
        ):  # fmt: skip
            done = cli(daemon, "agents", *args)
            assert done.returncode == 0, done.stderr
        daemon.start()
        daemon.wait_ready(60)
        done = cli(daemon, "admin-token", "create", "--name", "ops")
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip()
        graph.add_app("app-1", GRAPH_SECRET)
        graph.add_mailbox(CLEO)
        added = cli(
            daemon, "links", "add", "--provider", "graph", "--source", CLEO, "--tenant", TENANT,
            "--client-id", "app-1", "--client-secret-file", "-", "--authority-host",
            graph.authority_host, "--graph-url", graph.graph_url, "--ca-file", graph.ca_file,
            "--extension", "102", "--json", stdin=GRAPH_SECRET + "\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        cleo = int(json.loads(added.stdout)["added"])
        cleo_settings = {"min_notice_minutes": 0, "timezone": "Europe/Amsterdam"}
        done = cli(daemon, "agents", "add", "cleo", "--pbx", "main", "--extension", "102",
                   "--name", "Cleo", "--email", CLEO, "--booking-link", str(cleo),
                   "--conflict-link", str(cleo), "--settings",
                   json.dumps(cleo_settings))  # fmt: skip
        assert done.returncode == 0, done.stderr
        with Store.open(daemon.store) as store:
            wait_for(lambda: store.expansion_stamps([anna.id, ben.id, cleo]),
                     lambda s: len(s) == 3, timeout=60, what="the calendars synced")  # fmt: skip
        service = Service(daemon, radicale, google, graph, inbox, token, anna.id, ben.id, keys)
        service.ben_day = ben_day  # type: ignore[attr-defined]
        yield service
        daemon.terminate()
    finally:
        smtp.stop()
        graph.stop()
        google.stop()
        radicale.stop()


def api(svc: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {svc.token}"}
    return httpx.request(method, f"http://{svc.daemon.listen}/api/v1{path}", headers=headers,
                         timeout=30, **kwargs)  # fmt: skip


def starts_by_day(answer: httpx.Response) -> dict[date, list[str]]:
    assert answer.status_code == 200, answer.text
    days: dict[date, list[str]] = {}
    for slot in answer.json()["slots"]:
        start = datetime.fromisoformat(slot["start"]).astimezone(AMS)
        assert slot["local_start"] == start.isoformat()
        days.setdefault(start.date(), []).append(f"{start:%H:%M}")
    return days


def prop(component: Any, name: str) -> Any:
    """A property of an icalendar component (untyped: icalendar's union is too wide)."""
    return component[name]


def hh(*times: str) -> list[str]:
    return list(times)


ALL_DAY = hh("09:00", "09:30", "10:00", "10:30", "11:00", "11:30", "12:00", "12:30",
             "14:00", "14:30", "15:00", "15:30", "16:00", "16:30")  # fmt: skip


def test_slots_from_synced_caldav_over_the_dst_week(service: Service) -> None:
    answer = api(service, "GET", "/agents/anna/availability",
                 params={"from": "2027-03-22", "to": "2027-03-29", "duration": "30"})  # fmt: skip
    days = starts_by_day(answer)
    # Monday: team meeting 10-11 with 15 min buffers; the free 11:30 event does not count
    assert days[MON] == hh("09:00", "11:30", "12:00", "12:30", *ALL_DAY[8:])
    # Tuesday: a forwarding appointment all day is routing, not a meeting
    assert days[MON + timedelta(days=1)] == ALL_DAY
    # Wednesday: an opaque all-day event blocks the day; Thursday's transparent one not
    assert MON + timedelta(days=2) not in days
    assert days[MON + timedelta(days=3)] == ALL_DAY
    # Friday: the tentative 14-15 is busy (with buffers), the declined 10-11 is not
    assert days[MON + timedelta(days=4)] == hh(*ALL_DAY[:8], "15:30", "16:00", "16:30")
    # no weekend; Monday after the DST change: the moved occurrence (15-16) counts,
    # the original 10-11 does not, and 09:00 is 07:00 UTC now (08:00 UTC a week before)
    after = MON + timedelta(days=7)
    assert set(days) == {MON, MON + timedelta(days=1), MON + timedelta(days=3),
                         MON + timedelta(days=4), after}  # fmt: skip
    assert days[after] == hh(*ALL_DAY[:8], "14:00", "16:30")
    utc_starts = [s["start"] for s in answer.json()["slots"]]
    assert "2027-03-22T08:00:00Z" in utc_starts and "2027-03-29T07:00:00Z" in utc_starts
    sixty = api(service, "GET", "/agents/anna/availability",
                params={"from": "2027-03-22", "to": "2027-03-22", "duration": "60"})  # fmt: skip
    assert starts_by_day(sixty)[MON] == hh("12:00", "14:00", "15:00", "16:00")
    refused = api(service, "GET", "/agents/anna/availability", params={"duration": "45"})
    assert refused.status_code == 400 and "30, 60" in refused.json()["detail"]


def test_slots_from_synced_google_within_the_saved_expansion(service: Service) -> None:
    day: date = service.ben_day  # type: ignore[attr-defined]
    answer = api(
        service,
        "GET",
        "/agents/ben/availability",
        params={"from": day.isoformat(), "to": (day + timedelta(days=2)).isoformat()},
    )
    days = starts_by_day(answer)
    # 10-11 customer call busy; 14-17 forwarding appointment ignored; day 2 all-day busy
    assert days[day] == hh("09:00", "09:30", "11:00", "11:30", "12:00", "12:30", *ALL_DAY[8:])
    assert day + timedelta(days=1) not in days
    assert days[day + timedelta(days=2)] == ALL_DAY


def calendar_objects(svc: Service) -> list[Any]:
    url = svc.radicale.calendar_url("anna", "work")
    auth = b64encode(f"anna:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        calendar = icalendar.Calendar.from_ical(reply.read())
    return [c for c in calendar.walk("VEVENT") if str(c.get("UID", "")).endswith("@pbxcal")]


def calendar_part(message: Message) -> tuple[str, icalendar.Calendar]:
    for part in message.walk():
        if part.get_content_type() == "text/calendar":
            payload: Any = part.get_payload(decode=True)
            return str(part.get_param("method") or ""), icalendar.Calendar.from_ical(payload)
    raise AssertionError("no text/calendar part")


def test_twenty_concurrent_bookings_of_one_slot(service: Service) -> None:
    start = "2027-03-30T07:00:00Z"  # Tuesday 09:00 local

    async def race() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {service.token}"}
        async with httpx.AsyncClient(base_url=f"http://{service.daemon.listen}",
                                     headers=headers, timeout=60) as client:  # fmt: skip
            body = {"start": start, "duration": 30, "subject": "Intro",
                    "guest_email": "guest@example.org"}  # fmt: skip
            return await asyncio.gather(*(
                client.post("/api/v1/agents/anna/bookings", json={**body, "guest_name": f"G{i}"})
                for i in range(20)
            ))  # fmt: skip

    answers = asyncio.run(race())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * 19, [a.text for a in answers if a.status_code != 409]
    won = next(a.json() for a in answers if a.status_code == 201)
    assert all(a.json()["error"] == "slot-taken" for a in answers if a.status_code == 409)
    events = calendar_objects(service)
    assert [str(e["UID"]) for e in events] == [won["uid"]]
    assert prop(events[0], "DTSTART").dt == datetime(2027, 3, 30, 7, tzinfo=UTC)
    assert str(prop(events[0], "SUMMARY")) == "Intro"
    message = service.inbox.next_to("guest@example.org")
    method, calendar = calendar_part(message)
    assert method == "REQUEST" and str(prop(calendar, "METHOD")) == "REQUEST"
    (event,) = calendar.walk("VEVENT")
    assert str(prop(event, "UID")) == won["uid"] and int(prop(event, "SEQUENCE")) == 0
    attendee = prop(event, "ATTENDEE")
    assert str(attendee) == "mailto:guest@example.org" and attendee.params["RSVP"] == "TRUE"
    assert str(prop(event, "ORGANIZER")) == "mailto:anna@example.com"
    assert "text/plain" in [part.get_content_type() for part in message.walk()]
    assert won["manage_url"].startswith("https://pbx.example.com/book/manage/")
    notice = service.inbox.next_to("anna@example.com")
    assert "Intro" in str(notice["Subject"])
    # the slot is gone from the availability now (the booking's row, and the synced event)
    after = api(service, "GET", "/agents/anna/availability",
                params={"from": "2027-03-30", "to": "2027-03-30"})  # fmt: skip
    assert "09:00" not in starts_by_day(after)[date(2027, 3, 30)]
    service.token_of_booking = won["manage_url"].rsplit("/", 1)[1]  # type: ignore[attr-defined]
    service.booking_uid = won["uid"]  # type: ignore[attr-defined]


def _context(svc: Service, now: datetime | None = None) -> Any:
    from pbxcal.config.loader import load_config
    from pbxcal.service.metrics import Metrics
    from pbxcal.web import WebContext
    from pbxcal.web.i18n import Templates

    class Clock:
        def now(self) -> datetime:
            return now or datetime.now(UTC)

    store = Store.open(svc.daemon.store, keys=load_key_ring(str(svc.keys), None))
    return WebContext(config=load_config(svc.daemon.config), store=store, keys=None, sync=None,
                      clock=Clock(), metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip


def test_reschedule_cancel_and_reminder_by_the_guests_token(service: Service) -> None:
    from pbxcal.booking import cancel, find_booking, reschedule
    from pbxcal.booking.reminders import send_due_reminders

    token: str = service.token_of_booking  # type: ignore[attr-defined]
    uid: str = service.booking_uid  # type: ignore[attr-defined]
    ctx = _context(service)
    try:
        found = asyncio.run(find_booking(ctx, token))
        assert found is not None and found.uid == uid and found.manage_token is None
        assert asyncio.run(find_booking(ctx, token[:-1] + "x")) is None
        moved = asyncio.run(reschedule(ctx, token, datetime(2027, 3, 30, 12, tzinfo=UTC)))
        assert moved.sequence == 1
        (event,) = calendar_objects(service)
        assert prop(event, "DTSTART").dt == datetime(2027, 3, 30, 12, tzinfo=UTC)
        assert int(prop(event, "SEQUENCE")) == 1
        method, calendar = calendar_part(service.inbox.next_to("guest@example.org"))
        (sent,) = calendar.walk("VEVENT")
        assert method == "REQUEST" and str(prop(sent, "UID")) == uid
        assert int(prop(sent, "SEQUENCE")) == 1
        assert prop(sent, "DTSTART").dt == datetime(2027, 3, 30, 12, tzinfo=UTC)
        service.inbox.next_to("anna@example.com")
        # the moved event is synced back (the daemon reads the calendar on request);
        # moving once more to 12:30, within the 15 min buffer of its own event, works:
        # the booking's own event does not count against it
        queued = api(service, "POST", f"/links/{service.anna_link}/sync")
        assert queued.status_code == 202, queued.text
        wait_for(
            lambda: [e.ical for e in ctx.store.load_events(service.anna_link)[0] if e.uid == uid],
            lambda found: len(found) == 1 and "20270330T120000Z" in found[0],
            timeout=30, what="the moved event synced back",
        )  # fmt: skip
        again = asyncio.run(reschedule(ctx, token, datetime(2027, 3, 30, 12, 30, tzinfo=UTC)))
        assert again.sequence == 2
        (event,) = calendar_objects(service)
        assert prop(event, "DTSTART").dt == datetime(2027, 3, 30, 12, 30, tzinfo=UTC)
        _, calendar = calendar_part(service.inbox.next_to("guest@example.org"))
        assert int(prop(calendar.walk("VEVENT")[0], "SEQUENCE")) == 2
        service.inbox.next_to("anna@example.com")
    finally:
        ctx.store.close()
    # the reminder: 15 minutes before (anna's default), once
    ctx = _context(service, now=datetime(2027, 3, 30, 12, 20, tzinfo=UTC))
    try:
        assert asyncio.run(send_due_reminders(ctx)) == 1
        method, calendar = calendar_part(service.inbox.next_to("guest@example.org"))
        assert method == "REQUEST" and str(prop(calendar.walk("VEVENT")[0], "UID")) == uid
        assert asyncio.run(send_due_reminders(ctx)) == 0
        cancelled = asyncio.run(cancel(ctx, token))
        assert cancelled.status == "cancelled" and cancelled.sequence == 3
        assert calendar_objects(service) == []
        message = service.inbox.next_to("guest@example.org")
        method, calendar = calendar_part(message)
        (sent,) = calendar.walk("VEVENT")
        assert method == "CANCEL" and str(prop(calendar, "METHOD")) == "CANCEL"
        assert str(prop(sent, "UID")) == uid and int(prop(sent, "SEQUENCE")) == 3
        assert str(prop(sent, "STATUS")) == "CANCELLED"
        assert service.inbox.messages.get(timeout=MAIL_TIMEOUT) is not None  # agent's notice
        assert asyncio.run(send_due_reminders(ctx)) == 0
    finally:
        ctx.store.close()


def test_a_google_booking_is_inserted_with_its_uid_and_a_meet_link(service: Service) -> None:
    day: date = service.ben_day  # type: ignore[attr-defined]
    start = local(day, 9).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = api(service, "POST", "/agents/ben/bookings",
                 json={"start": start, "subject": "Demo", "guest_name": "Gail",
                       "guest_email": "gail@example.org", "language": "nl"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    uid = answer.json()["uid"]
    with service.google._lock:
        stored = [e for e in service.google._calendars["primary"].events.values()
                  if e.get("iCalUID") == uid]  # fmt: skip
    assert len(stored) == 1 and stored[0]["hangoutLink"].startswith("https://meet.google.com/")
    assert stored[0]["attendees"] == [{"email": "gail@example.org", "displayName": "Gail"}]
    assert answer.json()["join_url"] == stored[0]["hangoutLink"]
    message = service.inbox.next_to("gail@example.org")
    assert str(message["Subject"]).startswith("Uitnodiging: Demo")
    assert_join_link(message, stored[0]["hangoutLink"], "Online deelnemen")
    again = api(service, "POST", "/agents/ben/bookings",
                json={"start": start, "subject": "Demo", "guest_name": "Gus",
                      "guest_email": "gus@example.org"})  # fmt: skip
    assert again.status_code == 409
    outside = api(service, "POST", "/agents/ben/bookings",
                  json={"start": local(day, 7).isoformat(), "subject": "Early",
                        "guest_name": "Gus", "guest_email": "gus@example.org"})  # fmt: skip
    assert outside.status_code == 400 and "not bookable" in outside.json()["detail"]


def assert_join_link(message: Message, link: str, line: str = "Join online") -> None:
    """The invitation names ``link`` in its text and three times in its VEVENT."""
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    body = str(text.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]
    assert f"\n{line}: {link}\n" in body
    _, calendar = calendar_part(message)
    (event,) = calendar.walk("VEVENT")
    assert str(prop(event, "LOCATION")) == link and str(prop(event, "URL")) == link
    conference = prop(event, "CONFERENCE")
    assert str(conference) == link
    assert conference.params["VALUE"] == "URI" and conference.params["FEATURE"] == "VIDEO"


def manage_page(svc: Service, manage_url: str) -> str:
    """The guest's manage page behind ``manage_url``, from the daemon's own listener."""
    path = manage_url.removeprefix("https://pbx.example.com")
    page = httpx.get(f"http://{svc.daemon.listen}{path}", params={"lang": "en"}, timeout=30)
    assert page.status_code == 200, page.text
    return page.text


def test_neighbouring_slots_whose_buffers_collide_are_booked_once(service: Service) -> None:
    # Thursday 1 April 2027, 09:00 and 09:30 local: with anna's 15 minutes before and
    # after, 08:45-09:45 and 09:15-10:15 are blocked; the meetings themselves do not meet
    day = date(2027, 4, 1)
    starts = {"09:00": "2027-04-01T07:00:00Z", "09:30": "2027-04-01T07:30:00Z"}
    params = {"from": day.isoformat(), "to": day.isoformat()}
    offered = starts_by_day(api(service, "GET", "/agents/anna/availability", params=params))
    assert {"09:00", "09:30", "10:00", "10:30"} <= set(offered[day])

    async def race() -> list[tuple[str, httpx.Response]]:
        headers = {"Authorization": f"Bearer {service.token}"}
        async with httpx.AsyncClient(base_url=f"http://{service.daemon.listen}",
                                     headers=headers, timeout=60) as client:  # fmt: skip
            picks = [("09:00", "09:30")[i % 2] for i in range(20)]
            answers = await asyncio.gather(*(
                client.post("/api/v1/agents/anna/bookings", json={
                    "start": starts[pick], "duration": 30, "subject": "Neighbours",
                    "guest_name": f"N{i}", "guest_email": f"n{i}@example.org"})
                for i, pick in enumerate(picks)
            ))  # fmt: skip
            return list(zip(picks, answers, strict=True))

    answers = asyncio.run(race())
    assert sorted(a.status_code for _, a in answers) == [201] + [409] * 19, [
        a.text for _, a in answers if a.status_code != 409]  # fmt: skip
    won, answer = next((pick, a) for pick, a in answers if a.status_code == 201)
    events = [e for e in calendar_objects(service) if prop(e, "DTSTART").dt.date() == day]
    assert [str(prop(e, "UID")) for e in events] == [answer.json()["uid"]]
    after = starts_by_day(api(service, "GET", "/agents/anna/availability", params=params))[day]
    # the winner's blocked range plus a slot's own 15 minutes before: 09:00 frees 10:00,
    # 09:30 frees 10:30
    assert "09:00" not in after and "09:30" not in after
    assert ("10:00" in after) == (won == "09:00") and "10:30" in after
    service.inbox.next_to(answer.json()["guest_email"])  # the winner's invitation


def test_a_moved_google_booking_keeps_its_meet_link_in_the_update(service: Service) -> None:
    day: date = service.ben_day  # type: ignore[attr-defined]
    start = local(day, 15).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = api(service, "POST", "/agents/ben/bookings",
                 json={"start": start, "subject": "Meet me", "guest_name": "Gwen",
                       "guest_email": "gwen@example.org"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    link = answer.json()["join_url"]
    assert link.startswith("https://meet.google.com/")
    assert_join_link(service.inbox.next_to("gwen@example.org"), link)
    page = manage_page(service, answer.json()["manage_url"])
    assert f'<a class="join" href="{link}"' in page and "Online meeting" in page
    from pbxcal.booking import reschedule

    token = answer.json()["manage_url"].rsplit("/", 1)[1]
    ctx = _context(service)
    try:
        moved = asyncio.run(reschedule(ctx, token, local(day, 16).astimezone(UTC)))
    finally:
        ctx.store.close()
    assert moved.sequence == 1 and moved.join_url == link
    update = service.inbox.next_to("gwen@example.org")
    assert str(update["Subject"]).startswith("Updated invitation: Meet me")
    assert_join_link(update, link)


def test_a_teams_booking_sends_the_guest_its_join_link(service: Service) -> None:
    day: date = service.ben_day  # type: ignore[attr-defined]
    start = local(day + timedelta(days=2), 10).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = api(service, "POST", "/agents/cleo/bookings",
                 json={"start": start, "subject": "Teams talk", "guest_name": "Tom",
                       "guest_email": "tom@example.org"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    link = answer.json()["join_url"]
    with Store.open(service.daemon.store) as store:
        (row,) = [r for r in store.list_bookings("cleo", datetime.now(UTC))
                  if r["uid"] == answer.json()["uid"]]  # fmt: skip
    assert row["join_url"] == link
    written = service.graph.written_event(CLEO, row["provider_event_id"])
    assert written is not None and written["transactionId"] == row["uid"]
    assert link == written["onlineMeeting"]["joinUrl"]
    assert link.startswith("https://teams.microsoft.com/l/meetup-join/")
    message = service.inbox.next_to("tom@example.org")
    assert str(message["Subject"]).startswith("Invitation: Teams talk")
    assert_join_link(message, link)
    assert f'href="{link}"' in manage_page(service, answer.json()["manage_url"])
