"""Microsoft Graph event JSON → the port's VEVENT rows (pure: dicts in, values out).

``translate(event)`` reads one item of a ``calendarView/delta`` answer and says what it
means for the stored calendar (a ``Translation``): a row to upsert, the UID to remove,
or nothing (with a ``problem`` when the item could not be read).

Graph is the one provider whose delta API hands out *occurrences*, already expanded by
the server within the requested window (``type`` ``singleInstance``, ``occurrence``,
``exception``; a ``seriesMaster`` is not listed by ``calendarView``, and is ignored if
it is). So every item becomes its own row: UID = the instance's Graph ``id``, no RRULE,
no RECURRENCE-ID. That is correct here because the window is fixed for one delta round
and pbxcal starts a new round (a full change set) well before the window's end, so every
instance pbxcal plans over is in the rows; an edit of a series comes back as edits of
its occurrences, a deleted occurrence as ``@removed`` with that occurrence's id.

* ``start``/``end``: ``dateTime`` + ``timeZone`` (pbxcal asks for UTC with ``Prefer:
  outlook.timezone="UTC"``; another IANA zone is honoured, an unknown one makes the item
  a problem) → ``DTSTART:...Z``; ``isAllDay`` → ``VALUE=DATE`` (end exclusive).
* ``@removed`` and ``isCancelled`` (a meeting the organiser cancelled) → removed.
* the owner's own ``responseStatus.response == "declined"`` →
  ``ATTENDEE;PARTSTAT=DECLINED`` and ``STATUS:CANCELLED`` (as the Google adapter).
* ``showAs: free`` → ``TRANSP:TRANSPARENT`` (else OPAQUE); ``showAs: tentative`` →
  ``STATUS:TENTATIVE``; ``subject`` → SUMMARY (empty when missing).

Must not do: I/O, or trust the JSON's shape (a field of the wrong type makes the item a
``problem``, never an exception). Start reading at ``translate``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, tzinfo
from typing import Any

import icalendar

from pbxcal.calendars.changes import EventRow, Translation, translate_item
from pbxcal.core.vevent import safe_zone

#: Written as the declining attendee: Graph's instance does not name the owner.
OWNER_ADDRESS = "owner@invalid"

_FRACTION = re.compile(r"\.\d+")
_CRLF = "\r\n"


def translate(event: Any) -> Translation:
    """One ``calendarView/delta`` item → a row, a removal, or nothing."""
    return translate_item(event, _translate)


def _translate(event: dict[str, Any]) -> Translation:
    event_id: str = event["id"]
    if "@removed" in event or event.get("isCancelled") is True:
        return Translation(removed=event_id)
    if event.get("type") == "seriesMaster":
        return Translation()
    all_day = event.get("isAllDay") is True
    vevent = icalendar.Event()
    vevent.add("UID", event_id)
    vevent.add("DTSTART", _when(event.get("start"), "start", all_day))
    if event.get("end") is not None:
        vevent.add("DTEND", _when(event["end"], "end", all_day))
    subject = event.get("subject")
    vevent.add("SUMMARY", subject if isinstance(subject, str) else "")
    show_as = event.get("showAs")
    vevent.add("TRANSP", "TRANSPARENT" if show_as == "free" else "OPAQUE")
    response = event.get("responseStatus")
    if isinstance(response, dict) and response.get("response") == "declined":
        vevent.add("ATTENDEE", f"mailto:{OWNER_ADDRESS}", parameters={"PARTSTAT": "DECLINED"})
        vevent.add("STATUS", "CANCELLED")
    elif show_as == "tentative":
        vevent.add("STATUS", "TENTATIVE")
    else:
        vevent.add("STATUS", "CONFIRMED")
    return Translation(row=EventRow(event_id, None, _crlf(vevent.to_ical().decode())))


def _when(value: Any, what: str, all_day: bool) -> date | datetime:
    """Graph's ``{dateTime, timeZone}`` → an aware datetime, or a date when all-day."""
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise ValueError(f"{what} has no dateTime")
    moment = datetime.fromisoformat(_FRACTION.sub("", value["dateTime"]).replace("Z", "+00:00"))
    if all_day:
        return moment.date()
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    return moment.replace(tzinfo=_zone(value.get("timeZone"), what)).astimezone(UTC)


def _zone(name: Any, what: str) -> tzinfo:
    if name is None or name in ("UTC", "Etc/UTC", "tzone://Microsoft/Utc"):
        return UTC
    zone = safe_zone(name) if isinstance(name, str) else None
    if zone is None:
        raise ValueError(f"{what} has an unknown time zone")
    return zone


def _crlf(text: str) -> str:
    return _CRLF.join(text.splitlines()) + _CRLF
