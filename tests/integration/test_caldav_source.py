"""CaldavSource against a real Radicale on loopback (pbxcal.testing.radicale).

Every test drives the real ``caldav`` library over HTTP; the test data is written like a
calendar client would (PUT, DELETE, MOVE), by plain urllib, not by the adapter.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.caldav import CaldavSource, list_calendars
from pbxcal.calendars.changes import ChangeSet
from pbxcal.calendars.snapshot import join_calendar
from pbxcal.core.ical import expand_calendar
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)
from pbxcal.store import StoredEvent
from pbxcal.testing.radicale import RadicaleServer

pytestmark = pytest.mark.integration

PASSWORD = "alice-Secret-pw-4711"


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[RadicaleServer]:
    server = RadicaleServer(tmp_path / "radicale", {"alice": PASSWORD, "bob": "bob-pw-0815"})
    server.start()
    server.make_calendar("alice", "work", "Work")
    server.make_calendar("alice", "home", "Home")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def calls() -> Iterator[BlockingCalls]:
    pool = BlockingCalls(workers=2)
    yield pool
    pool.close()


def source(server: RadicaleServer, calls: BlockingCalls, password: str = PASSWORD) -> CaldavSource:
    return CaldavSource(
        calls,
        url=server.calendar_url("alice", "work"),
        username="alice",
        password=password,
        timeout=10,
    )


def event(uid: str, start: str, end: str, title: str, extra: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:{title}\r\n{extra}"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def put(server: RadicaleServer, name: str, uid: str, start: str, end: str, title: str) -> None:
    """Store a single event in alice's "work" calendar."""
    server.put("alice", "work", name, event(uid, start, end, title))


def rows(change: ChangeSet) -> dict[tuple[str, str | None], str]:
    return {(r.uid, r.recurrence_id): r.ical for r in change.upserted}


def summary(ical: str) -> str:
    line = next(line for line in ical.splitlines() if line.startswith("SUMMARY:"))
    return line.removeprefix("SUMMARY:")


@pytest.fixture(params=["sync", "etag"])
def mode(request: pytest.FixtureRequest, radicale: RadicaleServer) -> str:
    """Run a test with RFC 6578 sync-collection, and against a server without it."""
    radicale.sync_collection = request.param == "sync"
    return str(request.param)


async def test_full_then_incremental_add_edit_move_delete(
    radicale: RadicaleServer, calls: BlockingCalls, mode: str
) -> None:
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "333")
    put(radicale, "b.ics", "b@x", "20260331T070000Z", "20260331T080000Z", "0612345678")
    radicale.put(
        "alice",
        "work",
        "task.ics",
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:t@x\r\n"
        "DTSTAMP:20260101T000000Z\r\nSUMMARY:todo\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
    )
    cal = source(radicale, calls)

    full = await cal.changes(None)
    assert full is not None and full.full
    assert set(rows(full)) == {("a@x", None), ("b@x", None)}
    assert summary(rows(full)[("a@x", None)]) == "333"
    assert all(r.ical.startswith("BEGIN:VEVENT\r\n") for r in full.upserted)
    assert f'"m":"{mode}"' in full.cursor
    assert await cal.changes(full.cursor) is None  # nothing changed: nothing to write

    # added
    put(radicale, "c.ics", "c@x", "20260401T070000Z", "20260401T080000Z", "444")
    added = await cal.changes(full.cursor)
    assert added is not None and not added.full
    assert set(rows(added)) == {("c@x", None)}
    assert added.removed == () and added.removed_instances == ()

    # edited (title) and moved (time) in one round
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "555")
    put(radicale, "b.ics", "b@x", "20260402T120000Z", "20260402T130000Z", "0612345678")
    edited = await cal.changes(added.cursor)
    assert edited is not None and not edited.full
    assert set(rows(edited)) == {("a@x", None), ("b@x", None)}
    assert summary(rows(edited)[("a@x", None)]) == "555"
    assert "DTSTART:20260402T120000Z" in rows(edited)[("b@x", None)]
    assert edited.removed == ()

    # deleted
    radicale.delete("alice", "work", "c.ics")
    deleted = await cal.changes(edited.cursor)
    assert deleted is not None
    assert deleted.upserted == () and deleted.removed == ("c@x",)

    # moved to another href in the same calendar: the same event, not a removal
    radicale.move("alice", "work", "a.ics", "work", "renamed.ics")
    renamed = await cal.changes(deleted.cursor)
    assert renamed is not None
    assert set(rows(renamed)) == {("a@x", None)} and renamed.removed == ()

    # moved to another calendar: gone from this one
    radicale.move("alice", "work", "b.ics", "home", "b.ics")
    moved_away = await cal.changes(renamed.cursor)
    assert moved_away is not None
    assert moved_away.upserted == () and moved_away.removed == ("b@x",)
    assert await cal.changes(moved_away.cursor) is None


