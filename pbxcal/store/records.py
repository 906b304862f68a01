"""The plain values the store takes and returns: links, events, sync state, log, expansions.

What it does: defines frozen dataclasses with no behaviour, so callers (the daemon, the
CLI, the core) never see SQLAlchemy rows. What it must not do: import SQLAlchemy or know
how a value is stored. Times are tz-aware UTC ``datetime`` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pbxcal.core.ical import EventInstance

#: ``Link.origin`` of a link declared in the TOML config (``Store.sync_config_links``).
ORIGIN_CONFIG = "config"
#: ``Link.origin`` of a link added with the CLI (``Store.add_link``); config never touches it.
ORIGIN_CLI = "cli"


@dataclass(frozen=True)
class Link:
    """One calendar linked to one extension on one PBX."""

    id: int
    extension: str
    pbx: str
    provider: str
    source: str
    settings: dict[str, Any]
    active: bool
    origin: str
    created_at: datetime


@dataclass(frozen=True)
class StoredEvent:
    """One VEVENT as iCalendar text; ``recurrence_id`` is set for an overridden instance."""

    uid: str
    recurrence_id: str | None
    ical: str


@dataclass(frozen=True)
class SyncState:
    """What the last successful fetch of a link's calendar left behind.

    ``etag`` / ``last_modified`` drive conditional fetches; ``sync_token`` is kept for
    the incremental providers of the next issue (Google, Graph, CalDAV sync-collection)
    and is always ``None`` for ICS links today; ``calendar_tz`` is the calendar's own
    zone; ``timezones`` holds the calendar's VTIMEZONE blocks as iCalendar text (needed
    to expand the events); ``working_hours`` what the provider reports as the owner's
    working hours (``ChangeSet.working_hours``; Microsoft 365 only), or ``None``.
    """

    etag: str | None
    last_modified: str | None
    sync_token: str | None
    calendar_tz: str | None
    timezones: str
    fetched_at: datetime
    working_hours: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SyncLogEntry:
    """One line of a link's sync history; ``rejected`` counts events per reason code."""

    link_id: int
    at: datetime
    result: str
    accepted: int
    rejected: dict[str, int]
    message: str


@dataclass(frozen=True)
class ExpansionRecord:
    """A link's calendar expanded over ``[range_start, range_end)``, kept for a fast restart.

    ``instances`` are the expanded occurrences (aware UTC times) as the core produced them;
    ``computed_at`` is when the expansion was made (the daemon re-expands when its horizon
    has moved past ``range_end`` or the calendar changed).
    """

    range_start: datetime
    range_end: datetime
    instances: tuple[EventInstance, ...]
    computed_at: datetime
