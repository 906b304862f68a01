"""What each consumer of the store needs, as small protocols (the store's ports).

What it does: names the calls each consumer makes, so the daemon's pieces and the CLI
type against only those, tests can hand in small fakes, and a change of one consumer's
needs shows up here. ``Store`` satisfies every protocol (``tests/unit/test_store.py``
checks it); ``StateStore`` is all of them together.

What it must not do: hold implementations, or grow a protocol with calls its consumer
does not make.

Consumers: ``SyncStore`` - the daemon's calendar sync (restore on start, save what a
fetch brought, re-expand from stored rows, log each sync); ``AppliedStore`` - the
reconciler's persistence of applied forwardings (with the PBX's lease epoch when several
processes share the store); ``LinkWatchStore`` - the daemon's link
watcher and start-up (config links, poll ``links_version``, re-read links);
``LinkAdminStore`` - the CLI's ``links`` commands; ``SecretStore`` - the providers'
credentials (encrypted; the store needs its key ring) and ``pbxcal keys rotate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pbxcal.calendars.changes import ChangeSet
from pbxcal.store.links import LinkSpec
from pbxcal.store.records import (
    ExpansionRecord,
    Link,
    StoredEvent,
    SyncLogEntry,
    SyncState,
)


@runtime_checkable
class SyncStore(Protocol):
    """The calendar sync: saved expansions and validators on start, events per fetch."""

    def load_expansions(self) -> dict[int, ExpansionRecord]: ...
    def load_sync_states(self) -> dict[int, SyncState]: ...
    def load_events(self, link_id: int) -> tuple[list[StoredEvent], SyncState | None]: ...
    def replace_events(
        self, link_id: int, events: Sequence[StoredEvent], state: SyncState
    ) -> None: ...
    def save_expansion(self, link_id: int, record: ExpansionRecord) -> None: ...
    def apply_changes(
        self,
        link_id: int,
        change: ChangeSet,
        fetched_at: datetime,
        expansion: ExpansionRecord | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None: ...
    def log_sync(
        self,
        link_id: int,
        at: datetime,
        result: str,
        accepted: int,
        rejected: Mapping[str, int],
        message: str = "",
    ) -> None: ...


@runtime_checkable
class AppliedStore(Protocol):
    """The reconciler's record of what it wrote to each PBX."""

    def save_applied_changes(
        self, pbx: str, changes: Mapping[str, Sequence[str]], *, epoch: int | None = None
    ) -> None: ...
    def load_applied(self, pbx: str) -> dict[str, tuple[str, ...]]: ...


@runtime_checkable
class LinkWatchStore(Protocol):
    """The daemon's view of the links: config links on start, then watch for changes."""

    def sync_config_links(self, specs: Sequence[LinkSpec]) -> list[Link]: ...
    def links_version(self) -> int: ...
    def list_links(self) -> list[Link]: ...


@runtime_checkable
class LinkAdminStore(Protocol):
    """The CLI's ``links`` commands."""

    def add_link(
        self,
        extension: str,
        pbx: str,
        provider: str,
        source: str,
        settings: Mapping[str, Any] | None = None,
        *,
        active: bool = True,
        origin: str = ...,
    ) -> Link: ...
    def list_links(self) -> list[Link]: ...
    def get_link(self, link_id: int) -> Link | None: ...
    def set_link_active(self, link_id: int, active: bool) -> Link: ...
    def remove_link(self, link_id: int) -> None: ...
    def last_sync(self) -> dict[int, SyncLogEntry]: ...
    def sync_log(self, link_id: int, limit: int = 20) -> list[SyncLogEntry]: ...
    def close(self) -> None: ...


@runtime_checkable
class SecretStore(Protocol):
    """Link credentials (tokens, keys, passwords), encrypted at rest; see ``secrets``."""

    def save_secret(self, link_id: int, kind: str, value: bytes | str) -> None: ...
    def load_secret(self, link_id: int, kind: str) -> bytes | None: ...
    def delete_secrets(self, link_id: int) -> int: ...
    def rotate_secrets(self) -> int: ...


@runtime_checkable
class StateStore(SyncStore, AppliedStore, LinkWatchStore, LinkAdminStore, SecretStore, Protocol):
    """Everything ``Store.open`` returns."""
