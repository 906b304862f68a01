"""Google event JSON → VEVENT rows → the core's expansion gives the right instances.

Each test feeds Google's JSON (as events.list returns it with singleEvents=false) through
``translate``, assembles the rows into one calendar as the store does, and expands it
with the same core function every provider goes through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from pbxcal.calendars.changes import EventRow
from pbxcal.calendars.google.events import translate
from pbxcal.core.ical import expand_calendar, parse_calendar

AMS = ZoneInfo("Europe/Amsterdam")


def rows_of(*events: dict[str, Any]) -> list[EventRow]:
    rows = []
    for event in events:
        translation = translate(event)
        assert translation.row is not None, translation
        rows.append(translation.row)
    return rows


def calendar_of(rows: list[EventRow]) -> icalendar.Calendar:
    return parse_calendar(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:test\r\n"
        + "".join(row.ical for row in rows)
        + "END:VCALENDAR\r\n"
    )


def expand(
    rows: list[EventRow], start: datetime, end: datetime
) -> list[tuple[str, datetime, datetime]]:
    expansion = expand_calendar(calendar_of(rows), start, end, AMS)
    assert expansion.skipped == []
    return [(i.title, i.start, i.end) for i in expansion.instances]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


WEEKLY = {
    "id": "series1",
    "iCalUID": "series1@google.com",
    "status": "confirmed",
    "summary": "333",
    "start": {"dateTime": "2026-03-16T09:00:00+01:00", "timeZone": "Europe/Amsterdam"},
    "end": {"dateTime": "2026-03-16T10:00:00+01:00", "timeZone": "Europe/Amsterdam"},
    "recurrence": [
        "RRULE:FREQ=WEEKLY;BYDAY=MO",
        "EXDATE;TZID=Europe/Amsterdam:20260406T090000",
    ],
}


def test_single_timed_event() -> None:
    [row] = rows_of({
        "id": "abc", "summary": "0612345678",
        "start": {"dateTime": "2026-03-30T09:00:00+02:00", "timeZone": "Europe/Amsterdam"},
        "end": {"dateTime": "2026-03-30T10:30:00+02:00", "timeZone": "Europe/Amsterdam"},
    })
    assert row.uid == "abc" and row.recurrence_id is None
    assert "DTSTART;TZID=Europe/Amsterdam:20260330T090000\r\n" in row.ical
    assert row.ical.startswith("BEGIN:VEVENT\r\n") and row.ical.endswith("END:VEVENT\r\n")
    assert expand([row], utc(2026, 3, 1), utc(2026, 5, 1)) == [
        ("0612345678", utc(2026, 3, 30, 7), utc(2026, 3, 30, 8, 30))
    ]


def test_event_without_time_zone_is_stored_in_utc() -> None:
    [row] = rows_of({
        "id": "z", "summary": "333",
        "start": {"dateTime": "2026-03-30T09:00:00+02:00"},
        "end": {"dateTime": "2026-03-30T10:00:00Z"},
    })
    assert "DTSTART:20260330T070000Z" in row.ical
    assert expand([row], utc(2026, 3, 1), utc(2026, 5, 1)) == [
        ("333", utc(2026, 3, 30, 7), utc(2026, 3, 30, 10))
    ]


def test_all_day_event_is_a_whole_local_day_across_dst() -> None:
    [row] = rows_of({
        "id": "day", "summary": "333",
        "start": {"date": "2026-03-29"}, "end": {"date": "2026-03-30"},
    })
    assert "DTSTART;VALUE=DATE:20260329" in row.ical
    assert "DTEND;VALUE=DATE:20260330" in row.ical
    # 29 March 2026 is the spring-forward day in Amsterdam: 23 hours long.
    assert expand([row], utc(2026, 3, 1), utc(2026, 5, 1)) == [
        ("333", utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    ]


def test_recurring_series_with_exception_and_cancelled_instance_across_dst() -> None:
    moved = {
        "id": "series1_20260330T070000Z", "recurringEventId": "series1",
        "iCalUID": "series1@google.com", "status": "confirmed", "summary": "444",
        "originalStartTime": {
            "dateTime": "2026-03-30T09:00:00+02:00", "timeZone": "Europe/Amsterdam"
        },
        "start": {"dateTime": "2026-03-30T14:00:00+02:00", "timeZone": "Europe/Amsterdam"},
        "end": {"dateTime": "2026-03-30T15:00:00+02:00", "timeZone": "Europe/Amsterdam"},
    }
    cancelled = {
        "id": "series1_20260413T070000Z", "recurringEventId": "series1",
        "status": "cancelled",
        "originalStartTime": {
            "dateTime": "2026-04-13T09:00:00+02:00", "timeZone": "Europe/Amsterdam"
        },
    }
    rows = rows_of(WEEKLY, moved, cancelled)
    assert [(r.uid, r.recurrence_id) for r in rows] == [
        ("series1", None),
        ("series1", "20260330T070000Z"),
        ("series1", "20260413T070000Z"),
    ]
    assert "STATUS:CANCELLED" in rows[2].ical
    assert "RRULE:FREQ=WEEKLY;BYDAY=MO\r\n" in rows[0].ical
    got = expand(rows, utc(2026, 3, 16), utc(2026, 4, 21))
    assert got == [
        ("333", utc(2026, 3, 16, 8), utc(2026, 3, 16, 9)),  # CET
        ("333", utc(2026, 3, 23, 8), utc(2026, 3, 23, 9)),
        ("444", utc(2026, 3, 30, 12), utc(2026, 3, 30, 13)),  # the moved instance
        # 6 April: EXDATE; 13 April: cancelled instance
        ("333", utc(2026, 4, 20, 7), utc(2026, 4, 20, 8)),  # CEST: still 09:00 local
    ]


def test_same_instance_gets_the_same_recurrence_id_in_any_zone() -> None:
    a = translate({
        "id": "x", "recurringEventId": "m", "status": "cancelled",
        "originalStartTime": {"dateTime": "2026-03-30T09:00:00+02:00",
                              "timeZone": "Europe/Amsterdam"},
    })
    b = translate({
        "id": "x", "recurringEventId": "m", "status": "cancelled",
        "originalStartTime": {"dateTime": "2026-03-30T07:00:00Z"},
    })
    assert a.row is not None and b.row is not None
    assert a.row.recurrence_id == b.row.recurrence_id == "20260330T070000Z"


def test_all_day_series_exception_uses_value_date() -> None:
    translation = translate({
        "id": "d_20260330", "recurringEventId": "d", "status": "cancelled",
        "originalStartTime": {"date": "2026-03-30"},
    })
    assert translation.row is not None
    assert translation.row.recurrence_id == "VALUE=DATE:20260330"
    assert "RECURRENCE-ID;VALUE=DATE:20260330" in translation.row.ical


def test_cancelled_single_or_series_is_removed() -> None:
    assert translate({"id": "gone", "status": "cancelled"}).removed == "gone"


def test_google_own_event_types_are_not_appointments() -> None:
    for kind in ("workingLocation", "focusTime", "outOfOffice", "birthday"):
        event = {"id": f"k-{kind}", "eventType": kind, "summary": "333",
                 "start": {"date": "2026-03-30"}, "end": {"date": "2026-03-31"}}
        assert translate(event).removed == f"k-{kind}"
    event = {"id": "normal", "eventType": "default", "summary": "333",
             "start": {"date": "2026-03-30"}, "end": {"date": "2026-03-31"}}
    assert translate(event).row is not None


def test_declined_by_the_owner_is_not_a_forwarding() -> None:
    base = {
        "summary": "333",
        "start": {"dateTime": "2026-03-30T09:00:00+02:00", "timeZone": "Europe/Amsterdam"},
        "end": {"dateTime": "2026-03-30T10:00:00+02:00", "timeZone": "Europe/Amsterdam"},
    }
    declined, accepted = rows_of(
        {**base, "id": "no", "attendees": [
            {"email": "boss@example.com", "responseStatus": "accepted", "organizer": True},
            {"email": "agent@example.com", "self": True, "responseStatus": "declined"},
        ]},
        {**base, "id": "yes", "attendees": [
            {"email": "boss@example.com", "responseStatus": "declined"},
            {"email": "agent@example.com", "self": True, "responseStatus": "accepted"},
        ]},
    )
    component = icalendar.Event.from_ical(declined.ical)
    attendee = component["ATTENDEE"]
    assert str(attendee) == "mailto:agent@example.com"
    assert attendee.params["PARTSTAT"] == "DECLINED"
    assert "ATTENDEE" not in accepted.ical  # only the owner's own response is kept
    assert expand([declined, accepted], utc(2026, 3, 1), utc(2026, 5, 1)) == [
        ("333", utc(2026, 3, 30, 7), utc(2026, 3, 30, 8))
    ]


def test_transparency_becomes_transp() -> None:
    free, busy = rows_of(
        {"id": "f", "summary": "Lunch", "transparency": "transparent",
         "start": {"date": "2026-03-30"}, "end": {"date": "2026-03-31"}},
        {"id": "b", "summary": "Lunch", "transparency": "opaque",
         "start": {"date": "2026-03-30"}, "end": {"date": "2026-03-31"}},
    )
    assert "TRANSP:TRANSPARENT" in free.ical and "TRANSP:OPAQUE" in busy.ical
    calendar = calendar_of([free, busy])
    instances = expand_calendar(calendar, utc(2026, 3, 1), utc(2026, 5, 1), AMS).instances
    assert sorted((i.uid, i.transparent) for i in instances) == [("b", False), ("f", True)]


def test_bad_recurrence_lines_are_dropped_and_the_rest_stays() -> None:
    [row] = rows_of({
        **WEEKLY,
        "recurrence": [
            "RRULE:FREQ=SOMETIMES;COUNT=x",
            "RRULE:FREQ=WEEKLY;COUNT=2",
            "X-EVIL:1\r\nSUMMARY:hijack",
            "DESCRIPTION:not a recurrence line",
            "EXDATE;VALUE=DATE:notadate",
        ],
    })
    assert "RRULE:FREQ=WEEKLY;COUNT=2\r\n" in row.ical
    assert "SOMETIMES" not in row.ical and "notadate" not in row.ical
    assert "hijack" not in row.ical and "DESCRIPTION" not in row.ical
    assert len(expand([row], utc(2026, 3, 1), utc(2026, 5, 1))) == 2


def test_summary_with_line_breaks_stays_one_property() -> None:
    [row] = rows_of({
        "id": "s", "summary": "333\r\nRRULE:FREQ=DAILY",
        "start": {"date": "2026-03-30"}, "end": {"date": "2026-03-31"},
    })
    assert "\r\nRRULE" not in row.ical
    assert len(expand([row], utc(2026, 3, 1), utc(2026, 5, 1))) == 1


def test_unreadable_events_are_problems_not_exceptions() -> None:
    assert translate("nope").problem == "event without an id"
    assert translate({"id": ""}).problem == "event without an id"
    problem = translate({"id": "p", "start": {"dateTime": "yesterday"}}).problem
    assert problem is not None and "'p'" in problem
    assert translate({"id": "q", "start": {}}).problem is not None
    assert translate({"id": "r", "recurringEventId": 5, "status": "cancelled"}).problem


def test_instances_never_land_in_the_next_day_by_a_zone_mistake() -> None:
    # An event in a zone far from the calendar's: times stay what Google said.
    [row] = rows_of({
        "id": "ny", "summary": "333",
        "start": {"dateTime": "2026-03-30T23:30:00-04:00", "timeZone": "America/New_York"},
        "end": {"dateTime": "2026-03-31T00:30:00-04:00", "timeZone": "America/New_York"},
    })
    start = utc(2026, 3, 31, 3, 30)
    assert expand([row], utc(2026, 3, 1), utc(2026, 5, 1)) == [
        ("333", start, start + timedelta(hours=1))
    ]
