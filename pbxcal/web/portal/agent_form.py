"""The booking settings form of the customer's status page, as plain values (pure).

What it does: ``read_form(fields, agent, own_links)`` turns the POSTed fields
into a ``SettingsChange``: the settings as the JSON object ``pbxcal.booking.settings``
reads (``parse_settings`` validates it, exactly as for the admin API and the CLI, so
the refusals are the same one-liners) and the calendars that make the agent busy and
receive bookings. ``form_values(agent, own_links)`` is the other direction: what the
form shows for an agent's settings; ``submitted_values(fields)`` what it shows again
after a refusal (everything as typed).

The fields::

    timezone            an IANA zone               duration    (repeated) minutes
    buffer_before/after 0, 15 or 30                 hours_mon ... hours_sun  "09:00-17:00"
    breaks              "13:00-14:00, ..."          horizon_days, min_notice_minutes
    step_minutes        empty: the meeting's length reminder_minutes  empty: none
    buffers_in_event    present: yes                conflict_link (repeated) link ids
    booking_link        a link id, "none", or "keep" (a calendar the admin chose that is
                        not one of the customer's, kept as it is)

Times may be typed loosely ("9:00 - 17:00", an en dash, several periods separated by
commas); what is still not ``HH:MM-HH:MM`` is refused by ``parse_settings``.

Rules for the calendars: only the customer's own links (same PBX and extension) can be
chosen; links of others the admin put on the agent stay as they are. Outlook's working
hours and zone (``hours_set`` / ``timezone_set`` False) keep following Outlook unless
the customer really changed them on the form.

Start at ``read_form``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbxcal.booking.agents import BOOKING_PROVIDERS
from pbxcal.booking.model import WEEKDAYS, Agent, AgentSettings, BookingRefused
from pbxcal.booking.settings import NUMBER_RANGES, parse_settings, settings_json
from pbxcal.store import Link

#: The meeting lengths the form offers (an agent's other lengths are offered too).
DURATION_CHOICES = (15, 30, 45, 60, 90, 120)
BUFFER_CHOICES = ("0", "15", "30")
NUMBER_FIELDS = tuple(NUMBER_RANGES)
#: Fields that may be left empty (empty: the meeting's length / no reminder).
EMPTY_IS_NONE = frozenset({"step_minutes", "reminder_minutes"})
KEEP, NONE = "keep", "none"
_LOOSE_HOUR = re.compile(r"(?<![0-9])([0-9]):")


@dataclass(frozen=True)
class SettingsChange:
    """What the form asks to store: ``agents.set_agent``'s arguments."""

    settings: dict[str, Any]
    booking_link_id: int | None
    conflict_link_ids: tuple[int, ...]


