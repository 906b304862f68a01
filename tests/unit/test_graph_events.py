"""Graph event JSON → VEVENT rows → the store's calendar (``join_calendar``) → the core's
expansion gives the right instances: occurrences of a series and an exception (Graph
expands them itself: one row per instance), all-day events, declined and free events,
cancelled and removed items, and JSON of the wrong shape.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pbxcal.calendars.changes import EventRow
from pbxcal.calendars.graph.events import translate
from pbxcal.calendars.snapshot import join_calendar
from pbxcal.core.ical import expand_calendar
from pbxcal.store.records import StoredEvent

AMS = ZoneInfo("Europe/Amsterdam")


def utc(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def instance(event_id: str, title: str, start: str, end: str, **more: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "subject": title,
        "type": "singleInstance",
        "isAllDay": False,
        "isCancelled": False,
        "showAs": "busy",
        "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
        "start": {"dateTime": start, "timeZone": "UTC"},
        "end": {"dateTime": end, "timeZone": "UTC"},
        **more,
    }


def rows_of(*events: dict[str, Any]) -> list[EventRow]:
    rows = []
    for event in events:
        translation = translate(event)
        assert translation.row is not None, translation
        rows.append(translation.row)
    return rows


def expand(rows: list[EventRow]) -> list[tuple[str, datetime, datetime, bool, bool]]:
    stored = [StoredEvent(r.uid, r.recurrence_id, r.ical) for r in rows]
    calendar = join_calendar(stored, "", None, source="graph test")
    expansion = expand_calendar(calendar, utc(1), datetime(2026, 5, 1, tzinfo=UTC), AMS)
    assert expansion.skipped == []
    return [(i.title, i.start, i.end, i.all_day, i.transparent) for i in expansion.instances]


def test_series_occurrences_and_an_exception_are_separate_instances() -> None:
    # A weekly series at 09:00 Amsterdam (08:00 UTC before March 29th, 07:00 after), as
    # calendarView/delta lists it: each occurrence with its own id, one moved (exception).
    series = "AAMkSeries"
    rows = rows_of(
        instance("occ1", "333", "2026-03-16T08:00:00.0000000", "2026-03-16T09:00:00.0000000",
                 type="occurrence", seriesMasterId=series),
        instance("exc2", "444", "2026-03-23T13:00:00.0000000", "2026-03-23T14:00:00.0000000",
                 type="exception", seriesMasterId=series),
        instance("occ3", "333", "2026-03-30T07:00:00.0000000", "2026-03-30T08:00:00.0000000",
                 type="occurrence", seriesMasterId=series),
    )
    assert [r.recurrence_id for r in rows] == [None, None, None]
    assert all("RRULE" not in r.ical for r in rows)
    assert expand(rows) == [
        ("333", utc(16, 8), utc(16, 9), False, False),
        ("444", utc(23, 13), utc(23, 14), False, False),
        ("333", utc(30, 7), utc(30, 8), False, False),
    ]


def test_a_series_master_is_not_a_row() -> None:
    master = instance("m", "333", "2026-03-16T08:00:00", "2026-03-16T09:00:00",
                      type="seriesMaster")
    translation = translate(master)
    assert translation.row is None and translation.removed is None
    assert translation.problem is None


def test_all_day_event_is_a_date() -> None:
    [row] = rows_of(instance("day", "555", "2026-03-17T00:00:00.0000000",
                             "2026-03-19T00:00:00.0000000", isAllDay=True))
    assert "DTSTART;VALUE=DATE:20260317" in row.ical
    assert "DTEND;VALUE=DATE:20260319" in row.ical
    [(title, start, end, all_day, _)] = expand([row])
    assert (title, all_day) == ("555", True)
    # An all-day event covers whole days in the calendar's zone.
    assert start.astimezone(AMS).date() == date(2026, 3, 17)
    assert end.astimezone(AMS).date() == date(2026, 3, 19)


def test_declined_by_the_owner_drops_out_and_free_is_transparent() -> None:
    declined = instance("d", "666", "2026-03-18T08:00:00", "2026-03-18T09:00:00",
                        responseStatus={"response": "declined", "time": "2026-03-01T00:00:00Z"})
    free = instance("f", "777", "2026-03-18T10:00:00", "2026-03-18T11:00:00", showAs="free")
    tentative = instance("t", "888", "2026-03-18T12:00:00", "2026-03-18T13:00:00",
                         showAs="tentative")
    rows = rows_of(declined, free, tentative)
    assert "STATUS:CANCELLED" in rows[0].ical
    assert "STATUS:TENTATIVE" in rows[2].ical
    assert expand(rows) == [
        ("777", utc(18, 10), utc(18, 11), False, True),
        ("888", utc(18, 12), utc(18, 13), False, False),
    ]


def test_removed_and_cancelled_items_remove_their_id() -> None:
    assert translate({"id": "x", "@removed": {"reason": "deleted"}}).removed == "x"
    cancelled = instance("c", "333", "2026-03-18T08:00:00", "2026-03-18T09:00:00",
                         isCancelled=True)
    assert translate(cancelled).removed == "c"


def test_a_zone_other_than_utc_and_an_offset_are_honoured() -> None:
    local = instance("z", "333", "2026-03-18T09:00:00", "2026-03-18T10:00:00")
    local["start"]["timeZone"] = local["end"]["timeZone"] = "Europe/Amsterdam"
    [row] = rows_of(local)
    assert "DTSTART:20260318T080000Z" in row.ical
    unknown = {**local, "start": {"dateTime": "2026-03-18T09:00:00", "timeZone": "Nowhere/X"}}
    assert translate(unknown).problem is not None


def test_json_of_the_wrong_shape_is_a_problem_not_an_exception() -> None:
    assert translate(None).problem == "event without an id"
    assert translate({"id": 5}).problem == "event without an id"
    assert translate({"id": "a", "start": "tomorrow"}).problem is not None
    assert translate({"id": "a", "start": {"dateTime": "not a date"}}).problem is not None
    no_subject = translate({"id": "a", "start": {"dateTime": "2026-03-18T09:00:00"},
                            "subject": ["x"]})
    assert no_subject.row is not None and "SUMMARY:" in no_subject.row.ical
