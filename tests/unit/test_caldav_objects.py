"""The CalDAV source's pure parts: calendar object → rows, and the cursor's format."""

from __future__ import annotations

import pytest

from pbxcal.calendars.caldav.cursor import Member, SyncState, etag_digest
from pbxcal.calendars.caldav.objects import read_object
from pbxcal.errors import CalendarError

SERIES = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Amsterdam\r\nBEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\n"
    "TZOFFSETTO:+0100\r\nDTSTART:19701025T030000\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
    "BEGIN:VEVENT\r\nUID:s@x\r\nDTSTART;TZID=Europe/Amsterdam:20261019T090000\r\n"
    "RRULE:FREQ=WEEKLY;COUNT=3\r\nSUMMARY:333\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:s@x\r\nRECURRENCE-ID;TZID=Europe/Amsterdam:20261026T090000\r\n"
    "DTSTART;TZID=Europe/Amsterdam:20261026T110000\r\nSUMMARY:444\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:s@x\r\nRECURRENCE-ID;VALUE=DATE:20261102\r\n"
    "DTSTART;VALUE=DATE:20261102\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:s@x\r\nRECURRENCE-ID:20261109T080000Z\r\n"
    "DTSTART:20261109T090000Z\r\nSUMMARY:555\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


def test_one_row_per_vevent_with_recurrence_id_and_its_parameters() -> None:
    read = read_object(SERIES, "test")
    assert read.uid == "s@x"
    assert [r.recurrence_id for r in read.rows] == [
        None,
        "TZID=Europe/Amsterdam:20261026T090000",
        "VALUE=DATE:20261102",
        "20261109T080000Z",
    ]
    overrides = sorted(r.recurrence_id for r in read.rows if r.recurrence_id is not None)
    assert read.overrides == tuple(overrides)
    assert all(
        r.ical.startswith("BEGIN:VEVENT\r\n") and r.ical.endswith("END:VEVENT\r\n")
        for r in read.rows
    )
    assert "RRULE:FREQ=WEEKLY;COUNT=3" in read.rows[0].ical
    assert list(read.timezones) == ["Europe/Amsterdam"]
    assert read.timezones["Europe/Amsterdam"].startswith("BEGIN:VTIMEZONE\r\n")


def test_objects_without_events_or_uid() -> None:
    todo = "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:t\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
    assert read_object(todo, "test").uid is None
    assert read_object(todo, "test").rows == ()
    no_uid = (
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:20260330T070000Z\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )
    first, again = read_object(no_uid, "/a/b.ics"), read_object(no_uid, "/a/b.ics")
    assert first.uid is not None and first.uid.startswith("pbxcal-") and first.uid == again.uid
    assert f"UID:{first.uid}" in first.rows[0].ical


@pytest.mark.parametrize(
    "text",
    ["", "not a calendar", "BEGIN:VEVENT\r\nEND:VEVENT\r\n", "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n"],
)
def test_garbage_is_a_calendar_error_without_the_content(text: str) -> None:
    with pytest.raises(CalendarError, match=r"^member x: not valid iCalendar") as caught:
        read_object(text, "member x")
    assert "not a calendar" not in str(caught.value)


def test_cursor_round_trip_and_compact() -> None:
    state = SyncState(
        "sync",
        "http://radicale.org/ns/sync/abc",
        None,
        {
            "a.ics": Member(etag_digest('"e1"'), "a@x"),
            "s.ics": Member(etag_digest('"e2"'), "s@x", ("20261109T080000Z",)),
            "t.ics": Member("", None),
        },
        frozenset({"Europe/Amsterdam"}),
    )
    text = state.encode()
    assert SyncState.decode(text) == state
    assert " " not in text.replace("radicale.org", "")
    assert len(etag_digest('"a-very-long-etag-' + "x" * 100 + '"')) == 12


@pytest.mark.parametrize(
    "cursor",
    [
        None,
        "",
        "garbage",
        "[]",
        '{"v":2,"m":"sync"}',
        '{"v":1,"m":"other"}',
        '{"v":1,"m":"sync","t":5}',
        '{"v":1,"m":"etag","o":{"a":["e"]}}',
        '{"v":1,"m":"etag","o":{"a":["e","u",[1]]}}',
        '{"v":1,"m":"etag","z":"Europe/Paris"}',
    ],
)
def test_unreadable_cursors_mean_no_cursor(cursor: str | None) -> None:
    assert SyncState.decode(cursor) is None