AMSTERDAM = (
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Amsterdam\r\n"
    "BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\n"
    "DTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\n"
    "BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nTZNAME:CET\r\n"
    "DTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n"
    "END:VTIMEZONE\r\n"
)


def series(override: bool) -> str:
    """Daily 09:00 Amsterdam from Fri 27 March 2026 (DST starts Sun 29 March), 5 times,
    without the 28th (EXDATE), the 30th moved to 14:00 (override)."""
    body = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        + AMSTERDAM
        + "BEGIN:VEVENT\r\nUID:series@x\r\nDTSTAMP:20260101T000000Z\r\n"
        "DTSTART;TZID=Europe/Amsterdam:20260327T090000\r\n"
        "DTEND;TZID=Europe/Amsterdam:20260327T100000\r\n"
        "RRULE:FREQ=DAILY;COUNT=5\r\n"
        "EXDATE;TZID=Europe/Amsterdam:20260328T090000\r\n"
        "SUMMARY:0612345678\r\nEND:VEVENT\r\n"
    )
    if override:
        body += (
            "BEGIN:VEVENT\r\nUID:series@x\r\nDTSTAMP:20260101T000000Z\r\n"
            "RECURRENCE-ID;TZID=Europe/Amsterdam:20260330T090000\r\n"
            "DTSTART;TZID=Europe/Amsterdam:20260330T140000\r\n"
            "DTEND;TZID=Europe/Amsterdam:20260330T150000\r\n"
            "SUMMARY:333\r\nEND:VEVENT\r\n"
        )
    return body + "END:VCALENDAR\r\n"


def expand(stored: dict[tuple[str, str | None], str], timezones: str) -> list[tuple[str, str]]:
    events = [StoredEvent(uid, rid, ical) for (uid, rid), ical in stored.items()]
    calendar = join_calendar(events, timezones, None, source="test")
    expansion = expand_calendar(
        calendar,
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
        ZoneInfo("UTC"),
    )
    assert expansion.skipped == []
    return [(i.start.strftime("%Y-%m-%dT%H:%MZ"), i.title) for i in expansion.instances]


def apply(stored: dict[tuple[str, str | None], str], change: ChangeSet) -> None:
    """What the store does with a change set (pbxcal.store apply_changes), in memory."""
    if change.full:
        stored.clear()
    for uid in change.removed:
        for key in [k for k in stored if k[0] == uid]:
            del stored[key]
    for key in change.removed_instances:
        stored.pop(key, None)
    stored.update(rows(change))


async def test_recurring_series_with_override_and_exdate_across_dst(
    radicale: RadicaleServer, calls: BlockingCalls, mode: str
) -> None:
    radicale.put("alice", "work", "series.ics", series(override=True))
    cal = source(radicale, calls)
    full = await cal.changes(None)
    assert full is not None
    assert set(rows(full)) == {
        ("series@x", None),
        ("series@x", "TZID=Europe/Amsterdam:20260330T090000"),
    }
    assert "RRULE:FREQ=DAILY;COUNT=5" in rows(full)[("series@x", None)]  # not expanded
    assert "TZID:Europe/Amsterdam" in full.timezones
    stored: dict[tuple[str, str | None], str] = {}
    apply(stored, full)
    assert expand(stored, full.timezones) == [
        ("2026-03-27T08:00Z", "0612345678"),  # CET, +01:00
        ("2026-03-29T07:00Z", "0612345678"),  # CEST, +02:00 from this morning
        ("2026-03-30T12:00Z", "333"),  # the override, 14:00 CEST
        ("2026-03-31T07:00Z", "0612345678"),
    ]

    # The override is dropped in the client: the instance goes back to the rule.
    radicale.put("alice", "work", "series.ics", series(override=False))
    change = await cal.changes(full.cursor)
    assert change is not None and not change.full
    assert change.removed_instances == (("series@x", "TZID=Europe/Amsterdam:20260330T090000"),)
    assert change.timezones == ""  # the store keeps the zone it has
    apply(stored, change)
    assert ("2026-03-30T07:00Z", "0612345678") in expand(stored, full.timezones)


