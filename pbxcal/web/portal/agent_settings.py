"""The booking part of the customer's status page: the share link and the settings form.

What it does: when the customer's extension (on the same PBX) is a booking agent,
``booking_section`` gives the status page, per agent of that extension (usually one),
the full address of its booking page (``[portal] public_url`` + ``/book/<agent>``) and
the settings form's values and choices (``agent_form``); with no agent, the page says
booking is not switched on (no form). ``save_settings`` is the form's POST after the
CSRF check (``pages.save_booking_settings``): the agent named in the form must be one of
the session's extension, else ``NotYourAgent`` and nothing happens; then
``agent_form.read_form`` and ``agents.set_agent`` (the operation of the admin API's
``PUT /api/v1/agents/{id}`` and ``pbxcal agents set``, so the same checks and the same
one-line ``BookingError`` refusals), and the availability cache of the agent is dropped
so the booking page and the availability API answer with the new settings at once.

What it must not do: let a session change an agent of another extension or PBX, or
offer or accept a calendar of another extension. Blocking (the store): call
``save_settings`` and ``load_section`` from a worker thread.

Start at ``save_settings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pbxcal.booking import agents as agent_ops
from pbxcal.booking.availability import forget_agent
from pbxcal.booking.model import Agent
from pbxcal.booking.settings import NUMBER_RANGES
from pbxcal.store import Link, Store
from pbxcal.web.booking.params import zone_choices
from pbxcal.web.portal.agent_form import (
    KEEP,
    NONE,
    booking_links,
    duration_choices,
    fields_of,
    form_values,
    read_form,
    submitted_values,
)
from pbxcal.web.portal.flow import calendar_name


def _(message: str) -> str:
    """Marks a msgid for extraction; the template translates it."""
    return message


#: How the page names a provider after a calendar's name.
PROVIDER_NAMES = {
    "caldav": "CalDAV", "google": "Google", "graph": "Microsoft 365", "ews": "Exchange",
    "ics": "ICS",
}  # fmt: skip
KEEP_LABEL = _("The calendar your phone provider chose")
NONE_LABEL = _("None: guests cannot book yet")


class NotYourAgent(Exception):
    """The form named an agent that is not the session's extension's (or none)."""


@dataclass
class AgentForm:
    """One agent of the customer's extension as its part of the status page shows it."""

    agent: Agent
    share_url: str
    values: dict[str, Any]
    durations: list[int]
    zones: tuple[str, ...]
    #: (link id, label) of the customer's calendars; checked ones make the agent busy
    conflict_choices: list[tuple[str, str]]
    #: (value, label): the customer's calendars that can take bookings, and "none"
    booking_choices: list[tuple[str, str]]
    #: calendars of others the admin made count for conflicts (kept as they are)
    other_conflicts: int
    error: str | None = None
    saved: bool = False


@dataclass
class BookingSection:
    """The agents of the extension (empty: booking is not switched on for it)."""

    agents: list[AgentForm] = field(default_factory=list)
    #: (lowest, highest) of the number fields, for the browser's own hints
    ranges: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(NUMBER_RANGES))


def agents_of(store: Store, pbx: str, extension: str) -> list[Agent]:
    """The agents (as booked) of ``extension`` on ``pbx``, by id, without the conflict
    calendars that were removed since (a removed link stays in an agent's list, and
    ``agents.set_agent`` refuses a list naming it)."""
    rows = [r for r in store.list_agents() if r["pbx"] == pbx and r["extension"] == extension]
    found = []
    for row in rows:
        agent = agent_ops.with_mailbox_defaults(store, agent_ops.agent_from_row(row))
        kept = tuple(i for i in agent.conflict_link_ids if store.get_link(i) is not None)
        found.append(replace(agent, conflict_link_ids=kept))
    return found


def links_of(store: Store, pbx: str, extension: str) -> list[Link]:
    """The links of ``extension`` on ``pbx``: the calendars the customer may choose."""
    return store.extension_links(pbx, extension)


def load_section(
    store: Store,
    public_url: str,
    pbx: str,
    extension: str,
    *,
    saved: str | None = None,
    refused: tuple[str, str, Sequence[tuple[str, str]]] | None = None,
) -> BookingSection:
    """The section for the status page. ``saved``: the agent whose settings were just
    stored; ``refused``: (agent id, reason, the fields as POSTed) to show again."""
    own = links_of(store, pbx, extension)
    section = BookingSection()
    for agent in agents_of(store, pbx, extension):
        values = form_values(agent, own)
        error = None
        if refused is not None and refused[0] == agent.id:
            error, values = refused[1], submitted_values(fields_of(refused[2]))
        section.agents.append(_agent_form(agent, public_url, own, values, error,
                                          saved == agent.id))  # fmt: skip
    return section


def save_settings(
    store: Store, pbx: str, extension: str, pairs: Sequence[tuple[str, str]]
) -> Agent:
    """Store the settings form of an agent of ``extension`` on ``pbx``: see the module
    docstring. Raises ``NotYourAgent`` or a ``BookingError`` (nothing stored)."""
    fields = fields_of(pairs)
    wanted = (fields.get("agent") or [""])[-1]
    agent = next((a for a in agents_of(store, pbx, extension) if a.id == wanted), None)
    if agent is None:
        raise NotYourAgent(wanted[:40])
    change = read_form(fields, agent, links_of(store, pbx, extension))
    try:
        return agent_ops.set_agent(
            store,
            agent.id,
            booking_link_id=change.booking_link_id,
            conflict_link_ids=change.conflict_link_ids,
            settings=change.settings,
        )
    finally:
        forget_agent(store, agent.id)


def share_url(public_url: str, agent: Agent) -> str:
    """The address guests book ``agent`` at."""
    return f"{public_url.rstrip('/')}/book/{agent.id}"


def calendar_label(link: Link) -> str:
    """A calendar as the customer knows it, with its provider."""
    return f"{calendar_name(link)} ({PROVIDER_NAMES.get(link.provider, link.provider)})"


def _agent_form(
    agent: Agent,
    public_url: str,
    own: Sequence[Link],
    values: dict[str, Any],
    error: str | None,
    saved: bool,
) -> AgentForm:
    own_ids = {link.id for link in own}
    booking = [(str(link.id), calendar_label(link)) for link in booking_links(own)]
    if values["booking_link"] == KEEP or (
        agent.booking_link_id is not None and agent.booking_link_id not in own_ids
    ):
        booking.append((KEEP, KEEP_LABEL))
    booking.append((NONE, NONE_LABEL))
    return AgentForm(
        agent=agent,
        share_url=share_url(public_url, agent),
        values=values,
        durations=duration_choices(values),
        zones=zone_choices(values["timezone"] or agent.settings.timezone),
        conflict_choices=[(str(link.id), calendar_label(link)) for link in own],
        booking_choices=booking,
        other_conflicts=sum(1 for i in agent.conflict_link_ids if i not in own_ids),
        error=error,
        saved=saved,
    )
