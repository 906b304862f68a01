"""Links: which calendar feeds which extension on which PBX, and the link-change counter.

What it does: adds, lists, switches and removes links, makes the config-declared links
match the config (``sync_config_links``), and keeps ``links_version``: one counter that
every change of the links table bumps in the same transaction, so a reader in another
process (the daemon's link watcher, while the CLI writes) learns with one cheap query
whether it must re-read the links. Removing a link removes everything stored for it
(events, sync state, sync log, expansion).

What it must not do: bump the counter for a call that changed nothing (the watcher would
re-read 10,000 links for nothing), or echo a link's source in an error (a private
calendar URL carries its secret).

Start reading at ``LinkTable.add_link``, then ``sync_config_links``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database
from pbxcal.store.records import ORIGIN_CLI, ORIGIN_CONFIG, Link

#: One config-declared link: (extension, pbx, provider, source, settings).
LinkSpec = tuple[str, str, str, str, Mapping[str, Any]]

#: Tables whose rows belong to one link (``link_id``); removed with the link.
LINK_OWNED = (db.events, db.sync_state, db.sync_log, db.expansions)


class LinkTable:
    """The link calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def add_link(
        self,
        extension: str,
        pbx: str,
        provider: str,
        source: str,
        settings: Mapping[str, Any] | None = None,
        *,
        active: bool = True,
        origin: str = ORIGIN_CLI,
    ) -> Link:
        """Link a calendar to an extension; (extension, pbx, source) must be new."""
        _check_origin(origin)
        values = {
            "extension": extension,
            "pbx": pbx,
            "provider": provider,
            "source": source,
            "settings": json_object(
                settings or {}, f"settings of link for extension {extension} on {pbx}"
            ),
            "active": active,
            "origin": origin,
            "created_at": datetime.now(UTC),
        }
        try:
            with self._db.transaction(write=True) as conn:
                _refuse_existing_link(conn, extension, pbx, source)
                link_id = conn.execute(
                    insert(db.links).values(**values).returning(db.links.c.id)
                ).scalar_one()
                bump_links_version(conn)
                return _link(_link_row(conn, link_id))
        except StoreError as exc:
            # Lost a race against another process adding the same link (PostgreSQL):
            # say which link it collided with, like the check above does.
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            with self._db.transaction() as conn:
                _refuse_existing_link(conn, extension, pbx, source)
            raise

    def list_links(self) -> list[Link]:
        """All links, ordered by id. One query."""
        with self._db.transaction() as conn:
            return [_link(row) for row in conn.execute(select(db.links).order_by(db.links.c.id))]

    def extension_links(self, pbx: str, extension: str) -> list[Link]:
        """The links of one extension on one PBX, ordered by id. One query (the unique
        index on extension, pbx, source serves it)."""
        query = (
            select(db.links)
            .where(db.links.c.extension == extension, db.links.c.pbx == pbx)
            .order_by(db.links.c.id)
        )
        with self._db.transaction() as conn:
            return [_link(row) for row in conn.execute(query)]

    def get_link(self, link_id: int) -> Link | None:
        """The link with this id, or None."""
        with self._db.transaction() as conn:
            row = conn.execute(select(db.links).where(db.links.c.id == link_id)).first()
        return None if row is None else _link(row)

    def set_link_active(self, link_id: int, active: bool) -> Link:
        """Switch a link on or off; raises ``StoreError`` for an unknown id."""
        with self._db.transaction(write=True) as conn:
            if _require_link(conn, link_id) != active:
                conn.execute(update(db.links).where(db.links.c.id == link_id).values(active=active))
                bump_links_version(conn)
            return _link(_link_row(conn, link_id))

    def remove_link(self, link_id: int) -> None:
        """Remove a link with everything stored for it; ``StoreError`` if unknown."""
        with self._db.transaction(write=True) as conn:
            _require_link(conn, link_id)
            _delete_links(conn, [link_id])
            bump_links_version(conn)

    def links_version(self) -> int:
        """A number that changes whenever any link changes (any process). One query."""
        with self._db.transaction() as conn:
            version = conn.execute(select(db.links_version.c.version)).scalar()
        return int(version or 0)

    def sync_config_links(self, specs: Sequence[LinkSpec]) -> list[Link]:
        """Make the ``origin="config"`` links match the config; return them all, by id.

        A declared link is added (active) or its provider and settings are updated (its
        ``active`` flag is kept, so a link switched off by the CLI stays off); config links
        no longer declared are removed with their data. A link the CLI added with the same
        (extension, pbx, source) is left alone and is not returned. A link declared twice
        is an error and nothing changes. ``links_version`` moves only if something did.
        """
        declared: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        for extension, pbx, provider, source, settings in specs:
            key = (extension, pbx, source)
            if key in declared:
                raise StoreError(
                    f"link for extension {extension} on {pbx} to that source is declared twice"
                )
            what = f"settings of link for extension {extension} on {pbx}"
            declared[key] = (provider, json_object(settings, what))
        now = datetime.now(UTC)
        with self._db.transaction(write=True) as conn:
            existing = {
                (row.extension, row.pbx, row.source): row for row in conn.execute(select(db.links))
            }
            new_rows: list[dict[str, Any]] = []
            changed: list[tuple[int, str, dict[str, Any]]] = []
            for key, (provider, settings) in declared.items():
                row = existing.get(key)
                if row is None:
                    extension, pbx, source = key
                    new_rows.append(
                        {
                            "extension": extension,
                            "pbx": pbx,
                            "provider": provider,
                            "source": source,
                            "settings": settings,
                            "active": True,
                            "origin": ORIGIN_CONFIG,
                            "created_at": now,
                        }
                    )
                elif row.origin == ORIGIN_CONFIG and (
                    row.provider != provider or row.settings != settings
                ):
                    changed.append((row.id, provider, settings))
            if new_rows:
                conn.execute(insert(db.links), new_rows)
            for link_id, provider, settings in changed:
                conn.execute(
                    update(db.links)
                    .where(db.links.c.id == link_id)
                    .values(provider=provider, settings=settings)
                )
            stale = [
                row.id
                for key, row in existing.items()
                if row.origin == ORIGIN_CONFIG and key not in declared
            ]
            _delete_links(conn, stale)
            if new_rows or changed or stale:
                bump_links_version(conn)
            query = (
                select(db.links).where(db.links.c.origin == ORIGIN_CONFIG).order_by(db.links.c.id)
            )
            return [_link(row) for row in conn.execute(query)]


