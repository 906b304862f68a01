"""Recurring events: what a repeat rule costs before it is expanded, and lazy expansion.

``ical.expand_calendar`` hands every group of components that share a UID and repeat
(RRULE, RDATE, EXDATE, RECURRENCE-ID overrides) to this module:

* ``rule_problem(components)`` – a rule that can never be expanded (``INTERVAL=0``,
  no ``FREQ``), in plain words, or ``None``;
* ``rule_work(components, until)`` – an upper estimate of how many occurrences the
  expander generates from DTSTART up to ``until`` (dateutil always starts counting at
  DTSTART), so an event with ``FREQ=SECONDLY`` and no end is refused before a single
  occurrence is made;
* ``occurrences(components, start, end, calendar_zone, budget)`` – a generator over
  the occurrences in ``[start, end]`` (recurring-ical-events, one series at a time), so
  the caller stops at its cap without a list of everything ever being built.

dateutil looks for the first occurrence after the range before it stops, and a rule
whose filters never match again (``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30``, a BYSETPOS
past the set, an INTERVAL that never meets its BYMONTH) makes it walk to the year 9999
— seconds per event, inside one library call. Rules with such filters therefore run
under a ``StepBudget``: a per-thread profile hook counts the interpreter's calls while
the expander works on that event and raises ``RuleTooCostly`` when they run out.
Rules that always match again within a year run without it; their cost is what
``rule_work`` estimates.

Pure: no I/O, no clock. Start reading at ``occurrences``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from types import FrameType
from typing import Any

import icalendar
import recurring_ical_events
import x_wr_timezone

#: Length of one period of each FREQ (the shortest, for months and years), and its rank.
_PERIOD: dict[str, tuple[timedelta, int]] = {
    "SECONDLY": (timedelta(seconds=1), 0),
    "MINUTELY": (timedelta(minutes=1), 1),
    "HOURLY": (timedelta(hours=1), 2),
    "DAILY": (timedelta(days=1), 3),
    "WEEKLY": (timedelta(weeks=1), 4),
    "MONTHLY": (timedelta(days=28), 5),
    "YEARLY": (timedelta(days=365), 6),
}
#: BY parts that add occurrences within one period, from the rank above which they
#: expand, with how many occurrences one value can add per period at most.
_EXPANDING: dict[str, tuple[int, dict[int, int]]] = {
    "BYSECOND": (0, {}),
    "BYMINUTE": (1, {}),
    "BYHOUR": (2, {}),
    "BYDAY": (3, {5: 5, 6: 53}),
    "BYMONTHDAY": (4, {6: 12}),
    "BYYEARDAY": (5, {}),
    "BYWEEKNO": (5, {6: 7}),
    "BYMONTH": (5, {}),
}


class RuleTooCostly(Exception):
    """The expander used up an event's ``StepBudget`` (its rule matches too rarely)."""


class StepBudget:
    """Interpreter calls the expander may make for filtered rules.

    An event may use ``per_occurrence`` calls for each occurrence ``rule_work``
    estimated (its natural cost up to the end of the range), plus an ``allowance`` to
    find the first occurrence after the range (where a rule that never matches again
    spins). What events use beyond their estimate comes out of the calendar's one
    ``total`` allowance, so many rare rules together are bounded too.
    """

    def __init__(self, allowance: int, total: int, per_occurrence: int = 50) -> None:
        self.allowance = allowance
        self.total = total
        self.per_occurrence = per_occurrence
        self.overrun = 0

    def exhausted(self) -> bool:
        """True when the calendar's allowance is spent."""
        return self.overrun >= self.total

    def limit_for(self, work: int) -> int:
        """Calls an event with estimated ``work`` may make."""
        left = max(0, min(self.allowance, self.total - self.overrun))
        return self.per_occurrence * work + left

    def settle(self, work: int, used: int) -> None:
        """Book what an event used beyond its estimate against the calendar."""
        self.overrun += max(0, used - self.per_occurrence * work)


def rule_problem(components: Sequence[Any]) -> str | None:
    """Why the repeat rules of ``components`` can never be expanded, or ``None``."""
    for component in components:
        for rule in _rules(component):
            freq = rule.get("FREQ")
            if not freq or str(freq[0]).upper() not in _PERIOD:
                return "the repeat rule (RRULE) has no valid FREQ"
            interval = rule.get("INTERVAL")
            if interval and not (isinstance(interval[0], int) and interval[0] >= 1):
                return "the repeat rule (RRULE) has an INTERVAL below 1"
    return None


def rule_work(components: Sequence[Any], until: datetime) -> int:
    """Upper estimate of the occurrences generated from DTSTART up to ``until``."""
    total = 0
    for component in components:
        start = _as_utc(component["DTSTART"].dt)
        total += len(_rdates(component)) + 1
        for rule in _rules(component):
            total += _rule_work(rule, start, until)
    return total


