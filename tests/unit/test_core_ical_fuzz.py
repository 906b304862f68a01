"""Fuzzing the calendar reader (issue #7 item 5): a valid calendar, mutated.

Random lines from a pool of hostile ones (zones that are directories or too long,
rules that never end or never match, dates from year 1 to 9999, absurd durations,
broken structure) are inserted, lines are dropped and duplicated. Whatever comes out,
``parse_calendar`` and ``expand_calendar`` only ever return values or raise
``InputError`` (``OverLimit`` is one), within a time bound per example.

A second property checks that reading single events directly gives what
recurring-ical-events gives for them (issue #8 item 3).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import recurring_ical_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbxcal.core.ical import Expansion, expand_calendar, parse_calendar
from pbxcal.core.vevent import instance_of
from pbxcal.errors import InputError

AMS = ZoneInfo("Europe/Amsterdam")
START = datetime(2026, 3, 30, tzinfo=UTC)
END = START + timedelta(days=14)

VALID = [
    "BEGIN:VCALENDAR",
    "VERSION:2.0",
    "PRODID:-//pbxcal//fuzz//EN",
    "X-WR-TIMEZONE:Europe/Amsterdam",
    "BEGIN:VEVENT",
    "UID:one@fuzz",
    "DTSTAMP:20260301T000000Z",
    "DTSTART;TZID=Europe/Amsterdam:20260330T090000",
    "DTEND;TZID=Europe/Amsterdam:20260330T100000",
    "SUMMARY:0612345678",
    "END:VEVENT",
    "BEGIN:VEVENT",
    "UID:two@fuzz",
    "DTSTAMP:20260301T000000Z",
    "DTSTART:20260331T070000Z",
    "DTEND:20260331T080000Z",
    "RRULE:FREQ=DAILY;COUNT=5",
    "SUMMARY:333",
    "END:VEVENT",
    "BEGIN:VEVENT",
    "UID:two@fuzz",
    "DTSTAMP:20260301T000000Z",
    "RECURRENCE-ID:20260402T070000Z",
    "DTSTART:20260402T090000Z",
    "DTEND:20260402T100000Z",
    "SUMMARY:201",
    "END:VEVENT",
    "BEGIN:VEVENT",
    "UID:three@fuzz",
    "DTSTAMP:20260301T000000Z",
    "DTSTART;VALUE=DATE:20260401",
    "SUMMARY:Holiday",
    "END:VEVENT",
    "END:VCALENDAR",
]

_LONG = "A" * 256
HOSTILE = [
    "X-WR-TIMEZONE:Europe",
    f"X-WR-TIMEZONE:{_LONG}",
    "X-WR-TIMEZONE:../../../etc/passwd",
    "X-WR-TIMEZONE:/Europe/Amsterdam",
    "CALSCALE:JULIAN",
    "DTSTART;TZID=Europe:20260330T090000",
    "DTEND;TZID=Europe:20260330T100000",
    f"DTSTART;TZID={_LONG}:20260330T090000",
    "DTSTART;TZID=/vendor/Europe:20260330T090000",
    "DTSTART;TZID=W. Europe Standard Time:20260330T090000",
    "DTSTART:00010101T000000Z",
    "DTEND:99991231T235959Z",
    "DTSTART;VALUE=DATE:00010101",
    "DTEND;VALUE=DATE:99991231",
    "DTSTART:20260330T090000",
    "DTSTART:2026",
    "DTEND:20250101T000000Z",
    "DURATION:P99999999W",
    "DURATION:-P1D",
    "DURATION:PT0S",
    "DURATION:P1D",
    "RRULE:FREQ=DAILY;INTERVAL=0",
    "RRULE:FREQ=HOURLY;INTERVAL=-1",
    "RRULE:FREQ=SECONDLY",
    "RRULE:FREQ=MINUTELY",
    "RRULE:FREQ=MINUTELY;COUNT=100000",
    "RRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
    "RRULE:FREQ=WEEKLY;BYSETPOS=5;BYDAY=MO",
    "RRULE:FREQ=MONTHLY;INTERVAL=12;BYMONTH=2",
    "RRULE:FREQ=YEARLY;BYWEEKNO=53;BYDAY=MO",
    "RRULE:FREQ=DAILY;UNTIL=99991231T000000Z",
    "RRULE:FREQ=DAILY;UNTIL=19000101",
    "RRULE:FREQ=FOO",
    "RRULE:",
    "RRULE:FREQ=DAILY;BYHOUR=25",
    "RDATE:20260331T090000Z",
    "RDATE;VALUE=PERIOD:20260331T090000Z/P99999999W",
    "EXDATE:20260401T070000Z",
    "RECURRENCE-ID:20260331T070000Z",
    "RECURRENCE-ID;RANGE=THISANDFUTURE:20260401T070000Z",
    "BEGIN:VTIMEZONE",
    "END:VTIMEZONE",
    "TZID:x",
    "BEGIN:VEVENT",
    "END:VEVENT",
    "BEGIN:VCALENDAR",
    "END:VCALENDAR",
    "UID:one@fuzz",
    "STATUS:CANCELLED",
    "ATTENDEE;PARTSTAT=DECLINED:mailto:me@example.org",
    "SUMMARY:\x00\x1b[2J",
    "garbage without a colon",
    " folded continuation",
    "",
]


@st.composite
def mutated_calendars(draw: st.DrawFn) -> str:
    lines = list(VALID)
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["insert", "drop", "duplicate", "replace"]))
        where = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if action == "insert" or not lines:
            lines.insert(where, draw(st.sampled_from(HOSTILE)))
        elif action == "drop":
            del lines[where]
        elif action == "duplicate":
            lines.insert(where, lines[where])
        else:
            lines[where] = draw(st.sampled_from(HOSTILE))
    return "\r\n".join(lines) + "\r\n"


@settings(
    max_examples=300,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_calendars(), as_bytes=st.booleans())
def test_mutated_calendars_give_values_or_input_error(data: str, as_bytes: bool) -> None:
    try:
        calendar = parse_calendar(data.encode() if as_bytes else data)
        result = expand_calendar(calendar, START, END, AMS, owner_emails=["me@example.org"])
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(result, Expansion)
    for instance in result.instances:
        assert instance.start <= instance.end
        assert instance.end > START and instance.start < END
    for skipped in result.skipped:
        assert "\n" not in skipped.detail


# -- single events: read directly == what recurring-ical-events makes of them -------------


_zones = st.sampled_from(["Europe/Amsterdam", "America/New_York", "UTC", None])


@st.composite
def single_events(draw: st.DrawFn) -> str:
    day = date(2026, 3, 20) + timedelta(days=draw(st.integers(0, 30)))
    all_day = draw(st.booleans())
    if all_day:
        days = draw(st.integers(1, 3))
        start = f"DTSTART;VALUE=DATE:{day:%Y%m%d}"
        end = draw(
            st.sampled_from(
                [f"DTEND;VALUE=DATE:{day + timedelta(days=days):%Y%m%d}", f"DURATION:P{days}D", ""]
            )
        )
    else:
        moment = datetime.combine(day, datetime.min.time()) + timedelta(
            minutes=15 * draw(st.integers(0, 95))
        )
        minutes = draw(st.integers(0, 600))
        zone = draw(_zones)
        stamp = f"{moment:%Y%m%dT%H%M%S}"
        later = f"{moment + timedelta(minutes=minutes):%Y%m%dT%H%M%S}"
        if zone == "UTC":
            start, end_value = f"DTSTART:{stamp}Z", f"DTEND:{later}Z"
        elif zone is None:
            start, end_value = f"DTSTART:{stamp}", f"DTEND:{later}"
        else:
            start, end_value = f"DTSTART;TZID={zone}:{stamp}", f"DTEND;TZID={zone}:{later}"
        end = draw(st.sampled_from([end_value, f"DURATION:PT{minutes}M", ""]))
    return f"{start}\r\n{end}\r\n" if end else f"{start}\r\n"


@settings(max_examples=150, deadline=None)
@given(
    bodies=st.lists(single_events(), min_size=1, max_size=6),
    calendar_zone=st.sampled_from(["", "X-WR-TIMEZONE:America/New_York\r\n"]),
)
def test_single_events_read_directly_match_the_expander(
    bodies: list[str], calendar_zone: str
) -> None:
    events = "".join(
        f"BEGIN:VEVENT\r\nUID:e{n}\r\nDTSTAMP:20260301T000000Z\r\n{body}SUMMARY:333\r\nEND:VEVENT\r\n"
        for n, body in enumerate(bodies)
    )
    text = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n{calendar_zone}{events}END:VCALENDAR\r\n"
    zone = ZoneInfo("America/New_York") if calendar_zone else AMS
    ours = expand_calendar(parse_calendar(text), START, END, AMS)
    # the reference: recurring-ical-events over the standardised calendar, as before
    import x_wr_timezone

    reference_calendar = x_wr_timezone.to_standard(parse_calendar(text))
    components = recurring_ical_events.of(reference_calendar).between(
        (START - timedelta(days=2)).astimezone(zone), (END + timedelta(days=2)).astimezone(zone)
    )
    expected = []
    for component in components:
        instance = instance_of(component, zone, set())
        if instance is not None and instance.end > START and instance.start < END:
            expected.append(instance)
    expected.sort(key=lambda i: (i.start, i.end, i.uid))
    assert ours.skipped == []
    assert ours.instances == expected
