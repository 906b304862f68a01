"""Google Calendar event JSON → the port's VEVENT rows (pure: dicts in, values out).

``translate(event)`` reads one item of an ``events.list`` answer and says what it means
for the stored calendar (a ``Translation``): a row to upsert, or the UID to remove.

* UID: the Google event ``id``, not ``iCalUID``. Deleted events come back from an
  incremental sync with little more than their ``id``, and an exception names its
  series by ``recurringEventId`` (the master's ``id``), so the ``id`` is the one key
  every answer carries. An exception's row has its master's id as UID.
* ``start``/``end``: ``dateTime`` with ``timeZone`` → ``DTSTART;TZID=zone`` in local
  time (so a weekly series stays at 09:00 local across DST); without a usable zone, in
  UTC; ``date`` → ``VALUE=DATE`` (all-day; ``end.date`` is exclusive, as in iCalendar).
* ``recurrence``: its RRULE/EXRULE/RDATE/EXDATE lines are copied as they are; a line
  that is not one of those, or does not parse, is dropped (the rest of the event stays).
* exceptions (``recurringEventId`` + ``originalStartTime``) → an override row with
  ``RECURRENCE-ID`` in UTC (or ``VALUE=DATE``), so the same instance always has the same
  ``recurrence_id`` whichever zone Google reports it in.
* ``status: cancelled``: an instance → an override row with ``STATUS:CANCELLED``; a
  single event or a whole series → removed.
* the owner's own declined response (the attendee with ``self: true``,
  ``responseStatus: declined``) → ``ATTENDEE;PARTSTAT=DECLINED:mailto:owner`` *and*
  ``STATUS:CANCELLED`` on the row: the core drops it whether or not the caller knows
  the owner's e-mail, and an instance the owner accepted again still shows.
* ``transparency: transparent`` → ``TRANSP:TRANSPARENT``; ``eventType`` ``workingLocation``,
  ``focusTime``, ``outOfOffice``, ``birthday`` → not appointments: removed.
* ``summary`` → SUMMARY (empty when missing).

Must not do: I/O, or trust the JSON's shape (a field of the wrong type makes the event
``problem`` with a reason, never an exception). Start reading at ``translate``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import icalendar

from pbxcal.calendars.changes import EventRow, Translation, translate_item
from pbxcal.core.vevent import safe_zone

#: ``eventType`` values that are not appointments (Google's own kinds of entries).
NOT_APPOINTMENTS = frozenset({"workingLocation", "focusTime", "outOfOffice", "birthday"})

_RECURRENCE_LINE = re.compile(r"(RRULE|EXRULE|RDATE|EXDATE)[;:][^\r\n]*", re.IGNORECASE)
_CRLF = "\r\n"


def translate(event: Any) -> Translation:
    """One ``events.list`` item → a row, a removal, or a problem. See the module docstring."""
    return translate_item(event, _translate)


def _translate(event: dict[str, Any]) -> Translation:
    event_id: str = event["id"]
    master = event.get("recurringEventId")
    status = str(event.get("status", "confirmed"))
    if master is not None:
        if not isinstance(master, str) or not master:
            raise ValueError("recurringEventId is not text")
        recurrence_id = _recurrence_id(event.get("originalStartTime"))
        if status == "cancelled" or event.get("eventType") in NOT_APPOINTMENTS:
            return Translation(row=_cancelled_instance(master, recurrence_id))
        return Translation(row=_row(event, master, recurrence_id))
    if status == "cancelled" or event.get("eventType") in NOT_APPOINTMENTS:
        return Translation(removed=event_id)
    return Translation(row=_row(event, event_id, None))


def _row(
    event: dict[str, Any], uid: str, recurrence_id: tuple[str, date | datetime] | None
) -> EventRow:
    vevent = icalendar.Event()
    vevent.add("UID", uid)
    if recurrence_id is not None:
        vevent.add("RECURRENCE-ID", recurrence_id[1])
    vevent.add("DTSTART", _when(event.get("start"), "start"))
    if event.get("end") is not None:
        vevent.add("DTEND", _when(event["end"], "end"))
    vevent.add("SUMMARY", str(event.get("summary", "")))
    if event.get("transparency") == "transparent":
        vevent.add("TRANSP", "TRANSPARENT")
    else:
        vevent.add("TRANSP", "OPAQUE")
    declined_by = _declined_by_owner(event.get("attendees"))
    if declined_by is not None:
        vevent.add("ATTENDEE", f"mailto:{declined_by}", parameters={"PARTSTAT": "DECLINED"})
        vevent.add("STATUS", "CANCELLED")
    elif event.get("status") == "tentative":
        vevent.add("STATUS", "TENTATIVE")
    else:
        vevent.add("STATUS", "CONFIRMED")
    text = vevent.to_ical().decode()
    lines = _recurrence_lines(event.get("recurrence")) if recurrence_id is None else []
    if lines:
        with_lines = _insert(text, lines)
        text = with_lines if _parses(with_lines) else _insert(text, _readable(text, lines))
    return EventRow(uid, recurrence_id[0] if recurrence_id else None, _crlf(text))


def _cancelled_instance(master: str, recurrence_id: tuple[str, date | datetime]) -> EventRow:
    vevent = icalendar.Event()
    vevent.add("UID", master)
    vevent.add("RECURRENCE-ID", recurrence_id[1])
    vevent.add("DTSTART", recurrence_id[1])
    vevent.add("STATUS", "CANCELLED")
    return EventRow(master, recurrence_id[0], _crlf(vevent.to_ical().decode()))


def _when(value: Any, what: str) -> date | datetime:
    """Google's ``{dateTime, timeZone}`` / ``{date}`` → an aware datetime or a date."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is missing")
    if isinstance(value.get("date"), str):
        return date.fromisoformat(value["date"])
    text = value.get("dateTime")
    if not isinstance(text, str):
        raise ValueError(f"{what} has neither date nor dateTime")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    zone = safe_zone(value["timeZone"]) if isinstance(value.get("timeZone"), str) else None
    if moment.tzinfo is None:
        if zone is None:
            raise ValueError(f"{what} has a floating time and no zone")
        return moment.replace(tzinfo=zone)
    return moment.astimezone(zone if zone is not None else UTC)


