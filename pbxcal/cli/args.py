"""Parsing of the command line's value formats (times, dates, working hours).

Each parser raises ``argparse.ArgumentTypeError`` with a message that says what was
expected, so argparse turns it into a one-line error.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # the core pulls in icalendar: not at start-up
    from pbxcal.core.slots import LocalPeriod

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_PERIOD = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]{1,64}(/[A-Za-z0-9_+-]{1,64}){0,3}")
_LINK_ID = re.compile(r"[1-9][0-9]{0,17}")


def zone(value: str) -> ZoneInfo:
    """An IANA zone; "Europe" (a directory), 256-character names and paths are refused."""
    problem = argparse.ArgumentTypeError(
        f"{_show(value)} is not an IANA time zone like Europe/Amsterdam"
    )
    if _ZONE_NAME.fullmatch(value) is None:
        raise problem
    try:
        return ZoneInfo(value)
    except (KeyError, ValueError, OSError, UnicodeError):  # ZoneInfoNotFoundError: KeyError
        raise problem from None


def link_id(value: str) -> int:
    """A link id: a positive integer that fits the store's 64-bit column."""
    if _LINK_ID.fullmatch(value.strip()) is None:
        raise argparse.ArgumentTypeError(f"{_show(value)} is not a link id (see: links list)")
    return int(value)


def _show(value: str) -> str:
    from pbxcal.core.redact import printable

    text = printable(value)
    return repr(text if len(text) <= 60 else text[:60] + "…")


#: Calendars and time zones make no sense outside these years (and overflow near 1/9999).
_YEARS = range(1900, 9000)


def moment(value: str) -> datetime | date:
    """An ISO 8601 date or date-time; naive values are resolved later in a zone."""
    try:
        if "T" not in value and " " not in value and len(value) == 10:
            result: datetime | date = date.fromisoformat(value)
        else:
            result = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time like 2026-03-30T09:00:00Z or 2026-03-30"
        ) from exc
    if result.year not in _YEARS:
        raise argparse.ArgumentTypeError(f"{value!r}: the year must be 1900-8999")
    return result


def resolve(value: datetime | date, zone_: tzinfo) -> datetime:
    """An aware UTC datetime; dates are local midnight, naive times local in ``zone_``."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone_)
    return value.astimezone(UTC)


def day(value: str) -> date:
    try:
        result = date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-03-30") from exc
    if result.year not in _YEARS:
        raise argparse.ArgumentTypeError(f"{value!r}: the year must be 1900-8999")
    return result


def minutes(value: str) -> timedelta:
    if not value.isdigit() or int(value) > 7 * 24 * 60:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of minutes (0-10080)")
    return timedelta(minutes=int(value))


def positive_minutes(value: str) -> timedelta:
    result = minutes(value)
    if result <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1 minute")
    return result


def period(value: str) -> LocalPeriod:
    """``HH:MM-HH:MM``; the end may be 24:00."""
    match = _PERIOD.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a period like 13:00-14:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise argparse.ArgumentTypeError(f"{value!r} has an impossible time")
    start = time(h1, m1)
    end = None if h2 == 24 else time(h2, m2)
    if end is not None and end <= start:
        raise argparse.ArgumentTypeError(f"{value!r} ends before it starts")
    return (start, end)


def hours(value: str) -> dict[int, list[LocalPeriod]]:
    """``DAYS PERIODS``: "mon-fri 09:00-17:00", "sat,sun 10:00-12:00,13:00-15:00"."""
    parts = value.strip().lower().split()
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not working hours like 'mon-fri 09:00-17:00'"
        )
    days: set[int] = set()
    for item in parts[0].split(","):
        first, _, last = item.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a weekday or range of mon, tue, wed, thu, fri, sat, sun"
            )
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    periods = [period(p) for p in parts[1].split(",")]
    return {d: list(periods) for d in sorted(days)}
