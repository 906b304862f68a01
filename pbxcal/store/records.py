"""The plain values the store takes and returns: links, synced events, sync state, log.

What it does: defines frozen dataclasses with no behaviour, so callers (the daemon, the
CLI, the core) never see SQLAlchemy rows. What it must not do: import SQLAlchemy or know
how a value is stored. Times are tz-aware UTC ``datetime`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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

    ``etag`` / ``last_modified`` / ``sync_token`` drive conditional and incremental
    fetches; ``calendar_tz`` is the calendar's own zone; ``timezones`` holds the
    calendar's VTIMEZONE blocks as iCalendar text (needed to expand the events).
    """

    etag: str | None
    last_modified: str | None
    sync_token: str | None
    calendar_tz: str | None
    timezones: str
    fetched_at: datetime


@dataclass(frozen=True)
class SyncLogEntry:
    """One line of a link's sync history; ``rejected`` counts events per reason code."""

    link_id: int
    at: datetime
    result: str
    accepted: int
    rejected: dict[str, int]
    message: str
