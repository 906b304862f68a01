"""Synced calendar events (one VEVENT per UID and RECURRENCE-ID) with each link's sync state.

What it does: replaces a link's events and its sync state in one transaction (what a
successful fetch left behind), and reads them back: one link (``load_events``, to
re-expand when the horizon moves), every link (``load_all_events``), or only the sync
states (``load_sync_states``, to restore the conditional-fetch validators on start
without reading any event).

What it must not do: leave a link with new events and an old sync state or the other
way round, or accept a naive ``fetched_at``.

Start reading at ``EventTable.replace_events``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select

from pbxcal.calendars.changes import ChangeSet
from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database, upsert
from pbxcal.store.expansions import expansion_row, id_chunks
from pbxcal.store.links import require_link
from pbxcal.store.records import ExpansionRecord, StoredEvent, SyncState
from pbxcal.store.times import require_utc


class EventTable:
    """The event and sync-state calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def replace_events(self, link_id: int, events: Sequence[StoredEvent], state: SyncState) -> None:
        """Replace a link's events and sync state at once; on failure the old ones stay."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for stored in events:
            key = (stored.uid, stored.recurrence_id or "")
            if key in rows:
                rid = f" (recurrence-id {stored.recurrence_id})" if stored.recurrence_id else ""
                raise StoreError(
                    f"link {link_id}: event {stored.uid}{rid} appears twice; previous events kept"
                )
            rows[key] = {
                "link_id": link_id,
                "uid": stored.uid,
                "recurrence_id": key[1],
                "ical": stored.ical,
            }
        state_row = state_values(link_id, state)
        with self._db.transaction(write=True) as conn:
            require_link(conn, link_id)
            conn.execute(delete(db.events).where(db.events.c.link_id == link_id))
            if rows:
                conn.execute(insert(db.events), list(rows.values()))
            save_state(conn, state_row)

    def apply_changes(
        self,
        link_id: int,
        change: ChangeSet,
        fetched_at: datetime,
        expansion: ExpansionRecord | None = None,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None:
        """Apply one change set, its cursor and (optionally) the link's new expansion in
        one transaction: a crash between fetching and committing loses or skips nothing,
        because the next sync starts from the cursor committed with these rows.
        ``etag`` / ``last_modified`` are a document source's validators (ICS)."""
        require_utc(fetched_at, "sync state fetched_at")
        rows = {(r.uid, r.recurrence_id or ""): r for r in change.upserted}
        expansion_values = None if expansion is None else expansion_row(link_id, expansion)
        with self._db.transaction(write=True) as conn:
            require_link(conn, link_id)
            events = db.events.c
            old = conn.execute(
                select(db.sync_state).where(db.sync_state.c.link_id == link_id)
            ).first()
            if change.full:
                conn.execute(delete(db.events).where(events.link_id == link_id))
            for uid in change.removed:
                conn.execute(
                    delete(db.events).where(events.link_id == link_id, events.uid == uid)
                )
            for uid, recurrence_id in change.removed_instances:
                conn.execute(
                    delete(db.events).where(
                        events.link_id == link_id,
                        events.uid == uid,
                        events.recurrence_id == recurrence_id,
                    )
                )
            if rows:
                upsert(
                    conn,
                    db.events,
                    [
                        {"link_id": link_id, "uid": u, "recurrence_id": r, "ical": row.ical}
                        for (u, r), row in rows.items()
                    ],
                    keys=["link_id", "uid", "recurrence_id"],
                )
            timezones, calendar_tz = change.timezones, change.calendar_tz
            hours = change.working_hours
            if old is not None:  # what a change set does not say stays as it is
                hours = hours or old.working_hours
                if not change.full:
                    timezones = timezones or old.timezones
                    calendar_tz = calendar_tz or old.calendar_tz
            state = SyncState(
                etag, last_modified, change.cursor, calendar_tz, timezones, fetched_at, hours
            )
            save_state(conn, state_values(link_id, state))
            if expansion_values is not None:
                upsert(conn, db.expansions, [expansion_values], keys=["link_id"])

    def load_events(self, link_id: int) -> tuple[list[StoredEvent], SyncState | None]:
        """A link's events (by uid, recurrence id) and sync state; ([], None) if none."""
        with self._db.transaction(snapshot=True) as conn:
            stored = [
                _event(row)
                for row in conn.execute(
                    select(db.events)
                    .where(db.events.c.link_id == link_id)
                    .order_by(db.events.c.uid, db.events.c.recurrence_id)
                )
            ]
            row = conn.execute(
                select(db.sync_state).where(db.sync_state.c.link_id == link_id)
            ).first()
        return stored, None if row is None else _state(row)

    def load_all_events(self) -> dict[int, tuple[list[StoredEvent], SyncState | None]]:
        """``load_events`` for every link at once, in two queries."""
        with self._db.transaction(snapshot=True) as conn:
            result: dict[int, tuple[list[StoredEvent], SyncState | None]] = {}
            states = conn.execute(
                select(db.links.c.id.label("id"), db.sync_state)
                .select_from(
                    db.links.outerjoin(db.sync_state, db.sync_state.c.link_id == db.links.c.id)
                )
                .order_by(db.links.c.id)
            )
            for row in states:
                result[row.id] = ([], None if row.link_id is None else _state(row))
            everything = conn.execute(
                select(db.events).order_by(
                    db.events.c.link_id, db.events.c.uid, db.events.c.recurrence_id
                )
            )
            for row in everything:
                entry = result.get(row.link_id)
                if entry is not None:
                    entry[0].append(_event(row))
        return result

    def load_sync_states(self, link_ids: Collection[int] | None = None) -> dict[int, SyncState]:
        """Every link's sync state, or only those of ``link_ids`` (links never fetched
        are absent). One query (per ``ID_CHUNK`` ids), no events."""
        table = db.sync_state
        with self._db.transaction() as conn:
            if link_ids is None:
                rows = conn.execute(select(table).order_by(table.c.link_id))
                return {row.link_id: _state(row) for row in rows}
            return {
                row.link_id: _state(row)
                for chunk in id_chunks(link_ids)
                for row in conn.execute(select(table).where(table.c.link_id.in_(chunk)))
            }


def state_values(link_id: int, state: SyncState) -> dict[str, Any]:
    """The ``sync_state`` row for ``state``; ``ValueError`` for a naive ``fetched_at``."""
    require_utc(state.fetched_at, "sync state fetched_at")
    return {
        "link_id": link_id,
        "etag": state.etag,
        "last_modified": state.last_modified,
        "sync_token": state.sync_token,
        "calendar_tz": state.calendar_tz,
        "timezones": state.timezones,
        "fetched_at": state.fetched_at,
        "working_hours": dict(state.working_hours) if state.working_hours else None,
    }


def save_state(conn: Connection, row: dict[str, Any]) -> None:
    """Insert or overwrite one link's sync state."""
    upsert(conn, db.sync_state, [row], keys=["link_id"])


def _event(row: Row[Any]) -> StoredEvent:
    return StoredEvent(uid=row.uid, recurrence_id=row.recurrence_id or None, ical=row.ical)


def _state(row: Row[Any]) -> SyncState:
    return SyncState(
        etag=row.etag,
        last_modified=row.last_modified,
        sync_token=row.sync_token,
        calendar_tz=row.calendar_tz,
        timezones=row.timezones,
        fetched_at=row.fetched_at,
        working_hours=row.working_hours,
    )
