"""One CalDAV calendar object resource → the store's VEVENT rows (pure).

A calendar object (RFC 4791 §4.1) is one VCALENDAR holding every VEVENT of one UID: the
master of a series and its overrides (each with a RECURRENCE-ID), plus the VTIMEZONE
blocks they use. ``read_object(text, where)`` turns it into one ``EventRow`` per VEVENT,
with RECURRENCE-ID kept as iCalendar text *with* its parameters
(``TZID=Europe/Amsterdam:20261025T090000``), and the VTIMEZONE blocks by TZID. Objects
without a VEVENT (tasks, journals) give no rows. The recurrence is never expanded here:
the core does that for every provider the same way.

Must not do I/O or raise anything but ``CalendarError`` (whose message names where the
object came from, never its content). Start reading at ``read_object``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import icalendar

from pbxcal.calendars.changes import EventRow
from pbxcal.errors import CalendarError

__all__ = ["CalendarObject", "read_object", "recurrence_id_text"]


@dataclass(frozen=True)
class CalendarObject:
    """The rows of one calendar object resource.

    ``uid`` is ``None`` for an object without VEVENTs; ``overrides`` are the
    RECURRENCE-IDs of its overridden instances; ``timezones`` maps TZID to the
    VTIMEZONE block (CRLF text) the object carried.
    """

    uid: str | None
    rows: tuple[EventRow, ...] = ()
    overrides: tuple[str, ...] = ()
    timezones: dict[str, str] = field(default_factory=dict)


def recurrence_id_text(prop: Any) -> str:
    """A RECURRENCE-ID property as ``PARAMS:VALUE`` text (``VALUE`` alone without params)."""
    value: str = prop.to_ical().decode()
    params = getattr(prop, "params", None)
    head = params.to_ical().decode() if params else ""
    return f"{head}:{value}" if head else value


def read_object(text: str, where: str) -> CalendarObject:
    """Rows of one calendar object; ``CalendarError`` naming ``where`` if it is not one."""
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except Exception:  # noqa: BLE001 - icalendar raises many kinds; its text holds the data
        raise CalendarError(f"{where}: not valid iCalendar data") from None
    if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
        raise CalendarError(f"{where}: not valid iCalendar data (no VCALENDAR)")
    try:
        return _rows(calendar, where)
    except CalendarError:
        raise
    except Exception:  # noqa: BLE001 - a property icalendar cannot serialise back
        raise CalendarError(f"{where}: an event in it cannot be read") from None


def _rows(calendar: icalendar.Calendar, where: str) -> CalendarObject:
    events = [c for c in calendar.subcomponents if getattr(c, "name", None) == "VEVENT"]
    timezones: dict[str, str] = {}
    for zone in calendar.subcomponents:
        if getattr(zone, "name", None) == "VTIMEZONE":
            tzid = str(zone.get("TZID", "")).strip()
            if tzid and tzid not in timezones:
                timezones[tzid] = zone.to_ical().decode()
    if not events:
        return CalendarObject(None, timezones=timezones)
    # RFC 4791 §4.1: one UID per object. A VEVENT without one belongs to the object's
    # UID; an object without any gets a stable one made from where it lives.
    uids = [str(e.get("UID", "")).strip() for e in events]
    uid = next((u for u in uids if u), "")
    if not uid:
        uid = "pbxcal-" + hashlib.sha256(where.encode()).hexdigest()[:24]
    rows: dict[str | None, EventRow] = {}
    for component in events:
        if str(component.get("UID", "")).strip() != uid:
            component["UID"] = uid
        prop = component.get("RECURRENCE-ID")
        recurrence_id = recurrence_id_text(prop) if prop is not None else None
        rows.pop(recurrence_id, None)  # of two with the same key the last one wins
        rows[recurrence_id] = EventRow(uid, recurrence_id, component.to_ical().decode())
    overrides = tuple(sorted(r for r in rows if r is not None))
    return CalendarObject(uid, tuple(rows.values()), overrides, timezones)
