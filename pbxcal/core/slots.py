"""Busy time + working hours → bookable slots (the heart of ``pbxcal slots``).

``free_slots(busy, rules, first_day, last_day, now)`` offers a slot ``[s, s+duration)``
when ``[s - buffer_before, s + duration + buffer_after)`` touches no busy interval, the
slot lies inside working hours and outside breaks, and ``s >= now + min_notice``.

Working hours and breaks are local wall-clock times on each local date (so 09:00 stays
09:00 across a DST change). Buffers apply around busy time, not at the edges of the
working day. Slot starts step by ``step`` from the start of each working period, where
a break splits a working period in two (so the first slot after lunch starts when lunch
ends). ``busy_intervals`` picks the busy time out of calendar instances.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Rejection, TitleParser

#: A local wall-clock period on one day, ``start < end`` (``end`` may be 24:00 as None).
LocalPeriod = tuple[time, time | None]


@dataclass(frozen=True)
class AvailabilityRules:
    """When an agent can be booked. ``hours`` maps weekday (0 = Monday) to periods."""

    timezone: tzinfo
    duration: timedelta
    hours: Mapping[int, Sequence[LocalPeriod]]
    breaks: Sequence[LocalPeriod] = ()
    step: timedelta | None = None
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0):
            raise ValueError("duration must be positive")
        if self.step is not None and self.step <= timedelta(0):
            raise ValueError("step must be positive")
        if min(self.buffer_before, self.buffer_after, self.min_notice) < timedelta(0):
            raise ValueError("buffers and notice must not be negative")


@dataclass(frozen=True)
class Slot:
    """A bookable slot, UTC."""

    start: datetime
    end: datetime


def busy_intervals(
    instances: Iterable[EventInstance], policy: NumberPolicy
) -> list[tuple[datetime, datetime]]:
    """Busy time: opaque instances that are not forwarding appointments, merged."""
    parser = TitleParser(policy)
    spans = sorted(
        (i.start, i.end)
        for i in instances
        if not i.transparent and i.end > i.start and _is_meeting(i.title, parser)
    )
    merged: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _is_meeting(title: str, parser: TitleParser) -> bool:
    """A title that reads as a phone number or extension is routing, not a meeting."""
    parsed = parser.parse(title)
    return isinstance(parsed, Rejection) and parsed.reason == Reason.NOT_A_NUMBER


def free_slots(
    busy: Sequence[tuple[datetime, datetime]],
    rules: AvailabilityRules,
    first_day: date,
    last_day: date,
    now: datetime,
) -> list[Slot]:
    """Bookable slots on the local dates ``first_day`` .. ``last_day`` inclusive.

    ``busy`` must be sorted and merged (as ``busy_intervals`` returns it).
    """
    earliest = now + rules.min_notice
    step = rules.step or rules.duration
    ends = [end for _, end in busy]
    slots: list[Slot] = []
    day = first_day
    while day <= last_day:
        for period_start, period_end in _working_periods(day, rules):
            start = period_start
            while start + rules.duration <= period_end:
                if start >= earliest and _is_free(start, rules, busy, ends):
                    slots.append(Slot(start, start + rules.duration))
                start += step
        day += timedelta(days=1)
    return slots


def _is_free(
    start: datetime,
    rules: AvailabilityRules,
    busy: Sequence[tuple[datetime, datetime]],
    ends: Sequence[datetime],
) -> bool:
    lo = start - rules.buffer_before
    hi = start + rules.duration + rules.buffer_after
    # the first busy interval that ends after lo is the only one that can touch [lo, hi)
    index = bisect.bisect_right(ends, lo)
    return index >= len(busy) or busy[index][0] >= hi


def _working_periods(day: date, rules: AvailabilityRules) -> list[tuple[datetime, datetime]]:
    periods = [
        _local_span(day, start, end, rules.timezone)
        for start, end in rules.hours.get(day.weekday(), ())
    ]
    for break_start, break_end in rules.breaks:
        cut_start, cut_end = _local_span(day, break_start, break_end, rules.timezone)
        periods = [piece for p in periods for piece in _subtract(p, cut_start, cut_end)]
    return sorted(p for p in periods if p[0] < p[1])


def _local_span(
    day: date, start: time, end: time | None, zone: tzinfo
) -> tuple[datetime, datetime]:
    local_start = datetime.combine(day, start, tzinfo=zone)
    if end is None:
        local_end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    else:
        local_end = datetime.combine(day, end, tzinfo=zone)
    return local_start.astimezone(UTC), local_end.astimezone(UTC)


def _subtract(
    period: tuple[datetime, datetime], cut_start: datetime, cut_end: datetime
) -> list[tuple[datetime, datetime]]:
    start, end = period
    if cut_end <= start or cut_start >= end:
        return [period]
    return [p for p in ((start, cut_start), (cut_end, end)) if p[0] < p[1]]
