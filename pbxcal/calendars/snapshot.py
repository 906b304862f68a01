"""An iCalendar document ↔ the per-event rows the store keeps.

``split_calendar`` cuts a parsed calendar into one ``StoredEvent`` per VEVENT plus its
VTIMEZONE blocks; ``join_calendar`` puts the rows back together into a calendar the
core can expand. Providers that deliver single events (later: Google, Graph) write the
same rows, so the daemon rebuilds every link's calendar the same way after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import icalendar

from pbxcal.core.ical import parse_calendar
from pbxcal.store import StoredEvent


def split_calendar(calendar: icalendar.Calendar) -> tuple[list[StoredEvent], str, str | None]:
    """(events, VTIMEZONE text, X-WR-TIMEZONE) of a parsed calendar."""
    events = []
    for component in calendar.walk("VEVENT"):
        recurrence = component.get("RECURRENCE-ID")
        recurrence_id = recurrence.to_ical().decode() if recurrence is not None else None
        uid = str(component.get("UID", ""))
        events.append(StoredEvent(uid, recurrence_id, component.to_ical().decode()))
    timezones = "".join(tz.to_ical().decode() for tz in calendar.walk("VTIMEZONE"))
    zone = calendar.get("X-WR-TIMEZONE")
    return events, timezones, str(zone) if zone else None


def join_calendar(
    events: Sequence[StoredEvent], timezones: str, calendar_tz: str | None, *, source: str
) -> icalendar.Calendar:
    """Rebuild a calendar from stored rows (``InputError`` if a row was corrupted)."""
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//store//EN\r\n"
    if calendar_tz:
        head += f"X-WR-TIMEZONE:{calendar_tz}\r\n"
    body = head + timezones + "".join(e.ical for e in events) + "END:VCALENDAR\r\n"
    return parse_calendar(body, source=source)
