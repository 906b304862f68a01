"""expand_calendar: iCalendar data → UTC event instances in a range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbxcal.core.ical import EventInstance, Expansion, expand_calendar, parse_calendar
from pbxcal.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data"
AMS = ZoneInfo("Europe/Amsterdam")
NYC = ZoneInfo("America/New_York")


def z(text: str) -> datetime:
    """'2026-04-06 08:00' → aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cal(*events: str, header: str = "") -> str:
    body = "".join(
        "BEGIN:VEVENT\nDTSTAMP:20260320T120000Z\n" + e.strip() + "\nEND:VEVENT\n" for e in events
    )
    text = (
        f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//pbxcal//tests//EN\n{header}{body}END:VCALENDAR\n"
    )
    return text.replace("\n", "\r\n")


def expand(
    text: str | bytes,
    start: str = "2026-01-01 00:00",
    end: str = "2027-01-01 00:00",
    tz: ZoneInfo = AMS,
    owners: tuple[str, ...] = (),
) -> Expansion:
    return expand_calendar(parse_calendar(text), z(start), z(end), tz, owner_emails=owners)


def spans(expansion: Expansion) -> list[tuple[datetime, datetime, str]]:
    return [(i.start, i.end, i.title) for i in expansion.instances]


def test_simple_event_in_utc_and_instance_fields() -> None:
    result = expand(
        cal(
            "UID:a\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
            "DTEND;TZID=Europe/Amsterdam:20260406T113000\nSUMMARY:333\nTRANSP:TRANSPARENT"
        )
    )
    assert result.skipped == []
    assert result.instances == [
        EventInstance("a", z("2026-04-06 08:00"), z("2026-04-06 09:30"), "333", True, False)
    ]
    assert result.instances[0].start.utcoffset() == timedelta(0)


def test_range_is_half_open_and_overlap_based() -> None:
    text = cal(
        "UID:ends-at-start\nDTSTART:20260406T070000Z\nDTEND:20260406T080000Z\nSUMMARY:1",
        "UID:straddles-start\nDTSTART:20260406T073000Z\nDTEND:20260406T083000Z\nSUMMARY:2",
        "UID:inside\nDTSTART:20260406T090000Z\nDTEND:20260406T093000Z\nSUMMARY:3",
        "UID:straddles-end\nDTSTART:20260406T093000Z\nDTEND:20260406T103000Z\nSUMMARY:4",
        "UID:starts-at-end\nDTSTART:20260406T100000Z\nDTEND:20260406T110000Z\nSUMMARY:5",
    )
    result = expand(text, "2026-04-06 08:00", "2026-04-06 10:00")
    # instances keep their own times (not clipped)
    assert [i.uid for i in result.instances] == ["straddles-start", "inside", "straddles-end"]
    assert result.instances[0].start == z("2026-04-06 07:30")


def test_rrule_with_exdate_and_rdate() -> None:
    text = cal(
        "UID:r\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260406T110000\nRRULE:FREQ=DAILY;COUNT=5\n"
        "EXDATE;TZID=Europe/Amsterdam:20260408T100000\n"
        "RDATE;TZID=Europe/Amsterdam:20260412T150000\nSUMMARY:333"
    )
    assert [(s, e) for s, e, _ in spans(expand(text))] == [
        (z("2026-04-06 08:00"), z("2026-04-06 09:00")),
        (z("2026-04-07 08:00"), z("2026-04-07 09:00")),
        (z("2026-04-09 08:00"), z("2026-04-09 09:00")),
        (z("2026-04-10 08:00"), z("2026-04-10 09:00")),
        (z("2026-04-12 13:00"), z("2026-04-12 14:00")),
    ]


def test_weekly_rrule_keeps_local_time_across_dst() -> None:
    text = cal(
        "UID:w\nDTSTART;TZID=Europe/Amsterdam:20260323T090000\n"
        "DTEND;TZID=Europe/Amsterdam:20260323T100000\nRRULE:FREQ=WEEKLY;COUNT=2\nSUMMARY:333"
    )
    starts = [s for s, _, _ in spans(expand(text))]
    assert starts == [z("2026-03-23 08:00"), z("2026-03-30 07:00")]


def test_recurrence_id_override_moved_in_time() -> None:
    text = cal(
        "UID:m\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260406T110000\nRRULE:FREQ=DAILY;COUNT=3\nSUMMARY:333",
        "UID:m\nRECURRENCE-ID;TZID=Europe/Amsterdam:20260407T100000\n"
        "DTSTART;TZID=Europe/Amsterdam:20260407T150000\n"
        "DTEND;TZID=Europe/Amsterdam:20260407T163000\nSUMMARY:444",
    )
    assert spans(expand(text)) == [
        (z("2026-04-06 08:00"), z("2026-04-06 09:00"), "333"),
        (z("2026-04-07 13:00"), z("2026-04-07 14:30"), "444"),
        (z("2026-04-08 08:00"), z("2026-04-08 09:00"), "333"),
    ]