def _recurrence_id(value: Any) -> tuple[str, date | datetime]:
    """``originalStartTime`` → (the row's ``recurrence_id`` text, the property's value)."""
    moment = _when(value, "originalStartTime")
    if isinstance(moment, datetime):
        utc = moment.astimezone(UTC)
        return utc.strftime("%Y%m%dT%H%M%SZ"), utc
    return f"VALUE=DATE:{moment.strftime('%Y%m%d')}", moment


def _declined_by_owner(attendees: Any) -> str | None:
    if not isinstance(attendees, list):
        return None
    for attendee in attendees:
        if (
            isinstance(attendee, dict)
            and attendee.get("self") is True
            and attendee.get("responseStatus") == "declined"
        ):
            email = attendee.get("email")
            return email if isinstance(email, str) and _is_plain(email) else "owner@invalid"
    return None


def _recurrence_lines(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [
        line for line in value
        if isinstance(line, str) and _RECURRENCE_LINE.fullmatch(line) and _is_plain(line)
    ]


def _readable(text: str, lines: list[str]) -> list[str]:
    """The recurrence lines that parse one by one (a bad one must not sink the others)."""
    return [line for line in lines if _parses(_insert(text, [line]))]


def _parses(text: str) -> bool:
    try:
        component = icalendar.Event.from_ical(text)
        for name in ("RRULE", "EXRULE", "RDATE", "EXDATE"):
            values = component.get(name)
            for value in values if isinstance(values, list) else [values]:
                if value is not None and hasattr(value, "to_ical"):
                    value.to_ical()
        return not getattr(component, "errors", None)
    except Exception:  # noqa: BLE001 - icalendar raises many kinds for bad input
        return False


def _insert(text: str, lines: list[str]) -> str:
    end = text.rindex("END:VEVENT")
    return text[:end] + "".join(line + _CRLF for line in lines) + text[end:]


def _is_plain(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def _crlf(text: str) -> str:
    return _CRLF.join(text.splitlines()) + _CRLF
