"""Recurring events: what a repeat rule costs before it is expanded, and lazy expansion.

``ical.expand_calendar`` hands every group of components that share a UID and repeat
(RRULE, RDATE, EXDATE, RECURRENCE-ID overrides) to this module:

* ``rule_problem(components)`` – a rule that can never be expanded (``INTERVAL=0``,
  no ``FREQ``), in plain words, or ``None``;
* ``rule_work(components, until)`` – an upper estimate of how many occurrences the
  expander generates from DTSTART up to ``until`` (dateutil always starts counting at
  DTSTART), so an event with ``FREQ=SECONDLY`` and no end is refused before a single
  occurrence is made;
* ``occurrences(components, start, end, calendar_zone)`` – a generator over the
  occurrences in ``[start, end]`` (recurring-ical-events, one series at a time), so the
  caller stops at its cap without a list of everything ever being built.

Pure: no I/O, no clock. Start reading at ``occurrences``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
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
    components: Sequence[Any], start: datetime, end: datetime, calendar_zone: str | None
) -> Iterator[Any]:
    """The occurrences of ``components`` (one UID) in ``[start, end]``, one by one.

    Each is a VEVENT component with that occurrence's DTSTART/DTEND. Floating and
    all-day times follow ``calendar_zone`` (a checked X-WR-TIMEZONE) when given.
    """
    calendar = icalendar.Calendar()
    if calendar_zone is not None:
        calendar.add("X-WR-TIMEZONE", calendar_zone)
    for component in components:
        calendar.add_component(component)
    standard = x_wr_timezone.to_standard(calendar) if calendar_zone is not None else calendar
    query = recurring_ical_events.of(standard)
    for series in query.series:
        for occurrence in series.between(start, end):
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