def test_override_moved_out_of_range_leaves_nothing_behind() -> None:
    text = cal(
        "UID:m\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260406T110000\nRRULE:FREQ=DAILY;COUNT=3\nSUMMARY:333",
        "UID:m\nRECURRENCE-ID;TZID=Europe/Amsterdam:20260407T100000\n"
        "DTSTART;TZID=Europe/Amsterdam:20260420T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260420T110000\nSUMMARY:333",
    )
    result = expand(text, "2026-04-06 00:00", "2026-04-09 00:00")
    assert [s for s, _, _ in spans(result)] == [z("2026-04-06 08:00"), z("2026-04-08 08:00")]


def test_recurrence_id_this_and_future() -> None:
    text = cal(
        "UID:f\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260406T110000\nRRULE:FREQ=DAILY;COUNT=5\nSUMMARY:333",
        "UID:f\nRECURRENCE-ID;RANGE=THISANDFUTURE;TZID=Europe/Amsterdam:20260408T100000\n"
        "DTSTART;TZID=Europe/Amsterdam:20260408T120000\n"
        "DTEND;TZID=Europe/Amsterdam:20260408T130000\nSUMMARY:444",
    )
    assert spans(expand(text)) == [
        (z("2026-04-06 08:00"), z("2026-04-06 09:00"), "333"),
        (z("2026-04-07 08:00"), z("2026-04-07 09:00"), "333"),
        (z("2026-04-08 10:00"), z("2026-04-08 11:00"), "444"),
        (z("2026-04-09 10:00"), z("2026-04-09 11:00"), "444"),
        (z("2026-04-10 10:00"), z("2026-04-10 11:00"), "444"),
    ]


def test_cancelled_event_is_dropped() -> None:
    text = cal(
        "UID:c\nDTSTART:20260406T080000Z\nDTEND:20260406T090000Z\nSTATUS:CANCELLED\nSUMMARY:333",
        "UID:c2\nDTSTART:20260406T080000Z\nDTEND:20260406T090000Z\nSTATUS:CONFIRMED\nSUMMARY:444",
    )
    assert [i.uid for i in expand(text).instances] == ["c2"]


def test_cancelled_single_instance_is_dropped() -> None:
    text = cal(
        "UID:s\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260406T110000\nRRULE:FREQ=DAILY;COUNT=3\nSUMMARY:333",
        "UID:s\nRECURRENCE-ID;TZID=Europe/Amsterdam:20260407T100000\n"
        "DTSTART;TZID=Europe/Amsterdam:20260407T100000\n"
        "DTEND;TZID=Europe/Amsterdam:20260407T110000\nSTATUS:CANCELLED\nSUMMARY:333",
    )
    starts = [s for s, _, _ in spans(expand(text))]
    assert starts == [z("2026-04-06 08:00"), z("2026-04-08 08:00")]


DECLINED = cal(
    "UID:d\nDTSTART:20260406T080000Z\nDTEND:20260406T090000Z\nSUMMARY:333\n"
    "ORGANIZER:mailto:boss@example.com\n"
    "ATTENDEE;PARTSTAT=DECLINED:mailto:Anna@Example.com\n"
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com",
    "UID:single-attendee\nDTSTART:20260406T100000Z\nDTEND:20260406T110000Z\nSUMMARY:444\n"
    "ATTENDEE;PARTSTAT=DECLINED:MAILTO:anna@example.com",
    "UID:accepted\nDTSTART:20260406T120000Z\nDTEND:20260406T130000Z\nSUMMARY:555\n"
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:anna@example.com\n"
    "ATTENDEE;PARTSTAT=DECLINED:mailto:carol@example.com",
)


def test_declined_by_owner_is_dropped() -> None:
    assert [i.uid for i in expand(DECLINED, owners=("anna@example.com",)).instances] == ["accepted"]
    assert [i.uid for i in expand(DECLINED, owners=("mailto:ANNA@example.com",)).instances] == [
        "accepted"
    ]


def test_declined_by_someone_else_is_kept() -> None:
    assert len(expand(DECLINED).instances) == 3
    assert len(expand(DECLINED, owners=("bob@example.com",)).instances) == 3
    kept = expand(DECLINED, owners=("carol@example.com",)).instances
    assert [i.uid for i in kept] == ["d", "single-attendee"]


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "hours"),
    [
        (AMS, "20260329", "2026-03-28 23:00", "2026-03-29 22:00", 23),
        (AMS, "20260325", "2026-03-24 23:00", "2026-03-25 23:00", 24),
        (AMS, "20261025", "2026-10-24 22:00", "2026-10-25 23:00", 25),
        (NYC, "20260308", "2026-03-08 05:00", "2026-03-09 04:00", 23),
        (NYC, "20261101", "2026-11-01 04:00", "2026-11-02 05:00", 25),
    ],
)
def test_all_day_event_is_the_whole_local_day(
    tz: ZoneInfo, day: str, start: str, end: str, hours: int
) -> None:
    text = cal(f"UID:ad\nDTSTART;VALUE=DATE:{day}\nSUMMARY:333")  # no DTEND: one day
    (instance,) = expand(text, tz=tz).instances
    assert (instance.start, instance.end) == (z(start), z(end))
    assert instance.end - instance.start == timedelta(hours=hours)
    assert instance.all_day


