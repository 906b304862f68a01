"""Agents and groups: the operations the admin API and ``pbxcal agents`` share.

What it does: checks input (slug ids, the PBX and extension of the config, links that
exist), stores agents and groups, and turns stored rows into ``Agent`` / ``Group``.
``load_agent`` gives the agent as it is booked: where its booking link is Microsoft 365
(provider "graph") and the admin set no hours / zone, Outlook's working hours and zone
that the sync stored (``with_mailbox_defaults``). Blocking (the store); call from a
worker thread in the event loop.

Start reading at ``add_agent``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pbxcal.booking.model import Agent, AgentNotFound, BookingRefused, Group, LinkUnsuitable
from pbxcal.booking.settings import (
    parse_settings,
    settings_json,
    stored_json,
    stored_settings,
    with_mailbox_hours,
)
from pbxcal.config import Config
from pbxcal.store import Store

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_EXTENSION = re.compile(r"[0-9]{1,15}")
_EMAIL = re.compile(r"[!-?A-~]{1,64}@[!-?A-~]{1,190}\.[!-?A-~]{1,63}")
#: Providers whose calendars take booked meetings (``writeback``).
BOOKING_PROVIDERS = ("caldav", "google", "graph", "ews")
#: Providers whose sync stores the mailbox's working hours and zone.
MAILBOX_HOURS_PROVIDERS = frozenset({"graph"})
#: A link's stored working hours are read again at the latest after this (seconds), and
#: at once when its expansion changed (a sync that read the calendar).
MAILBOX_TTL = 60.0
_mailbox: dict[tuple[int, int], tuple[float, object, Mapping[str, Any] | None, str | None]] = {}
_mailbox_lock = threading.Lock()


def check_slug(value: str, what: str = "agent id") -> str:
    if not SLUG.fullmatch(value):
        raise BookingRefused(
            f"{what} must be 1-40 lower-case letters, digits or '-' (such as anna)"
        )
    return value


def check_email(value: str, what: str = "email") -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise BookingRefused(f"{what} is not an e-mail address")
    return value


def agent_from_row(row: Mapping[str, Any]) -> Agent:
    return Agent(
        id=row["id"],
        pbx=row["pbx"],
        extension=row["extension"],
        name=row["name"],
        settings=stored_settings(row["settings"] or {}),
        booking_link_id=row["booking_link_id"],
        conflict_link_ids=tuple(int(i) for i in row["conflict_link_ids"] or ()),
        email=row["email"],
    )


def load_agent(store: Store, agent_id: str) -> Agent:
    """The agent as booked (Outlook's hours where the admin set none)."""
    return with_mailbox_defaults(store, _stored_agent(store, agent_id))


def _stored_agent(store: Store, agent_id: str) -> Agent:
    row = store.get_agent(agent_id) if SLUG.fullmatch(agent_id) else None
    if row is None:
        raise AgentNotFound(f"no agent {agent_id[:40]!r}")
    return agent_from_row(row)


def list_agents(store: Store) -> list[Agent]:
    return [with_mailbox_defaults(store, agent_from_row(row)) for row in store.list_agents()]


def with_mailbox_defaults(store: Store, agent: Agent) -> Agent:
    """``agent`` with its booking link's Outlook working hours and zone where the admin
    set none (``settings.with_mailbox_hours``); unchanged for other providers."""
    settings = agent.settings
    if agent.booking_link_id is None or (settings.hours_set and settings.timezone_set):
        return agent
    link_id = agent.booking_link_id
    stamp: object = store.expansion_stamps((link_id,)).get(link_id)
    key = (id(store), link_id)
    with _mailbox_lock:
        cached = _mailbox.get(key)
    if cached is None or cached[1] != stamp or cached[0] < time.monotonic() - MAILBOX_TTL:
        read_at = time.monotonic()
        link = store.get_link(link_id)
        hours: Mapping[str, Any] | None = None
        zone: str | None = None
        if link is not None and link.provider in MAILBOX_HOURS_PROVIDERS:
            state = store.load_events(link_id)[1]
            if state is not None:
                hours, zone = state.working_hours, state.calendar_tz
        cached = (read_at, stamp, hours, zone)
        with _mailbox_lock:
            _mailbox[key] = cached
            if len(_mailbox) > 512:
                _mailbox.pop(next(iter(_mailbox)))
    _, _, hours, zone = cached
    if hours is None and zone is None:
        return agent
    return replace(agent, settings=with_mailbox_hours(settings, hours, zone))


def load_group(store: Store, group_id: str) -> Group:
    row = store.get_group(group_id) if SLUG.fullmatch(group_id) else None
    if row is None:
        raise AgentNotFound(f"no group {group_id[:40]!r}")
    return Group(row["id"], row["name"], tuple(row["members"]))


def add_agent(
    store: Store,
    config: Config,
    agent_id: str,
    *,
    pbx: str,
    extension: str,
    name: str,
    email: str | None = None,
    booking_link_id: int | None = None,
    conflict_link_ids: Sequence[int] = (),
    settings: Mapping[str, Any] | None = None,
) -> Agent:
    """Store a new agent; ``BookingRefused`` for bad input, ``AgentExists`` if taken."""
    check_slug(agent_id)
    if config.pbxes and pbx not in config.pbxes:
        raise AgentNotFound(f"no PBX {pbx[:40]!r} in the configuration")
    if not _EXTENSION.fullmatch(extension):
        raise BookingRefused("extension must be 1-15 digits")
    if not name.strip() or len(name) > 100:
        raise BookingRefused("name must be 1-100 characters")
    if email is not None:
        check_email(email)
    parsed = parse_settings(settings or {})
    _check_links(store, booking_link_id, conflict_link_ids)
    agent = Agent(
        agent_id, pbx, extension, name.strip(), parsed, booking_link_id,
        tuple(conflict_link_ids), email,
    )  # fmt: skip
    store.add_agent(agent_row(agent))
    return agent


def set_agent(
    store: Store,
    agent_id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    booking_link_id: int | str | None = "keep",
    conflict_link_ids: Sequence[int] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Agent:
    """Change an agent: only what is given (``booking_link_id`` "keep" keeps it)."""
    agent = _stored_agent(store, agent_id)
    before = agent.booking_link_id
    if name is not None:
        if not name.strip() or len(name) > 100:
            raise BookingRefused("name must be 1-100 characters")
        agent = replace(agent, name=name.strip())
    if email is not None:
        agent = replace(agent, email=check_email(email) if email else None)
    if booking_link_id != "keep":
        assert booking_link_id is None or isinstance(booking_link_id, int)
        agent = replace(agent, booking_link_id=booking_link_id)
    if conflict_link_ids is not None:
        agent = replace(agent, conflict_link_ids=tuple(conflict_link_ids))
    if settings is not None:
        agent = replace(agent, settings=parse_settings(settings, agent.settings))
    _check_links(store, agent.booking_link_id, agent.conflict_link_ids,
                 new_booking_link=agent.booking_link_id != before)  # fmt: skip
    row = agent_row(agent)
    del row["id"]
    if not store.update_agent(agent_id, row):
        raise AgentNotFound(f"no agent {agent_id!r}")
    return with_mailbox_defaults(store, agent)


def add_group(store: Store, group_id: str, name: str, members: Sequence[str]) -> Group:
    check_slug(group_id, "group id")
    if not members:
        raise BookingRefused("a group needs at least one agent")
    for member in members:
        load_agent(store, member)
    store.add_group(group_id, name.strip() or group_id, list(dict.fromkeys(members)))
    return load_group(store, group_id)


def agent_row(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "pbx": agent.pbx,
        "extension": agent.extension,
        "name": agent.name,
        "email": agent.email,
        "settings": stored_json(agent.settings),
        "booking_link_id": agent.booking_link_id,
        "conflict_link_ids": list(agent.conflict_link_ids),
    }


def agent_json(agent: Agent) -> dict[str, Any]:
    """An agent as the admin API and ``agents show --json`` answer it."""
    return {
        "id": agent.id,
        "pbx": agent.pbx,
        "extension": agent.extension,
        "name": agent.name,
        "email": agent.email,
        "booking_link_id": agent.booking_link_id,
        "conflict_link_ids": list(agent.conflict_link_ids),
        "settings": settings_json(agent.settings),
    }


def _check_links(
    store: Store, booking: int | None, conflicts: Sequence[int], *, new_booking_link: bool = True
) -> None:
    """The links exist and the booking link can be written; a read-only grant is
    refused when it is chosen (``new_booking_link``), not on every later change."""
    for link_id in ([booking] if booking is not None else []) + list(conflicts):
        if store.get_link(link_id) is None:
            raise AgentNotFound(f"no link {link_id}")
    if booking is not None:
        provider = store.get_link(booking)
        if provider is not None and provider.provider not in BOOKING_PROVIDERS:
            raise LinkUnsuitable(
                f"link {booking} is {provider.provider}: bookings can be written to "
                "CalDAV, Google, Microsoft 365 and Exchange (EWS) calendars"
            )
        if provider is not None and new_booking_link:
            from pbxcal.booking.writeback import read_only_reason

            reason = read_only_reason(store, provider)
            if reason is not None:
                raise LinkUnsuitable(f"link {booking}: {reason}")
