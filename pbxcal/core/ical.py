"""iCalendar data → concrete event instances in a time range (pure: bytes in, values out).

``parse_calendar(data)`` turns bytes into an ``icalendar.Calendar`` (``InputError`` on
garbage). ``expand_calendar(calendar, start, end, default_tz)`` expands recurrences
ourselves (never trusting a server's expansion) with ``recurring-ical-events``: RRULE,
RDATE, EXDATE, RECURRENCE-ID overrides and RANGE=THISANDFUTURE. It returns every
instance that overlaps ``[start, end)`` with its times in UTC:

* all-day events are whole local days in the calendar's zone (a 25-hour day on the DST
  change stays 25 hours); floating times are read in the calendar's zone;
* the calendar's zone is its ``X-WR-TIMEZONE`` if any, else ``default_tz``;
* DURATION instead of DTEND, and Outlook's Windows zone names, are understood;
* cancelled events and cancelled instances are dropped, and so are events the owner
  (one of ``owner_emails``) declined;
* an event that cannot be read is reported in ``Expansion.skipped``, never raised, so
  one bad entry does not hide the rest of the calendar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
import recurring_ical_events
import x_wr_timezone

from pbxcal.errors import InputError

#: How far around the requested range we ask the expander, so that floating and
#: all-day instances whose zone shifts them across the edge are not missed.
_EXPANSION_MARGIN = timedelta(days=2)


@dataclass(frozen=True)
class EventInstance:
    """One occurrence of a calendar event, times in UTC, ``start <= end``."""

    uid: str
    start: datetime
    end: datetime
    title: str
    transparent: bool = False
    all_day: bool = False


@dataclass(frozen=True)
class SkippedEvent:
    """An event that could not be read, with a one-line reason."""

    uid: str
    detail: str


@dataclass(frozen=True)
class Expansion:
    """The result of expanding one calendar over a range."""

    instances: list[EventInstance] = field(default_factory=list)
    skipped: list[SkippedEvent] = field(default_factory=list)


def parse_calendar(data: bytes | str, *, source: str = "calendar") -> icalendar.Calendar:
    """Parse iCalendar data; raise ``InputError`` naming ``source`` when it is not one."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise InputError(f"{source}: not valid iCalendar data: {_one_line(exc)}") from exc
    if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
        raise InputError(f"{source}: not valid iCalendar data: no VCALENDAR")
    return calendar


def calendar_timezone(calendar: icalendar.Calendar) -> ZoneInfo | None:
    """The zone the calendar names for itself (``X-WR-TIMEZONE``), if it is a real one."""
    name = calendar.get("X-WR-TIMEZONE")
    if not name:
        return None
    try:
        return ZoneInfo(str(name).strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


def expand_calendar(
    calendar: icalendar.Calendar,
    start: datetime,
    end: datetime,
    default_tz: tzinfo,
    *,
    owner_emails: Iterable[str] = (),
) -> Expansion:
    """Every instance of every event in ``calendar`` that overlaps ``[start, end)``."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    zone = calendar_timezone(calendar) or default_tz
    owners = {e.lower().removeprefix("mailto:") for e in owner_emails}
    usable, skipped = _usable_parts(calendar)
    try:
        standard = x_wr_timezone.to_standard(usable)
        components = recurring_ical_events.of(standard, skip_bad_series=True).between(
            (start - _EXPANSION_MARGIN).astimezone(zone),
            (end + _EXPANSION_MARGIN).astimezone(zone),
        )
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds on bad data
        return Expansion([], [*skipped, SkippedEvent("*", f"cannot expand: {_one_line(exc)}")])
    instances: list[EventInstance] = []
    for component in components:
        try:
            instance = _instance(component, zone, owners)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            uid = str(component.get("UID", "?"))
            skipped.append(SkippedEvent(uid, _one_line(exc)))
            continue
        if instance is not None and instance.end > start and instance.start < end:
            instances.append(instance)
    instances.sort(key=lambda i: (i.start, i.end, i.uid))
    return Expansion(instances, skipped)


def _instance(component: Any, zone: tzinfo, owners: set[str]) -> EventInstance | None:
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
    end = _to_utc(_end_value(component, start_value), zone)
    if end < start:
        raise ValueError("event ends before it starts")
    title = str(component.get("SUMMARY", ""))
    transparent = _is_transparent(component)
    return EventInstance(str(component.get("UID", "")), start, end, title, transparent, all_day)


def _end_value(component: Any, start_value: date) -> date:
    if component.get("DTEND") is not None:
        end_value: date = component["DTEND"].dt
        return end_value
    if component.get("DURATION") is not None:
        duration: timedelta = component["DURATION"].dt
        return start_value + duration
    if isinstance(start_value, datetime):
        return start_value
    return start_value + timedelta(days=1)


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


def _usable_parts(calendar: icalendar.Calendar) -> tuple[icalendar.Calendar, list[SkippedEvent]]:
    """A copy of ``calendar`` without the events that cannot be expanded, and why.

    The expander would raise on an event without a readable DTSTART (losing the whole
    calendar), silently swap a DTEND that lies before DTSTART, and fail on an unknown
    X-WR-TIMEZONE; such events are left out and reported, the zone is dropped.
    """
    usable = icalendar.Calendar()
    for name, value in calendar.property_items(recursive=False):
        if name not in ("BEGIN", "END") and not (
            name == "X-WR-TIMEZONE" and calendar_timezone(calendar) is None
        ):
            usable.add(name, value, encode=False)
    skipped = []
    for component in calendar.subcomponents:
        problem = _event_problem(component) if component.name == "VEVENT" else None
        if problem is None:
            usable.add_component(component)
        else:
            skipped.append(SkippedEvent(str(component.get("UID", "?")), problem))
    return usable, skipped


def _event_problem(component: Any) -> str | None:
    errors = getattr(component, "errors", None)
    if errors:
        return _one_line("; ".join(f"{name}: {message}" for name, message in errors))
    try:
        raw_start = component.get("DTSTART")
        if raw_start is None:
            return "event has no DTSTART"
        start = raw_start.dt
        if not isinstance(start, date):
            return "DTSTART is not a date or date-time"
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
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return _one_line(exc)
    return None


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
