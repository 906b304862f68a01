"""pbxcal's state store: links, synced calendar events, applied PBX state, sync history.

What it does: keeps everything the daemon must remember across restarts in one database,
SQLite (a file; the default) or PostgreSQL, through SQLAlchemy Core, with the schema
migrated by Alembic on open (migrations ship inside this package). The API is small,
synchronous and thread-safe; call it from a worker thread, not the event loop.

What it must not do: leak SQLAlchemy types or exceptions (callers see the dataclasses of
``records`` and ``StoreError`` / ``SchemaTooNew``), or store a naive datetime.

Start reading at ``sql.Store`` (the API), then ``schema`` (the tables), ``migrate`` (how
a database is brought to this pbxcal's revision) and ``migrations/versions``.
"""

from __future__ import annotations

from pbxcal.errors import SchemaTooNew, StoreError
from pbxcal.store.records import (
    ORIGIN_CLI,
    ORIGIN_CONFIG,
    Link,
    StoredEvent,
    SyncLogEntry,
    SyncState,
)
from pbxcal.store.sql import SYNC_LOG_KEEP, LinkSpec, Store

__all__ = [
    "ORIGIN_CLI",
    "ORIGIN_CONFIG",
    "SYNC_LOG_KEEP",
    "Link",
    "LinkSpec",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoredEvent",
    "SyncLogEntry",
    "SyncState",
]