def occurrences(
    components: Sequence[Any],
    start: datetime,
    end: datetime,
    calendar_zone: str | None,
    budget: StepBudget | None = None,
    work: int = 0,
) -> Iterator[Any]:
    """The occurrences of ``components`` (one UID) in ``[start, end]``, one by one.

    Each is a VEVENT component with that occurrence's DTSTART/DTEND. Floating and
    all-day times follow ``calendar_zone`` (a checked X-WR-TIMEZONE) when given. With
    ``budget``, rules with filters run counted against ``budget.limit_for(work)``
    (``RuleTooCostly`` when it runs out), ``work`` being ``rule_work``'s estimate.
    """
    found = _between(_series(components, calendar_zone), start, end)
    if budget is None or not any(_filters(rule) for c in components for rule in _rules(c)):
        yield from found
        return
    limit = budget.limit_for(work)
    used = 0
    try:
        while True:
            steps = _Steps(limit - used)
            previous = sys.getprofile()
            sys.setprofile(steps)
            try:
                occurrence = next(found, None)
            finally:
                sys.setprofile(previous)
                used += steps.count
            if occurrence is None:
                return
            yield occurrence
    finally:
        budget.settle(work, used)


class _Steps:
    """A profile hook that counts calls and raises ``RuleTooCostly`` past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        self.count += 1
        if self.count > self.limit:
            raise RuleTooCostly


#: BY parts that never filter: each period of a FREQ of these ranks has an occurrence
#: for every value (BYDAY only for WEEKLY).
_NEVER_FILTERS: dict[str, tuple[int, ...]] = {
    "BYSECOND": (1, 2, 3, 4, 5, 6),
    "BYMINUTE": (2, 3, 4, 5, 6),
    "BYHOUR": (3, 4, 5, 6),
    "BYDAY": (4,),
}


def _filters(rule: Any) -> bool:
    """True when ``rule`` may go without an occurrence for very long (so dateutil spins).

    With INTERVAL 1, a single filter always matches again within a year (a weekday,
    a month, a day of the month, an hour); only combinations (BYMONTH with BYMONTHDAY:
    30 February), set positions, year days, week numbers and "5th Monday" filters can
    fail for ever. With a larger INTERVAL any filter can miss every period.
    """
    _, rank = _PERIOD.get(str(rule["FREQ"][0]).upper(), (None, 0))
    names = {name for name in rule if name.startswith("BY")}
    filtering = {name for name in names if rank not in _NEVER_FILTERS.get(name, ())}
    if not filtering:
        return False
    interval = rule.get("INTERVAL") or [1]
    if interval[0] != 1 or names & {"BYSETPOS", "BYYEARDAY", "BYWEEKNO"}:
        return True
    if {"BYMONTH", "BYMONTHDAY"} <= names:
        return True
    return "BYDAY" in filtering and any(
        getattr(day, "relative", None) for day in rule.get("BYDAY", [])
    )


def _series(components: Sequence[Any], calendar_zone: str | None) -> list[Any]:
    """recurring-ical-events' series of ``components`` (setting up, not expanding yet)."""
    calendar = icalendar.Calendar()
    if calendar_zone is not None:
        calendar.add("X-WR-TIMEZONE", calendar_zone)
    for component in components:
        calendar.add_component(component)
    standard = x_wr_timezone.to_standard(calendar) if calendar_zone is not None else calendar
    return list(recurring_ical_events.of(standard).series)


def _between(series: list[Any], start: datetime, end: datetime) -> Iterator[Any]:
    for one in series:
        for occurrence in one.between(start, end):
            yield occurrence.as_component(False)


def _rules(component: Any) -> list[Any]:
    rules = component.get("RRULE")
    if rules is None:
        return []
    return list(rules) if isinstance(rules, list) else [rules]


def _rdates(component: Any) -> list[Any]:
    values = component.get("RDATE")
    if values is None:
        return []
    properties = values if isinstance(values, list) else [values]
    return [dt for prop in properties for dt in getattr(prop, "dts", [])]


def _rule_work(rule: Any, start: datetime, until: datetime) -> int:
    freq = str(rule["FREQ"][0]).upper()
    period, rank = _PERIOD[freq]
    interval = rule.get("INTERVAL") or [1]
    rule_until = rule.get("UNTIL")
    stop = min(until, _as_utc(rule_until[0])) if rule_until else until
    if stop <= start:
        return 1
    periods = math.ceil((stop - start) / (period * int(interval[0]))) + 1
    factor = 1
    for name, (above, extra) in _EXPANDING.items():
        values = rule.get(name)
        if values and rank > above:
            factor *= len(values) * extra.get(rank, 1)
    work: int = periods * factor
    count = rule.get("COUNT")
    if count and factor == 1 and not any(name.startswith("BY") for name in rule):
        work = min(work, int(count[0]))
    return work


def _as_utc(value: date) -> datetime:
    """``value`` as an aware UTC datetime (naive and dates read as UTC: an estimate)."""
    try:
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return datetime.combine(value, time(0), tzinfo=UTC)
    except OverflowError:  # UNTIL=99991231T235959 in a zone east of UTC
        return (
            datetime.max.replace(tzinfo=UTC) if value.year > 1 else datetime.min.replace(tzinfo=UTC)
        )
