"""busy_intervals and free_slots: the availability rules of the design guide."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxcal.core.ical import EventInstance, expand_calendar, parse_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.slots import AvailabilityRules, Slot, busy_intervals, free_slots

AMS = ZoneInfo("Europe/Amsterdam")
NYC = ZoneInfo("America/New_York")
NL = NumberPolicy.default("NL")
MON = date(2026, 4, 6)  # a Monday, CEST (UTC+2)
WEEKDAYS_9_17 = {d: [(time(9), time(17))] for d in range(5)}
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
M = timedelta(minutes=1)


def local(day: date, hh: int, mm: int = 0, zone: ZoneInfo = AMS) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=zone).astimezone(UTC)


def rules(minutes: int = 30, zone: ZoneInfo = AMS, **kwargs: object) -> AvailabilityRules:
    kwargs.setdefault("hours", WEEKDAYS_9_17)
    return AvailabilityRules(timezone=zone, duration=timedelta(minutes=minutes), **kwargs)  # type: ignore[arg-type]


def starts(slots: list[Slot], zone: ZoneInfo = AMS) -> list[str]:
    return [s.start.astimezone(zone).strftime("%H:%M") for s in slots]


def test_empty_day_is_all_slots_from_nine() -> None:
    slots = free_slots([], rules(60), MON, MON, LONG_AGO)
    assert starts(slots) == [f"{h:02d}:00" for h in range(9, 17)]
    assert all(s.end - s.start == timedelta(hours=1) for s in slots)
    assert slots[0].start == datetime(2026, 4, 6, 7, tzinfo=UTC)


def test_weekend_has_no_hours() -> None:
    assert free_slots([], rules(60), date(2026, 4, 11), date(2026, 4, 12), LONG_AGO) == []


def test_busy_time_blocks_touching_slots_only() -> None:
    busy = [(local(MON, 11), local(MON, 12))]
    assert starts(free_slots(busy, rules(30), MON, MON, LONG_AGO)) == [
        "09:00",
        "09:30",
        "10:00",
        "10:30",
        "12:00",
        "12:30",
        "13:00",
        "13:30",
        "14:00",
        "14:30",
        "15:00",
        "15:30",
        "16:00",
        "16:30",
    ]


def test_buffers_around_busy_time() -> None:
    busy = [(local(MON, 11), local(MON, 12))]
    r = rules(30, buffer_before=timedelta(minutes=15), buffer_after=timedelta(minutes=15))
    # 10:00 + 30 + 15 = 10:45 <= 11:00 ok; 10:30 + 45 > 11:00; 12:00 - 15 < 12:00; 12:30 ok
    assert starts(free_slots(busy, r, MON, MON, LONG_AGO)) == [
        "09:00",
        "09:30",
        "10:00",
        "12:30",
        "13:00",
        "13:30",
        "14:00",
        "14:30",
        "15:00",
        "15:30",
        "16:00",
        "16:30",
    ]


def test_buffer_exactly_fitting_is_allowed() -> None:
    busy = [(local(MON, 11), local(MON, 12))]
    r = rules(30, buffer_before=timedelta(minutes=30), buffer_after=timedelta(minutes=30))
    assert "10:00" in starts(free_slots(busy, r, MON, MON, LONG_AGO))
    assert "12:30" in starts(free_slots(busy, r, MON, MON, LONG_AGO))
    assert "12:00" not in starts(free_slots(busy, r, MON, MON, LONG_AGO))


def test_buffers_do_not_apply_at_day_edges() -> None:
    r = rules(60, buffer_before=timedelta(minutes=30), buffer_after=timedelta(minutes=30))
    assert starts(free_slots([], r, MON, MON, LONG_AGO)) == [f"{h:02d}:00" for h in range(9, 17)]


def test_buffers_do_apply_to_busy_time_outside_working_hours() -> None:
    busy = [(local(MON, 8), local(MON, 8, 45)), (local(MON, 17, 10), local(MON, 18))]
    r = rules(60, buffer_before=timedelta(minutes=30), buffer_after=timedelta(minutes=15))
    assert starts(free_slots(busy, r, MON, MON, LONG_AGO)) == [
        "10:00",
        "11:00",
        "12:00",
        "13:00",
        "14:00",
        "15:00",
    ]


def test_break_splits_the_day_and_step_restarts_after_it() -> None:
    r = rules(45, breaks=[(time(12), time(12, 30))])
    assert starts(free_slots([], r, MON, MON, LONG_AGO)) == [
        "09:00",
        "09:45",
        "10:30",
        "11:15",
        "12:30",
        "13:15",
        "14:00",
        "14:45",
        "15:30",
        "16:15",
    ]


def test_step_smaller_than_duration() -> None:
    r = rules(60, step=timedelta(minutes=15))
    result = starts(free_slots([], r, MON, MON, LONG_AGO))
    assert result[:3] == ["09:00", "09:15", "09:30"] and result[-1] == "16:00"
    assert len(result) == 29


def test_several_periods_per_day() -> None:
    hours = {0: [(time(9), time(10)), (time(14), time(15, 30))]}
    assert starts(free_slots([], rules(30, hours=hours), MON, MON, LONG_AGO)) == [
        "09:00",
        "09:30",
        "14:00",
        "14:30",
        "15:00",
    ]


def test_period_until_midnight() -> None:
    hours = {0: [(time(22), None)]}
    slots = free_slots([], rules(60, hours=hours), MON, MON, LONG_AGO)
    assert starts(slots) == ["22:00", "23:00"]
    assert slots[-1].end == local(MON + timedelta(days=1), 0)


def test_min_notice() -> None:
    now = local(MON, 10, 10)
    r = rules(30, min_notice=timedelta(minutes=60))
    assert starts(free_slots([], r, MON, MON, now))[:2] == ["11:30", "12:00"]
    # a slot exactly at now + notice is offered
    assert starts(free_slots([], r, MON, MON, local(MON, 10, 30)))[0] == "11:30"
    assert free_slots([], r, MON, MON, local(MON, 17)) == []


@pytest.mark.parametrize(
    ("zone", "before", "after"),
    [
        (AMS, date(2026, 3, 27), date(2026, 3, 30)),
        (AMS, date(2026, 10, 23), date(2026, 10, 26)),
        (NYC, date(2026, 3, 6), date(2026, 3, 9)),
        (NYC, date(2026, 10, 30), date(2026, 11, 2)),
    ],
)
def test_local_hours_survive_dst(zone: ZoneInfo, before: date, after: date) -> None:
    slots = free_slots([], rules(60, zone=zone), before, after, LONG_AGO)
    by_day: dict[date, list[str]] = {}
    for s in slots:
        by_day.setdefault(s.start.astimezone(zone).date(), []).append(
            s.start.astimezone(zone).strftime("%H:%M")
        )
    assert sorted(by_day) == [before, after]  # Friday and Monday, no weekend
    assert by_day[before] == by_day[after] == [f"{h:02d}:00" for h in range(9, 17)]
    offsets = {s.start.astimezone(zone).date(): s.start.astimezone(zone).utcoffset() for s in slots}
    assert offsets[before] != offsets[after]
    first = next(s.start for s in slots if s.start.astimezone(zone).date() == after)
    assert first == local(after, 9, zone=zone)


def test_period_over_the_skipped_hour_is_shorter() -> None:
    # Sunday 2026-03-29 in Amsterdam: 01:00-04:00 local is only two real hours.
    hours = {6: [(time(1), time(4))]}
    day = date(2026, 3, 29)
    slots = free_slots([], rules(60, hours=hours), day, day, LONG_AGO)
    assert [s.start for s in slots] == [
        datetime(2026, 3, 29, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 1, tzinfo=UTC),
    ]


def test_rules_validate() -> None:
    with pytest.raises(ValueError):
        rules(0)
    with pytest.raises(ValueError):
        rules(30, step=timedelta(0))
    with pytest.raises(ValueError):
        rules(30, buffer_before=-M)


def ev(
    uid: str, start: datetime, end: datetime, title: str, transparent: bool = False
) -> EventInstance:
    return EventInstance(uid, start, end, title, transparent)


def test_busy_intervals_pick_meetings_and_merge() -> None:
    instances = [
        ev("m1", local(MON, 9), local(MON, 10), "Meeting"),
        ev("m2", local(MON, 9, 30), local(MON, 10, 30), "Call 333"),
        ev("touch", local(MON, 10, 30), local(MON, 11), "Review"),
        ev("fwd", local(MON, 12), local(MON, 13), "0612345678"),
        ev("ext", local(MON, 12), local(MON, 13), "333"),
        ev("blocked-number", local(MON, 13), local(MON, 14), "0900 1234567"),
        ev("free", local(MON, 14), local(MON, 15), "Focus time", transparent=True),
        ev("empty", local(MON, 15), local(MON, 15), "Reminder"),
        ev("late", local(MON, 16), local(MON, 17), ""),
    ]
    assert busy_intervals(reversed(instances), NL) == [
        (local(MON, 9), local(MON, 11)),
        (local(MON, 16), local(MON, 17)),
    ]


CAL = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:x\r
BEGIN:VEVENT\r
UID:cancelled\r
DTSTAMP:20260320T120000Z\r
DTSTART;TZID=Europe/Amsterdam:20260406T090000\r
DTEND;TZID=Europe/Amsterdam:20260406T100000\r
STATUS:CANCELLED\r
SUMMARY:Meeting\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:transparent\r
DTSTAMP:20260320T120000Z\r
DTSTART;TZID=Europe/Amsterdam:20260406T100000\r
DTEND;TZID=Europe/Amsterdam:20260406T110000\r
TRANSP:TRANSPARENT\r
SUMMARY:Meeting\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:ms-free\r
DTSTAMP:20260320T120000Z\r
DTSTART;TZID=Europe/Amsterdam:20260406T110000\r
DTEND;TZID=Europe/Amsterdam:20260406T120000\r
X-MICROSOFT-CDO-BUSYSTATUS:FREE\r
SUMMARY:Meeting\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:forwarding\r
DTSTAMP:20260320T120000Z\r
DTSTART;TZID=Europe/Amsterdam:20260406T120000\r
DTEND;TZID=Europe/Amsterdam:20260406T130000\r
SUMMARY:+31 6 1234 5678\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:busy\r
DTSTAMP:20260320T120000Z\r
DTSTART;TZID=Europe/Amsterdam:20260406T140000\r
DTEND;TZID=Europe/Amsterdam:20260406T150000\r
SUMMARY:Meeting\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_only_real_meetings_from_a_calendar_are_busy() -> None:
    expansion = expand_calendar(
        parse_calendar(CAL), local(MON, 0), local(MON + timedelta(days=1), 0), AMS
    )
    busy = busy_intervals(expansion.instances, NL)
    assert busy == [(local(MON, 14), local(MON, 15))]
    assert starts(free_slots(busy, rules(60), MON, MON, LONG_AGO)) == [
        "09:00",
        "10:00",
        "11:00",
        "12:00",
        "13:00",
        "15:00",
        "16:00",
    ]


# -- properties ---------------------------------------------------------------------------

DAY0 = date(2026, 3, 26)  # Thursday before the spring DST change


@st.composite
def availability(
    draw: st.DrawFn,
) -> tuple[list[tuple[datetime, datetime]], AvailabilityRules, date, date, datetime]:
    zone = draw(st.sampled_from([AMS, NYC, ZoneInfo("UTC")]))
    first = DAY0 + timedelta(days=draw(st.integers(0, 6)))
    last = first + timedelta(days=draw(st.integers(0, 5)))
    duration = timedelta(minutes=draw(st.sampled_from([15, 30, 45, 60, 90])))
    step = draw(st.one_of(st.none(), st.sampled_from([10, 15, 30, 60]).map(lambda m: m * M)))
    start_h = draw(st.integers(6, 10))
    end_h = draw(st.integers(start_h + 1, 20))
    hours = {
        d: [(time(start_h), time(end_h))] for d in draw(st.sets(st.integers(0, 6), min_size=1))
    }
    breaks = draw(
        st.lists(st.tuples(st.integers(8, 18), st.sampled_from([15, 30, 60])), max_size=2)
    )
    rules_ = AvailabilityRules(
        timezone=zone,
        duration=duration,
        hours=hours,
        breaks=[(time(b), time(b + m // 60, m % 60)) for b, m in breaks],
        step=step,
        buffer_before=draw(st.integers(0, 60)) * M,
        buffer_after=draw(st.integers(0, 60)) * M,
        min_notice=draw(st.integers(0, 3000)) * M,
    )
    base = datetime.combine(first, time(0), tzinfo=UTC)
    events = [
        ev(f"e{n}", base + s * 5 * M, base + (s + length) * 5 * M, title)
        for n, (s, length, title) in enumerate(
            draw(
                st.lists(
                    st.tuples(
                        st.integers(-300, 2000),
                        st.integers(0, 60),
                        st.sampled_from(["Meeting", "333", "0612345678", "Lunch", ""]),
                    ),
                    max_size=30,
                )
            )
        )
    ]
    now = base + draw(st.integers(-2000, 4000)) * M
    return busy_intervals(events, NL), rules_, first, last, now


@settings(max_examples=300, deadline=None)
@given(availability())
def test_free_slots_properties(
    case: tuple[list[tuple[datetime, datetime]], AvailabilityRules, date, date, datetime],
) -> None:
    busy, r, first, last, now = case
    slots = free_slots(busy, r, first, last, now)
    assert [s.start for s in slots] == sorted(s.start for s in slots)
    for a, b in itertools.pairwise(busy):
        assert a[1] < b[0]  # busy_intervals merged them
    for slot in slots:
        assert slot.end - slot.start == r.duration
        assert slot.start >= now + r.min_notice
        lo, hi = slot.start - r.buffer_before, slot.end + r.buffer_after
        assert all(end <= lo or start >= hi for start, end in busy), slot
        ls, le = slot.start.astimezone(r.timezone), slot.end.astimezone(r.timezone)
        assert first <= ls.date() <= last
        periods = r.hours.get(ls.date().weekday(), [])
        assert any(
            datetime.combine(ls.date(), ps, tzinfo=r.timezone) <= ls
            and le <= datetime.combine(ls.date(), pe, tzinfo=r.timezone)
            for ps, pe in periods
            if pe is not None
        ), slot
        for bs, be in r.breaks:
            b0 = datetime.combine(ls.date(), bs, tzinfo=r.timezone)
            b1 = datetime.combine(ls.date(), be or time(0), tzinfo=r.timezone)
            assert le <= b0 or ls >= b1, (slot, bs, be)


@settings(max_examples=200, deadline=None)
@given(availability())
def test_free_slots_offer_every_free_grid_start_when_there_is_no_break(
    case: tuple[list[tuple[datetime, datetime]], AvailabilityRules, date, date, datetime],
) -> None:
    busy, r, first, last, now = case
    r = AvailabilityRules(
        r.timezone, r.duration, r.hours, (), r.step, r.buffer_before, r.buffer_after, r.min_notice
    )
    step = r.step or r.duration
    expected = []
    day = first
    while day <= last:
        for ps, pe in r.hours.get(day.weekday(), []):
            assert pe is not None
            s = datetime.combine(day, ps, tzinfo=r.timezone).astimezone(UTC)
            end = datetime.combine(day, pe, tzinfo=r.timezone).astimezone(UTC)
            while s + r.duration <= end:
                lo, hi = s - r.buffer_before, s + r.duration + r.buffer_after
                if s >= now + r.min_notice and all(e <= lo or b >= hi for b, e in busy):
                    expected.append(s)
                s += step
        day += timedelta(days=1)
    assert [slot.start for slot in free_slots(busy, r, first, last, now)] == expected
