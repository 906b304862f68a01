"""One VEVENT → one ``EventInstance`` or a plain-words problem (pure, no I/O of our own).

The pieces ``ical.expand_calendar`` uses on each event:

* ``safe_zone(name)`` – a zone name from a calendar becomes a ``ZoneInfo`` or ``None``;
  names like "Europe" (a directory), 256-character names or path tricks never raise;
* ``event_problem(component)`` – why an event cannot be expanded at all (no DTSTART,
  a TZID that names no zone, ends before it starts, dates outside the years
  1900-8999, an absurd DURATION), or ``None``;
* ``instance_of(component, zone, owners)`` – an event (or one occurrence of it, as
  recurring-ical-events hands it over) read into an ``EventInstance`` in UTC.

icalendar looks up every ``TZID=`` while it parses, and its zoneinfo provider lets
``IsADirectoryError``/``OSError`` escape for such names, losing the whole document for
one event; importing this module installs a provider that answers "unknown zone"
instead, and ``event_problem`` then skips that one event. That is the only
process-wide effect; nothing here reads files except through ``ZoneInfo``.
Start reading at ``instance_of``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from icalendar.timezone import tzp
from icalendar.timezone.zoneinfo import ZONEINFO

#: Years an event may start or end in (also what ``pbxcal plan`` accepts for --from/--to).
FIRST_YEAR = 1900
LAST_YEAR = 8999
#: What a zone name may look like before ``ZoneInfo`` is even asked.
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
_MAX_ZONE_NAME = 64


@dataclass(frozen=True)
class EventInstance:
    """One occurrence of a calendar event, times in UTC, ``start <= end``."""

    uid: str
    start: datetime
    end: datetime
    title: str
    transparent: bool = False
    all_day: bool = False


def safe_zone(name: object) -> ZoneInfo | None:
    """The IANA zone called ``name``, or ``None`` when there is no such zone."""
    text = str(name).strip()
    if len(text) > _MAX_ZONE_NAME or _ZONE_NAME.fullmatch(text) is None:
        return None
    try:
        return ZoneInfo(text)
    except (ValueError, OSError, UnicodeError):  # ZoneInfoNotFoundError is a KeyError
        return None
    except KeyError:
        return None


class _SafeZoneinfo(ZONEINFO):
    """icalendar's zoneinfo provider, answering ``None`` for every name it cannot load."""

    def timezone(self, name: str) -> tzinfo | None:
        return safe_zone(name)


tzp.use(_SafeZoneinfo())


def event_problem(component: Any) -> str | None:
    """Why ``component`` (a VEVENT) cannot be expanded, in plain words; else ``None``."""
    errors = getattr(component, "errors", None)
    if errors:
        return one_line("; ".join(f"{name}: {message}" for name, message in errors))
    try:
        raw_start = component.get("DTSTART")
        if raw_start is None:
            return "event has no DTSTART"
        start = raw_start.dt
        if not isinstance(start, date):
            return "DTSTART is not a date or date-time"
        unknown = _unknown_zone(raw_start) or _unknown_zone(component.get("DTEND"))
        if unknown is not None:
            return f"the event's time zone {unknown} does not exist"
        if not FIRST_YEAR <= start.year <= LAST_YEAR:
            return f"event starts in the year {start.year} (only {FIRST_YEAR}-{LAST_YEAR})"
        raw_end = component.get("DTEND")
        if raw_end is not None:
            end = raw_end.dt
            if not isinstance(end, date) or isinstance(end, datetime) != isinstance(
                start, datetime
            ):
                return "DTEND is not of the same kind as DTSTART"
            if isinstance(start, datetime) and (start.tzinfo is None) != (
                getattr(end, "tzinfo", None) is None
            ):
                return "DTSTART and DTEND mix floating and zoned times"
            if end < start:
                return "event ends before it starts"
        else:
            end = end_value(component, start)
        if not FIRST_YEAR <= end.year <= LAST_YEAR:
            return f"event ends in the year {end.year} (only {FIRST_YEAR}-{LAST_YEAR})"
        _to_utc(start, UTC)
        _to_utc(end, UTC)
    except OverflowError:
        return f"event lasts too long (beyond the year {LAST_YEAR})"
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return one_line(exc)
    return None


def _unknown_zone(prop: Any) -> str | None:
    """The TZID ``prop`` names when no zone of that name was found (it reads as naive)."""
    if prop is None or not isinstance(getattr(prop, "dt", None), datetime):
        return None
    name = getattr(prop, "params", {}).get("TZID")
    if not name or prop.dt.tzinfo is not None:
        return None
    text = repr(str(name))
    return text if len(text) <= 40 else text[:37] + "..."


def instance_of(component: Any, zone: tzinfo, owners: set[str]) -> EventInstance | None:
    """``component`` as an instance in UTC; ``None`` for what is not a forwarding/meeting.

    Cancelled events and events an owner declined are ``None``. Raises ``ValueError``
    (or ``OverflowError``, ``TypeError``, ``KeyError``, ``AttributeError``) for an
    event that cannot be read; the caller skips it with that reason.
    """
    if component.name != "VEVENT":
        return None
    if str(component.get("STATUS", "")).upper() == "CANCELLED":
        return None
    if owners and _declined_by(component, owners):
        return None
    raw_start = component.get("DTSTART")
    if raw_start is None:
        raise ValueError("event has no DTSTART")
    start_value = raw_start.dt
    all_day = not isinstance(start_value, datetime)
    start = _to_utc(start_value, zone)
    end = _to_utc(end_value(component, start_value), zone)
    if end < start:
        raise ValueError("event ends before it starts")
    title = str(component.get("SUMMARY", ""))
    transparent = _is_transparent(component)
    return EventInstance(str(component.get("UID", "")), start, end, title, transparent, all_day)


def end_value(component: Any, start_value: date) -> date:
    """DTEND, else DTSTART + DURATION, else the RFC 5545 default end."""
    if component.get("DTEND") is not None:
        end: date = component["DTEND"].dt
        return end
    if component.get("DURATION") is not None:
        duration: timedelta = component["DURATION"].dt
        return start_value + duration
    if isinstance(start_value, datetime):
        return start_value
    return start_value + timedelta(days=1)


def one_line(value: object) -> str:
    """``value`` as text on one line, at most 300 characters."""
    return " ".join(str(value).split())[:300]


def _to_utc(value: date, zone: tzinfo) -> datetime:
    if isinstance(value, datetime):
        local = value if value.tzinfo is not None else value.replace(tzinfo=zone)
    else:
        local = datetime.combine(value, time(0), tzinfo=zone)
    return local.astimezone(UTC)


def _is_transparent(component: Any) -> bool:
    if str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT":
        return True
    busy = str(component.get("X-MICROSOFT-CDO-BUSYSTATUS", "")).upper()
    return busy == "FREE"


def _declined_by(component: Any, owners: set[str]) -> bool:
    attendees = component.get("ATTENDEE")
    if attendees is None:
        return False
    if not isinstance(attendees, list):
        attendees = [attendees]
    for attendee in attendees:
        email = str(attendee).lower().removeprefix("mailto:")
        if email in owners and str(attendee.params.get("PARTSTAT", "")).upper() == "DECLINED":
            return True
    return False