async def test_series_across_the_october_change(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    """Weekly on Mondays 09:00 Amsterdam around Sun 25 October 2026 (back to CET)."""
    body = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        + AMSTERDAM
        + "BEGIN:VEVENT\r\nUID:weekly@x\r\nDTSTAMP:20260101T000000Z\r\n"
        "DTSTART;TZID=Europe/Amsterdam:20261019T090000\r\n"
        "DURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n"
        "EXDATE;TZID=Europe/Amsterdam:20261102T090000\r\n"
        "SUMMARY:333\r\nEND:VEVENT\r\n"
        "BEGIN:VEVENT\r\nUID:weekly@x\r\nDTSTAMP:20260101T000000Z\r\n"
        "RECURRENCE-ID;TZID=Europe/Amsterdam:20261026T090000\r\n"
        "DTSTART;TZID=Europe/Amsterdam:20261026T110000\r\nDURATION:PT1H\r\n"
        "SUMMARY:444\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    radicale.put("alice", "work", "weekly.ics", body)
    full = await source(radicale, calls).changes(None)
    assert full is not None
    stored: dict[tuple[str, str | None], str] = {}
    apply(stored, full)
    assert expand(stored, full.timezones) == [
        ("2026-10-19T07:00Z", "333"),  # CEST
        ("2026-10-26T10:00Z", "444"),  # override at 11:00 CET
        ("2026-11-09T08:00Z", "333"),  # CET; 2 November is an EXDATE
    ]


async def test_the_calendar_time_zone_property_names_the_calendar_zone(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    zone = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n" + AMSTERDAM + "END:VCALENDAR\r\n"
    radicale.make_calendar("alice", "local", "Local", timezone=zone)
    radicale.put(
        "alice", "local", "a.ics", event("a@x", "20260330T070000Z", "20260330T080000Z", "333")
    )
    cal = CaldavSource(
        calls,
        url=radicale.calendar_url("alice", "local"),
        username="alice",
        password=PASSWORD,
        timeout=10,
    )
    full = await cal.changes(None)
    assert full is not None and full.calendar_tz == "Europe/Amsterdam"


async def test_a_new_time_zone_is_delivered_with_a_full_read(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    radicale.put("alice", "work", "series.ics", series(override=False))
    cal = source(radicale, calls)
    full = await cal.changes(None)
    assert full is not None
    new_york = AMSTERDAM.replace("Europe/Amsterdam", "America/New_York")
    radicale.put(
        "alice",
        "work",
        "ny.ics",
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
        + new_york
        + "BEGIN:VEVENT\r\nUID:ny@x\r\nDTSTAMP:20260101T000000Z\r\n"
        "DTSTART;TZID=America/New_York:20260401T090000\r\nDURATION:PT1H\r\n"
        "SUMMARY:333\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    change = await cal.changes(full.cursor)
    assert change is not None and change.full  # the store replaces its zones as a whole
    assert "TZID:Europe/Amsterdam" in change.timezones
    assert "TZID:America/New_York" in change.timezones
    assert set(rows(change)) == {("series@x", None), ("ny@x", None)}


async def test_invalidated_sync_token_means_full_resync(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "333")
    cal = source(radicale, calls)
    full = await cal.changes(None)
    assert full is not None and '"m":"sync"' in full.cursor
    put(radicale, "b.ics", "b@x", "20260331T070000Z", "20260331T080000Z", "444")
    # Radicale forgets every sync token it handed out (as after its max_sync_token_age).
    caches = list((radicale.directory / "collections").rglob("sync-token"))
    assert caches
    for cache in caches:
        shutil.rmtree(cache)
    change = await cal.changes(full.cursor)
    assert change is not None and change.full
    assert set(rows(change)) == {("a@x", None), ("b@x", None)}
    assert await cal.changes(change.cursor) is None


async def test_unreadable_cursor_means_full_read(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "333")
    for cursor in ("garbage", '{"v": 99}', '{"v":1,"m":"sync","o":{"a.ics":[1]}}'):
        change = await source(radicale, calls).changes(cursor)
        assert change is not None and change.full and set(rows(change)) == {("a@x", None)}


async def test_wrong_password_is_auth_failed(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    wrong = "not-the-Password-123"
    with pytest.raises(CalendarAuthFailed, match="wrong user name or password") as caught:
        await source(radicale, calls, password=wrong).changes(None)
    assert wrong not in str(caught.value) and PASSWORD not in str(caught.value)
    # bob's password is right, but this is alice's calendar
    bob = CaldavSource(
        calls,
        url=radicale.calendar_url("alice", "work"),
        username="bob",
        password="bob-pw-0815",
        timeout=10,
    )
    with pytest.raises(CalendarAuthFailed):
        await bob.changes(None)


async def test_server_down_is_unavailable_and_recovers(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "333")
    url = radicale.calendar_url("alice", "work").replace("http://", f"http://alice:{PASSWORD}@")
    cal = CaldavSource(calls, url=url, username="alice", password=PASSWORD, timeout=10)
    full = await cal.changes(None)
    assert full is not None
    radicale.stop()
    with pytest.raises(CalendarUnavailable, match="cannot connect") as caught:
        await cal.changes(full.cursor)
    assert PASSWORD not in str(caught.value) and "alice:" not in str(caught.value)
    radicale.start()  # the same port and storage
    put(radicale, "b.ics", "b@x", "20260331T070000Z", "20260331T080000Z", "444")
    change = await cal.changes(full.cursor)
    assert change is not None and set(rows(change)) == {("b@x", None)}


async def test_server_errors_and_garbage(radicale: RadicaleServer, calls: BlockingCalls) -> None:
    cal = source(radicale, calls)
    radicale.fault = (503, b"down for maintenance")
    with pytest.raises(CalendarUnavailable):
        await cal.changes(None)
    radicale.fault, radicale.fault_headers = (429, b"slow down"), {"Retry-After": "7"}
    with pytest.raises(CalendarRateLimited) as limited:
        await cal.changes(None)
    assert limited.value.retry_after == 7
    radicale.fault_headers = {}
    radicale.fault = (500, b"oops")
    with pytest.raises(CalendarUnavailable, match="HTTP 500"):
        await cal.changes(None)
    radicale.fault = (207, b"this is not XML at all")
    with pytest.raises(CalendarError) as caught:
        await cal.changes(None)
    assert not isinstance(caught.value, CalendarUnavailable)
    assert "this is not XML" not in str(caught.value)
    radicale.fault = None
    assert await cal.changes(None) is not None


async def test_a_server_that_does_not_answer_is_unavailable(calls: BlockingCalls) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        cal = CaldavSource(
            calls,
            url=f"http://127.0.0.1:{port}/alice/work/",
            username="alice",
            password=PASSWORD,
            timeout=1,
        )
        with pytest.raises(CalendarUnavailable, match="within") as caught:
            await cal.changes(None)
    assert PASSWORD not in str(caught.value)


async def test_not_a_calendar(radicale: RadicaleServer, calls: BlockingCalls) -> None:
    cal = CaldavSource(
        calls, url=radicale.url + "alice/", username="alice", password=PASSWORD, timeout=10
    )
    with pytest.raises(CalendarError, match="not a calendar collection"):
        await cal.changes(None)


async def test_discovery_from_the_server_url(
    radicale: RadicaleServer, calls: BlockingCalls
) -> None:
    put(radicale, "a.ics", "a@x", "20260330T070000Z", "20260330T080000Z", "333")
    found = await list_calendars(calls, radicale.url, "alice", PASSWORD, timeout=10)
    assert sorted((c.name, c.url) for c in found) == [
        ("Home", radicale.calendar_url("alice", "home")),
        ("Work", radicale.calendar_url("alice", "work")),
    ]
    cal = CaldavSource(
        calls,
        server_url=radicale.url,
        calendar_name="Work",
        username="alice",
        password=PASSWORD,
        timeout=10,
    )
    full = await cal.changes(None)
    assert full is not None and set(rows(full)) == {("a@x", None)}
    missing = CaldavSource(
        calls,
        server_url=radicale.url,
        calendar_name="Nope",
        username="alice",
        password=PASSWORD,
        timeout=10,
    )
    with pytest.raises(CalendarError, match="no calendar called 'Nope'"):
        await missing.changes(None)
    with pytest.raises(CalendarAuthFailed):
        await list_calendars(calls, radicale.url, "alice", "wrong-pw", timeout=10)
