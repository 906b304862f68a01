"""pbxcal's state store: links, synced calendar events, applied PBX state, sync history,
saved expansions.

What it does: keeps everything the daemon must remember across restarts in one database,
SQLite (a file; the default) or PostgreSQL, through SQLAlchemy Core, with the schema
migrated by Alembic on open (migrations ship inside this package). The API is small,
synchronous and thread-safe; call it from a worker thread, not the event loop.

What it must not do: leak SQLAlchemy, sqlite3 or OS exceptions (callers see the
dataclasses of ``records`` and ``StoreError`` / ``SchemaTooNew``, one line that names the
store), store a naive datetime, or ever write SQLite through a memory mapping (an
unwritable file must be an error, not SIGBUS; see ``engine``).

The map::

    ports.py        what each consumer needs: SyncStore, AppliedStore, LinkWatchStore,
                    LinkAdminStore, SecretStore (StateStore = all of them) - type
                    against these
    store.py        Store: open/close + one mixin per table group below
    links.py        links, config links, links_version (the watcher's change counter)
    events.py       synced VEVENT rows with each link's sync state
    expansions.py   each link's expanded instances (fast restart), compact JSON
    applied.py      applied forwardings per PBX, written change by change
    synclog.py      sync history per link, pruned
    secrets.py      link credentials encrypted with AES-GCM, bound to their row; KeyRing
                    and key files (keys live outside the store)
    engine.py       URL -> engine, SQLite tuning (no WAL: why), transactions, the one
                    upsert, the one error mapping
    records.py      the plain values taken and returned
    times.py        aware-UTC rule, epoch encoding
    schema.py       the tables as they are now; migrate.py + migrations/versions build it

Start reading at ``ports``, then ``store.Store.open`` and ``engine``.
"""

from __future__ import annotations

from pbxcal.errors import SchemaTooNew, StoreError
from pbxcal.store.links import LinkSpec
from pbxcal.store.ports import (
    AppliedStore,
    LinkAdminStore,
    LinkWatchStore,
    SecretStore,
    StateStore,
    SyncStore,
)
from pbxcal.store.records import (
    ORIGIN_CLI,
    ORIGIN_CONFIG,
    ExpansionRecord,
    Link,
    StoredEvent,
    SyncLogEntry,
    SyncState,
)
from pbxcal.store.secrets import KeyRing, load_key_ring
from pbxcal.store.store import Store
from pbxcal.store.synclog import SYNC_LOG_KEEP

__all__ = [
    "ORIGIN_CLI",
    "ORIGIN_CONFIG",
    "SYNC_LOG_KEEP",
    "AppliedStore",
    "ExpansionRecord",
    "KeyRing",
    "Link",
    "LinkAdminStore",
    "LinkSpec",
    "LinkWatchStore",
    "SchemaTooNew",
    "SecretStore",
    "StateStore",
    "Store",
    "StoreError",
    "StoredEvent",
    "SyncLogEntry",
    "SyncState",
    "SyncStore",
    "load_key_ring",
]
