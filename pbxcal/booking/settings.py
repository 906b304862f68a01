"""Agent settings: validated from JSON (API, CLI, store) and back, with one-line errors.

What it does: ``parse_settings(raw, base)`` reads a JSON object (every key optional;
missing keys keep ``base``'s value, ``AgentSettings()``'s defaults by default) and
raises ``BookingRefused`` naming the key and the problem; ``settings_json`` is the
inverse, ``rules_for`` the core's ``AvailabilityRules`` for one duration;
``with_mailbox_hours`` puts Outlook's working hours and zone in where the admin set
none (``hours_set``, ``timezone_set``).

The JSON shape::

    {"timezone": "Europe/Amsterdam", "durations": [30, 60], "buffer_before": 15,
     "buffer_after": 0, "hours": {"mon": ["09:00-17:00"], ..., "sat": []},
     "breaks": ["13:00-14:00"], "horizon_days": 31, "min_notice_minutes": 60,
     "step_minutes": null, "buffers_in_event": false, "reminder_minutes": 15}

Start reading at ``parse_settings``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pbxcal.booking.model import WEEKDAYS, AgentSettings, BookingRefused, Period
from pbxcal.core.slots import AvailabilityRules

MIN_DURATION, MAX_DURATION = 15, 360
BUFFERS = (0, 15, 30)
MAX_HORIZON_DAYS = 366
#: (lowest, highest) of each whole-number setting (the customer's form shows them too).
NUMBER_RANGES = {
    "horizon_days": (1, MAX_HORIZON_DAYS),
    "min_notice_minutes": (0, 60 * 24 * 60),
    "step_minutes": (5, 360),
    "reminder_minutes": (1, 60 * 24 * 7),
}
_PERIOD = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
_SET_FLAGS = frozenset({"hours_set", "timezone_set"})
_KEYS = frozenset(
    {
        "timezone", "durations", "buffer_before", "buffer_after", "hours", "breaks",
        "horizon_days", "min_notice_minutes", "step_minutes", "buffers_in_event",
        "reminder_minutes",
    }
)  # fmt: skip


def parse_settings(raw: Mapping[str, Any], base: AgentSettings | None = None) -> AgentSettings:
    """``raw`` over ``base``; ``BookingRefused`` (one line) for anything wrong."""
    settings = base or AgentSettings()
    if not isinstance(raw, Mapping):
        raise BookingRefused("settings must be a JSON object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise BookingRefused(f"unknown setting {unknown[0][:40]!r}")
    changes: dict[str, Any] = {}
    if "timezone" in raw:
        changes["timezone"] = _zone(raw["timezone"])
        changes["timezone_set"] = True
    if "durations" in raw:
        changes["durations"] = _durations(raw["durations"])
    for key in ("buffer_before", "buffer_after"):
        if key in raw:
            value = raw[key]
            if not _is_int(value) or value not in BUFFERS:
                raise BookingRefused(f"{key} must be 0, 15 or 30 minutes")
            changes[key] = value
    if "hours" in raw:
        changes["hours"] = _hours(raw["hours"])
        changes["hours_set"] = True
    if "breaks" in raw:
        changes["breaks"] = _periods(raw["breaks"], "breaks")
    for key in ("horizon_days", "min_notice_minutes"):
        if key in raw:
            changes[key] = _bounded(raw[key], key, *NUMBER_RANGES[key])
    for key in ("step_minutes", "reminder_minutes"):  # null: the meeting's length / none
        if key in raw:
            value = raw[key]
            changes[key] = None if value is None else _bounded(value, key, *NUMBER_RANGES[key])
    if "buffers_in_event" in raw:
        if not isinstance(raw["buffers_in_event"], bool):
            raise BookingRefused("buffers_in_event must be true or false")
        changes["buffers_in_event"] = raw["buffers_in_event"]
    return replace(settings, **changes)


def settings_json(settings: AgentSettings) -> dict[str, Any]:
    """The JSON object ``parse_settings`` reads back to ``settings``."""
    return {
        "timezone": settings.timezone,
        "durations": list(settings.durations),
        "buffer_before": settings.buffer_before,
        "buffer_after": settings.buffer_after,
        "hours": {
            WEEKDAYS[day]: [_period_text(p) for p in settings.hours.get(day, ())]
            for day in range(7)
        },
        "breaks": [_period_text(p) for p in settings.breaks],
        "horizon_days": settings.horizon_days,
        "min_notice_minutes": settings.min_notice_minutes,
        "step_minutes": settings.step_minutes,
        "buffers_in_event": settings.buffers_in_event,
        "reminder_minutes": settings.reminder_minutes,
    }


def stored_settings(raw: Mapping[str, Any]) -> AgentSettings:
    """Settings as the store keeps them (``settings_json`` plus ``hours_set`` and
    ``timezone_set``: whether the admin chose them; rows from before ``timezone_set``
    count as not set)."""
    settings = parse_settings({k: v for k, v in raw.items() if k not in _SET_FLAGS})
    return replace(
        settings,
        hours_set=bool(raw.get("hours_set", settings.hours_set)),
        timezone_set=bool(raw.get("timezone_set", False)),
    )


def stored_json(settings: AgentSettings) -> dict[str, Any]:
    """What the store keeps: ``settings_json`` and the two flags ``stored_settings`` reads."""
    return {**settings_json(settings), "hours_set": settings.hours_set,
            "timezone_set": settings.timezone_set}  # fmt: skip


def with_mailbox_hours(
    settings: AgentSettings, working_hours: Mapping[str, Any] | None, calendar_tz: str | None
) -> AgentSettings:
    """``settings`` with Outlook's working hours (Microsoft Graph's mailboxSettings as the
    sync stores them: ``{"time_zone": IANA, "days": ["monday", ...], "start": "08:30",
    "end": "16:00"}``) as the hours, and their zone (else the calendar's) as the time
    zone, where the admin set none. Anything unusable in them is ignored (the defaults
    stay): this never raises."""
    changes: dict[str, Any] = {}
    if working_hours and not settings.hours_set:
        hours = _mailbox_hours(working_hours)
        if hours is not None:
            changes["hours"] = hours
    if not settings.timezone_set:
        for zone in ((working_hours or {}).get("time_zone"), calendar_tz):
            try:
                changes["timezone"] = _zone(zone)
                break
            except BookingRefused:
                continue
    return replace(settings, **changes) if changes else settings


_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _mailbox_hours(raw: Mapping[str, Any]) -> dict[int, tuple[Period, ...]] | None:
    days, start, end = raw.get("days"), raw.get("start"), raw.get("end")
    if not isinstance(days, list) or not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        (period,) = _periods([f"{start[:5]}-{'24:00' if end[:5] == '00:00' else end[:5]}"], "")
    except BookingRefused:
        return None
    picked = {_DAY_NAMES.index(d) for d in days if isinstance(d, str) and d in _DAY_NAMES}
    return {day: (period,) for day in sorted(picked)} if picked else None


def rules_for(settings: AgentSettings, duration_minutes: int) -> AvailabilityRules:
    """The core's rules for one meeting length."""
    return AvailabilityRules(
        timezone=ZoneInfo(settings.timezone),
        duration=timedelta(minutes=duration_minutes),
        hours=settings.hours,
        breaks=settings.breaks,
        step=timedelta(minutes=settings.step_minutes) if settings.step_minutes else None,
        buffer_before=timedelta(minutes=settings.buffer_before),
        buffer_after=timedelta(minutes=settings.buffer_after),
        min_notice=timedelta(minutes=settings.min_notice_minutes),
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded(value: object, key: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise BookingRefused(f"{key} must be a whole number from {low} to {high}")
    assert isinstance(value, int)
    return value


def _zone(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise BookingRefused("timezone must be an IANA zone name such as Europe/Amsterdam")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BookingRefused(f"timezone {value!r} is not an IANA zone") from None
    return value


def _durations(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or len(value) > 12:
        raise BookingRefused("durations must be a list of 1 to 12 lengths in minutes")
    result = []
    for item in value:
        if not _is_int(item) or not MIN_DURATION <= item <= MAX_DURATION:
            raise BookingRefused(
                f"durations must be whole minutes from {MIN_DURATION} to {MAX_DURATION}"
            )
        result.append(item)
    return tuple(sorted(set(result)))


def _hours(value: object) -> dict[int, tuple[Period, ...]]:
    if not isinstance(value, dict):
        raise BookingRefused('hours must be an object such as {"mon": ["09:00-17:00"]}')
    result: dict[int, tuple[Period, ...]] = {}
    for name, periods in value.items():
        if name not in WEEKDAYS:
            raise BookingRefused(f"hours: {str(name)[:10]!r} is not a weekday (mon ... sun)")
        parsed = _periods(periods, f"hours {name}")
        if parsed:
            result[WEEKDAYS.index(name)] = parsed
    return result


def _periods(value: object, where: str) -> tuple[Period, ...]:
    if not isinstance(value, list) or len(value) > 12:
        raise BookingRefused(f'{where} must be a list such as ["09:00-17:00"]')
    result: list[Period] = []
    for item in value:
        match = _PERIOD.fullmatch(item) if isinstance(item, str) else None
        if match is None:
            raise BookingRefused(f"{where}: {str(item)[:20]!r} is not HH:MM-HH:MM")
        start = time(int(match[1]), int(match[2]))
        if match[3] == "24":
            if match[4] != "00":
                raise BookingRefused(f"{where}: {item!r} ends after 24:00")
            end: time | None = None
        else:
            end = time(int(match[3]), int(match[4]))
            if end <= start:
                raise BookingRefused(f"{where}: {item!r} ends before it starts")
        result.append((start, end))
    result.sort(key=lambda p: p[0])
    for (_, end_a), (start_b, _) in itertools.pairwise(result):
        if end_a is None or end_a > start_b:
            raise BookingRefused(f"{where}: periods overlap")
    return tuple(result)


def _period_text(period: Period) -> str:
    start, end = period
    return f"{start:%H:%M}-{'24:00' if end is None else f'{end:%H:%M}'}"