def fields_of(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The POSTed form's pairs as name -> every value (checkboxes repeat a name)."""
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
    return fields


def read_form(
    fields: Mapping[str, Sequence[str]], agent: Agent, own_links: Sequence[Link]
) -> SettingsChange:
    """The change the form asks for; ``BookingRefused`` (one line) for a calendar that
    is not the customer's.

    ``agent`` is the agent as the form showed it (``agents.load_agent``: Outlook's hours
    filled in where the admin set none, the flags saying so), ``own_links`` the links
    of the customer's extension. The settings themselves are checked where the API's are,
    in ``agents.set_agent`` (``parse_settings``), before anything is stored."""
    settings: dict[str, Any] = {
        "timezone": _one(fields, "timezone"),
        "durations": [_number(v) for v in fields.get("duration", [])],
        "buffer_before": _number(_one(fields, "buffer_before")),
        "buffer_after": _number(_one(fields, "buffer_after")),
        "hours": {day: periods(_one(fields, f"hours_{day}")) for day in WEEKDAYS},
        "breaks": periods(_one(fields, "breaks")),
        "buffers_in_event": bool(fields.get("buffers_in_event")),
    }
    for name in NUMBER_FIELDS:
        text = _one(fields, name).strip()
        settings[name] = None if not text and name in EMPTY_IS_NONE else _number(text)
    _keep_outlook_defaults(settings, agent.settings)
    own = {link.id: link for link in own_links}
    return SettingsChange(
        settings=settings,
        booking_link_id=_booking_link(_one(fields, "booking_link"), agent, own),
        conflict_link_ids=_conflict_links(fields.get("conflict_link", []), agent, own),
    )


def periods(text: str) -> list[str]:
    """``"9:00 - 12:00, 13:00–17:00"`` -> ``["09:00-12:00", "13:00-17:00"]`` (an empty
    text is no period: a day off); what is left for ``parse_settings`` to judge."""
    result = []
    for item in re.split(r"[,;\n]", text.replace("\u2013", "-").replace("\u2014", "-")):
        squeezed = "".join(item.split())
        if squeezed:
            result.append(_LOOSE_HOUR.sub(r"0\1:", squeezed))
    return result


def form_values(agent: Agent, own_links: Sequence[Link]) -> dict[str, Any]:
    """What the form shows for ``agent`` (its settings as guests see them)."""
    shown = settings_json(agent.settings)
    own_ids = {link.id for link in own_links}
    values: dict[str, Any] = {
        "timezone": shown["timezone"],
        "durations": {str(d) for d in shown["durations"]},
        "buffer_before": str(shown["buffer_before"]),
        "buffer_after": str(shown["buffer_after"]),
        "breaks": ", ".join(shown["breaks"]),
        "buffers_in_event": bool(shown["buffers_in_event"]),
        "conflict_links": {str(i) for i in agent.conflict_link_ids if i in own_ids},
        "booking_link": _booking_choice(agent, own_ids),
    }
    for day in WEEKDAYS:
        values[f"hours_{day}"] = ", ".join(shown["hours"][day])
    for name in NUMBER_FIELDS:
        number = shown[name]
        values[name] = "" if number is None else str(number)
    return values


def submitted_values(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """What the form shows again after a refusal: everything as it was typed."""
    values: dict[str, Any] = {
        name: _one(fields, name)
        for name in ("timezone", "buffer_before", "buffer_after", "breaks", "booking_link",
                     *NUMBER_FIELDS, *(f"hours_{day}" for day in WEEKDAYS))
    }  # fmt: skip
    values["durations"] = set(fields.get("duration", []))
    values["buffers_in_event"] = bool(fields.get("buffers_in_event"))
    values["conflict_links"] = set(fields.get("conflict_link", []))
    return values


def duration_choices(values: Mapping[str, Any]) -> list[int]:
    """The lengths offered: the usual ones and whatever the agent has (or was typed)."""
    extra = {int(d) for d in values["durations"] if d.isascii() and d.isdigit() and len(d) < 5}
    return sorted({*DURATION_CHOICES, *extra})


def booking_links(own_links: Sequence[Link]) -> list[Link]:
    """The customer's links that can receive bookings (``agents.BOOKING_PROVIDERS``)."""
    return [link for link in own_links if link.provider in BOOKING_PROVIDERS]


# -- details ----------------------------------------------------------------------------------


def _one(fields: Mapping[str, Sequence[str]], name: str) -> str:
    values = fields.get(name) or [""]
    return values[-1][:500]


def _number(text: str) -> int | str:
    """Whole minutes as an int; anything else as it was, for ``parse_settings`` to refuse
    in the API's words."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else text


def _keep_outlook_defaults(settings: dict[str, Any], shown: AgentSettings) -> None:
    """Leave out the zone and hours nobody set (they follow Outlook's where the booking
    calendar is Microsoft 365) when the form sends them back unchanged."""
    if not shown.timezone_set and settings["timezone"] == shown.timezone:
        del settings["timezone"]
    if not shown.hours_set:
        try:
            unchanged = parse_settings({"hours": settings["hours"]}).hours == shown.hours
        except BookingRefused:
            unchanged = False
        if unchanged:
            del settings["hours"]


def _link_id(text: str, own: Mapping[int, Link], what: str) -> int:
    link_id = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None
    if link_id is None or link_id not in own:
        raise BookingRefused(f"{what}: {text[:20]!r} is not one of your calendars")
    return link_id


def _booking_link(choice: str, agent: Agent, own: Mapping[int, Link]) -> int | None:
    if choice == NONE:
        return None
    if choice == KEEP:
        if agent.booking_link_id is None or agent.booking_link_id in own:
            raise BookingRefused("booking calendar: choose one of your calendars")
        return agent.booking_link_id
    return _link_id(choice, own, "booking calendar")  # its provider: agents.set_agent


def _conflict_links(
    chosen: Sequence[str], agent: Agent, own: Mapping[int, Link]
) -> tuple[int, ...]:
    """The admin's links of others first (kept), then the customer's chosen ones."""
    picked = [_link_id(text, own, "conflict calendars") for text in chosen[:20]]
    kept = [i for i in agent.conflict_link_ids if i not in own]
    return tuple(dict.fromkeys([*kept, *picked]))


def _booking_choice(agent: Agent, own_ids: set[int]) -> str:
    if agent.booking_link_id is None:
        return NONE
    return str(agent.booking_link_id) if agent.booking_link_id in own_ids else KEEP