def test_all_day_uses_x_wr_timezone_over_default() -> None:
    text = cal(
        "UID:ad\nDTSTART;VALUE=DATE:20261101\nDTEND;VALUE=DATE:20261102\nSUMMARY:333",
        header="X-WR-TIMEZONE:America/New_York\n",
    )
    (instance,) = expand(text, tz=AMS).instances
    assert (instance.start, instance.end) == (z("2026-11-01 04:00"), z("2026-11-02 05:00"))


def test_multi_day_all_day_over_dst_change() -> None:
    text = cal(
        "UID:md\nDTSTART;VALUE=DATE:20260328\nDTEND;VALUE=DATE:20260331\nSUMMARY:333",
        "UID:md2\nDTSTART;VALUE=DATE:20261024\nDTEND;VALUE=DATE:20261026\nSUMMARY:444",
    )
    first, second = expand(text).instances
    assert (first.start, first.end) == (z("2026-03-27 23:00"), z("2026-03-30 22:00"))
    assert first.end - first.start == timedelta(hours=71)
    assert (second.start, second.end) == (z("2026-10-23 22:00"), z("2026-10-25 23:00"))
    assert second.end - second.start == timedelta(hours=49)


def test_recurring_all_day_across_dst() -> None:
    text = cal("UID:rd\nDTSTART;VALUE=DATE:20260328\nRRULE:FREQ=DAILY;COUNT=3\nSUMMARY:333")
    lengths = [i.end - i.start for i in expand(text).instances]
    assert lengths == [timedelta(hours=24), timedelta(hours=23), timedelta(hours=24)]


def test_timed_recurrence_in_new_york_over_dst() -> None:
    text = cal(
        "UID:ny\nDTSTART;TZID=America/New_York:20260306T090000\n"
        "DTEND;TZID=America/New_York:20260306T100000\nRRULE:FREQ=DAILY;COUNT=4\nSUMMARY:333",
        "UID:ny2\nDTSTART;TZID=America/New_York:20261030T090000\n"
        "DTEND;TZID=America/New_York:20261030T100000\nRRULE:FREQ=DAILY;COUNT=4\nSUMMARY:444",
    )
    starts = [(i.uid, i.start) for i in expand(text, tz=AMS).instances]
    assert starts == [
        ("ny", z("2026-03-06 14:00")),
        ("ny", z("2026-03-07 14:00")),
        ("ny", z("2026-03-08 13:00")),
        ("ny", z("2026-03-09 13:00")),
        ("ny2", z("2026-10-30 13:00")),
        ("ny2", z("2026-10-31 13:00")),
        ("ny2", z("2026-11-01 14:00")),
        ("ny2", z("2026-11-02 14:00")),
    ]


FLOATING = "UID:fl\nDTSTART:20260406T100000\nDTEND:20260406T110000\nSUMMARY:333"


def test_floating_time_in_default_zone() -> None:
    assert spans(expand(cal(FLOATING), tz=AMS)) == [
        (z("2026-04-06 08:00"), z("2026-04-06 09:00"), "333")
    ]
    assert spans(expand(cal(FLOATING), tz=NYC)) == [
        (z("2026-04-06 14:00"), z("2026-04-06 15:00"), "333")
    ]


def test_floating_time_in_x_wr_timezone_wins_over_default() -> None:
    text = cal(FLOATING, header="X-WR-TIMEZONE:America/New_York\n")
    assert spans(expand(text, tz=AMS)) == [(z("2026-04-06 14:00"), z("2026-04-06 15:00"), "333")]


def test_utc_times_stay_utc_with_x_wr_timezone() -> None:
    text = cal(
        "UID:u\nDTSTART:20260406T080000Z\nDTEND:20260406T090000Z\nSUMMARY:333",
        header="X-WR-TIMEZONE:America/New_York\n",
    )
    assert spans(expand(text)) == [(z("2026-04-06 08:00"), z("2026-04-06 09:00"), "333")]


def test_floating_recurrence_over_dst() -> None:
    text = cal(
        "UID:fr\nDTSTART:20260323T100000\nDTEND:20260323T110000\n"
        "RRULE:FREQ=WEEKLY;COUNT=2\nSUMMARY:333"
    )
    assert [s for s, _, _ in spans(expand(text))] == [
        z("2026-03-23 09:00"),
        z("2026-03-30 08:00"),
    ]


