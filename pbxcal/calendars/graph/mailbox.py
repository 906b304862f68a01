"""A Microsoft 365 mailbox's settings as plain data: its time zone and working hours.

What it does: ``parse_mailbox_settings`` reads Graph's ``mailboxSettings`` answer into
``MailboxSettings`` / ``WorkingHours``; ``iana_zone`` turns what Outlook names a zone (a
Windows name such as "W. Europe Standard Time", or already IANA) into an IANA key;
``working_profile`` is what a full read stores with the sync state for the availability
feature (``calendar_tz`` and ``working_hours`` of a ``ChangeSet``).

What it must not do: any I/O (``source.GraphCalendarSource`` asks Graph), or fail on an
odd answer: unknown or missing fields become ``None``. Its names are importable from
``pbxcal.calendars.graph.source`` too. Start reading at ``working_profile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "MailboxSettings",
    "WorkingHours",
    "iana_zone",
    "parse_mailbox_settings",
    "working_profile",
]


@dataclass(frozen=True)
class WorkingHours:
    """The mailbox's working hours: ``days`` (``"monday"``...), ``start``/``end``
    (``"08:00:00"``) in ``time_zone`` (as Outlook names it, may be a Windows name)."""

    days: tuple[str, ...]
    start: str | None
    end: str | None
    time_zone: str | None


@dataclass(frozen=True)
class MailboxSettings:
    """``mailboxSettings`` as plain data for the availability feature."""

    time_zone: str | None
    working_hours: WorkingHours | None


def parse_mailbox_settings(answer: dict[str, Any]) -> MailboxSettings:
    """Graph's ``GET .../mailboxSettings`` answer as ``MailboxSettings``."""
    zone = answer.get("timeZone")
    hours = answer.get("workingHours")
    working: WorkingHours | None = None
    if isinstance(hours, dict):
        days = hours.get("daysOfWeek")
        hours_zone = hours.get("timeZone")
        working = WorkingHours(
            days=tuple(d for d in days if isinstance(d, str)) if isinstance(days, list) else (),
            start=_text(hours.get("startTime")),
            end=_text(hours.get("endTime")),
            time_zone=_text(hours_zone.get("name")) if isinstance(hours_zone, dict) else None,
        )
    return MailboxSettings(time_zone=_text(zone), working_hours=working)


def working_profile(settings: MailboxSettings) -> dict[str, Any]:
    """``calendar_tz`` (an IANA key) and ``working_hours`` (IANA zone, lower-case days,
    ``HH:MM`` times) of a ChangeSet; each left out when the mailbox does not say."""
    profile: dict[str, Any] = {}
    zone = iana_zone(settings.time_zone)
    if zone is not None:
        profile["calendar_tz"] = zone
    hours = settings.working_hours
    if hours is not None and hours.start and hours.end:
        profile["working_hours"] = {
            "time_zone": iana_zone(hours.time_zone) or zone,
            "days": [d.lower() for d in hours.days],
            "start": hours.start[:5],
            "end": hours.end[:5],
        }
    return profile


def iana_zone(name: str | None) -> str | None:
    """An IANA zone for what Outlook names a zone (a Windows name such as "W. Europe
    Standard Time", or already IANA); ``None`` when unknown."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    if name in WINDOWS_TO_OLSON:
        return str(WINDOWS_TO_OLSON[name])
    try:
        ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # not a zone key, or no such zone
        return None
    return name


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