# -- helpers shared with the other tables ---------------------------------------------------


def bump_links_version(conn: Connection) -> None:
    """Move ``links_version`` on; call inside the transaction that changed the links.

    On PostgreSQL the UPDATE's row lock also orders concurrent link writers, so no two
    committed changes can leave the same version behind.
    """
    bumped = conn.execute(update(db.links_version).values(version=db.links_version.c.version + 1))
    if bumped.rowcount == 0:  # the row migration 0002 inserted is gone: start again
        conn.execute(insert(db.links_version).values(id=1, version=1))


def require_link(conn: Connection, link_id: int) -> None:
    """``StoreError`` unless a link with this id exists."""
    _require_link(conn, link_id)


def json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as it will come back from the database (JSON round trip)."""
    try:
        loaded = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from None
    assert isinstance(loaded, dict)
    return loaded


def _check_origin(origin: str) -> None:
    if origin not in (ORIGIN_CONFIG, ORIGIN_CLI):
        raise StoreError(f"link origin must be {ORIGIN_CONFIG!r} or {ORIGIN_CLI!r}, not {origin!r}")


def _require_link(conn: Connection, link_id: int) -> bool:
    """Whether the link is active; ``StoreError`` if there is no such link."""
    active = conn.execute(select(db.links.c.active).where(db.links.c.id == link_id)).first()
    if active is None:
        raise StoreError(f"no link with id {link_id}")
    return bool(active[0])


def _refuse_existing_link(conn: Connection, extension: str, pbx: str, source: str) -> None:
    found = conn.execute(
        select(db.links.c.id).where(
            db.links.c.extension == extension, db.links.c.pbx == pbx, db.links.c.source == source
        )
    ).scalar()
    if found is not None:
        # the source is not repeated: a private calendar URL carries its secret in it
        raise StoreError(
            f"link for extension {extension} on {pbx} to that source exists already (id {found})"
        )


def _link_row(conn: Connection, link_id: int) -> Row[Any]:
    return conn.execute(select(db.links).where(db.links.c.id == link_id)).one()


def _delete_links(conn: Connection, ids: Sequence[int]) -> None:
    # Explicit, not only ON DELETE CASCADE: correct even on a connection without
    # SQLite's foreign_keys pragma (e.g. someone poking at the file with sqlite3).
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        for table in LINK_OWNED:
            conn.execute(delete(table).where(table.c.link_id.in_(chunk)))
        conn.execute(delete(db.links).where(db.links.c.id.in_(chunk)))


def _link(row: Row[Any]) -> Link:
    return Link(
        id=row.id,
        extension=row.extension,
        pbx=row.pbx,
        provider=row.provider,
        source=row.source,
        settings=dict(row.settings),
        active=bool(row.active),
        origin=row.origin,
        created_at=row.created_at,
    )