def test_floating_event_near_range_edge_uses_zone() -> None:
    # 01:00 floating in Amsterdam is 23:00Z the day before: in range [22:00, 24:00).
    text = cal("UID:e\nDTSTART:20260407T010000\nDTEND:20260407T013000\nSUMMARY:333")
    result = expand(text, "2026-04-06 22:00", "2026-04-07 00:00")
    assert spans(result) == [(z("2026-04-06 23:00"), z("2026-04-06 23:30"), "333")]


def test_duration_instead_of_dtend() -> None:
    text = cal(
        "UID:du\nDTSTART;TZID=Europe/Amsterdam:20260406T100000\nDURATION:PT1H30M\n"
        "RRULE:FREQ=DAILY;COUNT=2\nSUMMARY:333",
        "UID:du-day\nDTSTART;VALUE=DATE:20260329\nDURATION:P1D\nSUMMARY:444",
    )
    result = expand(text)
    assert spans(result) == [
        (z("2026-03-28 23:00"), z("2026-03-29 22:00"), "444"),
        (z("2026-04-06 08:00"), z("2026-04-06 09:30"), "333"),
        (z("2026-04-07 08:00"), z("2026-04-07 09:30"), "333"),
    ]


def test_timed_event_without_end_is_instantaneous() -> None:
    text = cal("UID:p\nDTSTART:20260406T080000Z\nSUMMARY:333")
    (instance,) = expand(text).instances
    assert instance.start == instance.end == z("2026-04-06 08:00")


@pytest.mark.parametrize(
    "name", ["outlook_windows_zone.ics", "outlook_windows_zone_no_vtimezone.ics"]
)
def test_outlook_windows_zone_names(name: str) -> None:
    text = (DATA / name).read_bytes()
    result = expand(text, tz=ZoneInfo("UTC"))
    assert result.skipped == []
    found = {i.uid: (i.start, i.end) for i in result.instances}
    assert found["outlook-summer@example"] == (z("2026-04-06 08:00"), z("2026-04-06 09:00"))
    assert found["outlook-winter@example"] == (z("2026-01-12 09:00"), z("2026-01-12 10:00"))
    if "no_vtimezone" in name:
        assert found["outlook-eastern@example"] == (
            z("2026-04-06 14:00"),
            z("2026-04-06 15:00"),
        )


def test_event_without_dtstart_is_skipped_and_good_ones_kept() -> None:
    result = expand((DATA / "missing_dtstart.ics").read_bytes())
    assert [i.uid for i in result.instances] == ["good-before@example", "good-after@example"]
    assert [s.uid for s in result.skipped] == ["no-start@example"]


def test_unknown_x_wr_timezone_falls_back_to_default_zone() -> None:
    text = cal(FLOATING, header="X-WR-TIMEZONE:Mars/Olympus_Mons\n")
    result = expand(text, tz=AMS)
    assert spans(result) == [(z("2026-04-06 08:00"), z("2026-04-06 09:00"), "333")]


def test_event_ending_before_it_starts_is_skipped_not_swapped() -> None:
    text = cal(
        "UID:bad\nDTSTART:20260406T100000Z\nDTEND:20260406T080000Z\nSUMMARY:333",
        "UID:good\nDTSTART:20260406T110000Z\nDTEND:20260406T120000Z\nSUMMARY:444",
    )
    result = expand(text)
    assert [i.uid for i in result.instances] == ["good"]
    assert [s.uid for s in result.skipped] == ["bad"]


def test_malformed_events_are_skipped_and_good_ones_kept() -> None:
    result = expand((DATA / "malformed_event.ics").read_bytes())
    assert [i.uid for i in result.instances] == ["good-before@example", "good-after@example"]
    skipped = {s.uid for s in result.skipped}
    assert skipped == {"garbage-start@example", "garbage-rrule@example"}
    assert all("\n" not in s.detail and s.detail for s in result.skipped)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"\x00\xff\xfe garbage \x89PNG",
        b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Anna\r\nEND:VCARD\r\n",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:333\r\n",
        b"<html><body>Login required</body></html>",
        b'{"events": []}',
    ],
)
def test_garbage_is_an_input_error(data: bytes) -> None:
    with pytest.raises(InputError) as info:
        parse_calendar(data, source="cal.ics")
    message = str(info.value)
    assert message.startswith("cal.ics: ")
    assert "\n" not in message


def test_naive_range_is_refused() -> None:
    calendar = parse_calendar(cal(FLOATING))
    with pytest.raises(ValueError, match="timezone-aware"):
        expand_calendar(calendar, datetime(2026, 4, 6), z("2026-04-07 00:00"), AMS)  # noqa: DTZ001
