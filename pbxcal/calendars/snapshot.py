"""An iCalendar document ↔ the per-event rows the store keeps.

``split_calendar`` cuts a parsed calendar into one ``StoredEvent`` per VEVENT plus its
VTIMEZONE blocks; ``join_calendar`` puts the rows back together into a calendar the
core can expand. Providers that deliver single events (later: Google, Graph) write the
same rows, so the daemon rebuilds every link's calendar the same way after a restart.

Rows are keyed by (UID, RECURRENCE-ID). An event without a UID gets a stable one made
from its content (``pbxcal-`` + a hash), and of two events with the same key the last
one wins, as a calendar client would show it — so no calendar that ``pbxcal plan``
accepts can be refused by the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import icalendar

from pbxcal.core.ical import parse_calendar
from pbxcal.store import StoredEvent


def split_calendar(calendar: icalendar.Calendar) -> tuple[list[StoredEvent], str, str | None]:
    """(events, VTIMEZONE text, X-WR-TIMEZONE) of a parsed calendar."""
    events: dict[tuple[str, str | None], StoredEvent] = {}
    for component in calendar.walk("VEVENT"):
        recurrence = component.get("RECURRENCE-ID")
        recurrence_id = recurrence.to_ical().decode() if recurrence is not None else None
        text = component.to_ical().decode()
        uid = str(component.get("UID", "")).strip()
        if not uid:
            uid = "pbxcal-" + hashlib.sha256(text.encode()).hexdigest()[:24]
            component["UID"] = uid
            text = component.to_ical().decode()
        events.pop((uid, recurrence_id), None)  # the last one wins, in document order
        events[(uid, recurrence_id)] = StoredEvent(uid, recurrence_id, text)
    timezones = "".join(tz.to_ical().decode() for tz in calendar.walk("VTIMEZONE"))
    zone = calendar.get("X-WR-TIMEZONE")
    return list(events.values()), timezones, str(zone) if zone else None


def join_calendar(
    events: Sequence[StoredEvent], timezones: str, calendar_tz: str | None, *, source: str
) -> icalendar.Calendar:
    """Rebuild a calendar from stored rows (``InputError`` if a row was corrupted)."""
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//store//EN\r\n"
    if calendar_tz:
        head += f"X-WR-TIMEZONE:{calendar_tz}\r\n"
    body = head + timezones + "".join(e.ical for e in events) + "END:VCALENDAR\r\n"
    return parse_calendar(body, source=source)
