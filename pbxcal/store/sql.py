"""``Store``: pbxcal's state in SQLite or PostgreSQL through SQLAlchemy Core.

What it does: opens the database named by a URL (creating an SQLite file, and its
directory when that directory's parent exists), migrates it to this pbxcal's schema,
and offers small synchronous calls for db.links, synced db.events, applied PBX state and the
sync log. Every call runs in its own connection and transaction, so a ``Store`` can be
shared by threads (the daemon calls it from a worker thread, never from the event loop).

What it must not do: let a SQLAlchemy or DBAPI exception escape (``_store_errors`` is the
one place they become ``StoreError``); leave half a change behind (each call is one
transaction); hand out or accept naive datetimes; log or print a database password.

SQLite is tuned for one daemon plus an occasional CLI process: WAL journal,
``synchronous=NORMAL``, foreign keys on, a busy timeout, and ``BEGIN IMMEDIATE`` for
writes so two writers queue on the busy timeout instead of failing with "database is
locked" when a read transaction tries to upgrade. PostgreSQL reads that span several
queries run in REPEATABLE READ so events and their sync state come from one snapshot.

Start reading at ``Store.open``, then ``Store._transaction``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Row,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from pbxcal.errors import StoreError
from pbxcal.store import migrate
from pbxcal.store import schema as db
from pbxcal.store.records import (
    ORIGIN_CLI,
    ORIGIN_CONFIG,
    Link,
    StoredEvent,
    SyncLogEntry,
    SyncState,
)

#: Rows of sync history kept per link; older rows are pruned on every ``log_sync``.
SYNC_LOG_KEEP = 200
#: How long an SQLite writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: One config-declared link: (extension, pbx, provider, source, settings).
LinkSpec = tuple[str, str, str, str, Mapping[str, Any]]


class Store:
    """The state store. Create with ``Store.open(url)``; every method is one transaction."""

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._where = where  # the path or password-free URL, for error messages
        self._closed = False

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (or create) the store at ``url`` and migrate it to this pbxcal's schema.

        ``url`` is ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db`` or
        ``postgresql://user:pw@host/db`` (psycopg 3 is used for a bare ``postgresql``).
        Raises ``SchemaTooNew`` for a database written by a newer pbxcal (nothing is
        changed) and ``StoreError`` with a one-line reason for anything else.
        """
        engine, where = _create_engine(url)
        store = cls(engine, where)
        try:
            with store._transaction(write=True, action="cannot open store") as conn:
                migrate.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        """Close all pooled connections; the store cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self._where}>"

    def schema_revision(self) -> str:
        """The Alembic revision the database is at (this pbxcal's head after ``open``)."""
        with self._transaction() as conn:
            return migrate.current_revision(conn) or ""

    # -- links ---------------------------------------------------------------------------

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
            "settings": _json_object(settings or {}, f"settings of link to {source}"),
            "active": active,
            "origin": origin,
            "created_at": datetime.now(UTC),
        }
        try:
            with self._transaction(write=True) as conn:
                _refuse_existing_link(conn, extension, pbx, source)
                link_id = conn.execute(
                    insert(db.links).values(**values).returning(db.links.c.id)
                ).scalar_one()
                return _link(_link_row(conn, link_id))
        except StoreError as exc:
            # Lost a race against another process adding the same link (PostgreSQL):
            # say which link it collided with, like the check above does.
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            with self._transaction() as conn:
                _refuse_existing_link(conn, extension, pbx, source)
            raise

    def list_links(self, *, active_only: bool = False) -> list[Link]:
        """All links (or only active ones), ordered by id. One query."""
        query = select(db.links).order_by(db.links.c.id)
        if active_only:
            query = query.where(db.links.c.active.is_(True))
        with self._transaction() as conn:
            return [_link(row) for row in conn.execute(query)]

    def get_link(self, link_id: int) -> Link | None:
        """The link with this id, or None."""
        with self._transaction() as conn:
            row = conn.execute(select(db.links).where(db.links.c.id == link_id)).first()
        return None if row is None else _link(row)

    def set_link_active(self, link_id: int, active: bool) -> Link:
        """Switch a link on or off; raises ``StoreError`` for an unknown id."""
        with self._transaction(write=True) as conn:
            _require_link(conn, link_id)
            conn.execute(update(db.links).where(db.links.c.id == link_id).values(active=active))
            return _link(_link_row(conn, link_id))

    def remove_link(self, link_id: int) -> None:
        """Remove a link with its db.events, sync state and log; ``StoreError`` if unknown."""
        with self._transaction(write=True) as conn:
            _require_link(conn, link_id)
            _delete_links(conn, [link_id])

    def sync_config_links(self, specs: Sequence[LinkSpec]) -> list[Link]:
        """Make the ``origin="config"`` links match the config; return them all, by id.

        A declared link is added (active) or its provider and settings are updated (its
        ``active`` flag is kept, so a link switched off by the CLI stays off); config links
        no longer declared are removed with their data. A link the CLI added with the same
        (extension, pbx, source) is left alone and is not returned. A link declared twice
        is an error and nothing changes.
        """
        declared: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        for extension, pbx, provider, source, settings in specs:
            key = (extension, pbx, source)
            if key in declared:
                raise StoreError(
                    f"link for extension {extension} on {pbx} to {source} is declared twice"
                )
            settings_json = _json_object(settings, f"settings of link to {source}")
            declared[key] = (provider, settings_json)
        now = datetime.now(UTC)
        with self._transaction(write=True) as conn:
            existing = {
                (row.extension, row.pbx, row.source): row for row in conn.execute(select(db.links))
            }
            new_rows: list[dict[str, Any]] = []
            changed: list[dict[str, Any]] = []
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
                    changed.append({"id": row.id, "provider": provider, "settings": settings})
            if new_rows:
                conn.execute(insert(db.links), new_rows)
            for change in changed:
                conn.execute(
                    update(db.links)
                    .where(db.links.c.id == change["id"])
                    .values(provider=change["provider"], settings=change["settings"])
                )
            stale = [
                row.id
                for key, row in existing.items()
                if row.origin == ORIGIN_CONFIG and key not in declared
            ]
            _delete_links(conn, stale)
            query = (
                select(db.links).where(db.links.c.origin == ORIGIN_CONFIG).order_by(db.links.c.id)
            )
            return [_link(row) for row in conn.execute(query)]

    # -- synced events -------------------------------------------------------------------

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
        state_values = _state_values(state)
        with self._transaction(write=True) as conn:
            _require_link(conn, link_id)
            conn.execute(delete(db.events).where(db.events.c.link_id == link_id))
            if rows:
                conn.execute(insert(db.events), list(rows.values()))
            _upsert_state(conn, link_id, state_values)

    def touch_sync_state(self, link_id: int, state: SyncState) -> None:
        """Record a fetch that changed no events (e.g. 304 Not Modified)."""
        state_values = _state_values(state)
        with self._transaction(write=True) as conn:
            _require_link(conn, link_id)
            _upsert_state(conn, link_id, state_values)

    def load_events(self, link_id: int) -> tuple[list[StoredEvent], SyncState | None]:
        """A link's events (by uid, recurrence id) and sync state; ([], None) if none."""
        with self._transaction(snapshot=True) as conn:
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
        """``load_events`` for every link at once, in two queries (for the daemon's start)."""
        with self._transaction(snapshot=True) as conn:
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

    # -- applied state per PBX -----------------------------------------------------------

    def save_applied(self, pbx: str, state: Mapping[str, Sequence[str]]) -> None:
        """Replace what pbxcal last wrote to ``pbx``: extension -> targets."""
        rows = []
        for extension, targets in state.items():
            if isinstance(targets, str):
                raise StoreError(
                    f"applied state of {extension} on {pbx}: targets must be a list, "
                    f"not the string {targets!r}"
                )
            rows.append({"pbx": pbx, "extension": extension, "targets": list(targets)})
        with self._transaction(write=True) as conn:
            conn.execute(delete(db.applied).where(db.applied.c.pbx == pbx))
            if rows:
                conn.execute(insert(db.applied), rows)

    def load_applied(self, pbx: str) -> dict[str, tuple[str, ...]]:
        """What pbxcal last wrote to ``pbx`` ({} if nothing yet)."""
        with self._transaction() as conn:
            query = (
                select(db.applied).where(db.applied.c.pbx == pbx).order_by(db.applied.c.extension)
            )
            return {row.extension: tuple(row.targets) for row in conn.execute(query)}

    # -- sync log ------------------------------------------------------------------------

    def log_sync(
        self,
        link_id: int,
        at: datetime,
        result: str,
        accepted: int,
        rejected: Mapping[str, int],
        message: str = "",
    ) -> None:
        """Append a line to a link's sync history, keeping the newest ``SYNC_LOG_KEEP``."""
        _require_utc(at, "sync log time")
        values = {
            "link_id": link_id,
            "at": at,
            "result": result,
            "accepted": accepted,
            "rejected": {str(reason): int(count) for reason, count in rejected.items()},
            "message": message,
        }
        with self._transaction(write=True) as conn:
            _require_link(conn, link_id)
            conn.execute(insert(db.sync_log).values(**values))
            keep = (
                select(db.sync_log.c.id)
                .where(db.sync_log.c.link_id == link_id)
                .order_by(db.sync_log.c.at.desc(), db.sync_log.c.id.desc())
                .limit(SYNC_LOG_KEEP)
            )
            conn.execute(
                delete(db.sync_log).where(
                    db.sync_log.c.link_id == link_id,
                    db.sync_log.c.id.not_in(keep.scalar_subquery()),
                )
            )

    def sync_log(self, link_id: int, limit: int = 20) -> list[SyncLogEntry]:
        """A link's newest ``limit`` sync log entries, newest first."""
        query = (
            select(db.sync_log)
            .where(db.sync_log.c.link_id == link_id)
            .order_by(db.sync_log.c.at.desc(), db.sync_log.c.id.desc())
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_log_entry(row) for row in conn.execute(query)]

    def last_sync(self) -> dict[int, SyncLogEntry]:
        """The newest sync log entry of every link that has one. One query."""
        newest = (
            func.row_number()
            .over(
                partition_by=db.sync_log.c.link_id,
                order_by=(db.sync_log.c.at.desc(), db.sync_log.c.id.desc()),
            )
            .label("newest")
        )
        ranked = select(db.sync_log, newest).subquery()
        query = select(ranked).where(ranked.c.newest == 1).order_by(ranked.c.link_id)
        with self._transaction() as conn:
            return {row.link_id: _log_entry(row) for row in conn.execute(query)}

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _transaction(
        self, *, write: bool = False, snapshot: bool = False, action: str = "store"
    ) -> Iterator[Connection]:
        """One connection and transaction; commits on success, maps errors on failure.

        ``write`` takes SQLite's write lock up front (``BEGIN IMMEDIATE``); ``snapshot``
        makes several PostgreSQL reads see one consistent state.
        """
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        with _store_errors(f"{action} {self._where}"), self._engine.connect() as conn:
            if write:
                conn.execution_options(pbxcal_write=True)
            elif snapshot and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn


# -- engine creation ---------------------------------------------------------------------


def _create_engine(url: str) -> tuple[Engine, str]:
    """An engine for ``url`` and a password-free name of the database for messages."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL may hold a password; do not echo it.
        raise StoreError(
            "invalid store URL; expected sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed)
        if backend == "postgresql":
            where = parsed.render_as_string(hide_password=True)
            # Fail within seconds when the server is unreachable, and show up as
            # "pbxcal" in pg_stat_activity; both can be overridden in the URL.
            defaults = {"connect_timeout": 10, "application_name": "pbxcal"}
            connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
            return engine, where
    except (ArgumentError, ImportError) as exc:
        raise StoreError(
            f"cannot open store {parsed.render_as_string(hide_password=True)}: "
            f"database driver unavailable ({_one_line(exc)})"
        ) from exc
    raise StoreError(
        f"unsupported store URL scheme {parsed.drivername!r}; use sqlite:/// or postgresql://"
    )


def _sqlite_engine(url: URL) -> tuple[Engine, str]:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        # One shared connection, or every pooled connection would see its own database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        _tune_sqlite(engine)
        return engine, "sqlite :memory:"
    path = Path(database).expanduser()
    _prepare_sqlite_file(path)
    engine = create_engine(
        url.set(database=str(path)),
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    _tune_sqlite(engine)
    return engine, str(path)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database file (and its directory, if that one's parent exists).

    Checks with the operating system first so the error names the real cause ("Read-only
    file system", "No such file or directory") instead of SQLite's "unable to open
    database file". The file is created 0600: link settings may hold credentials.
    """
    directory = path.absolute().parent
    if not directory.exists():
        try:
            directory.mkdir(mode=0o750)
        except OSError as exc:
            raise StoreError(
                f"cannot create store {path}: cannot create directory {directory} ({exc.strerror})"
            ) from None
    if not directory.is_dir():
        raise StoreError(f"cannot create store {path}: {directory} is not a directory")
    if path.is_dir():
        raise StoreError(f"cannot open store {path}: it is a directory")
    # SQLite also creates <path>-wal and <path>-shm next to the file.
    if not os.access(directory, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(directory) else "permission denied"
        raise StoreError(
            f"cannot write store {path}: directory {directory} is not writable ({why})"
        )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot write store {path}: {exc.strerror}") from None
    os.close(fd)


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module; "begin" below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("pbxcal_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- error mapping -----------------------------------------------------------------------


@contextmanager
def _store_errors(where: str) -> Iterator[None]:
    """The one place SQLAlchemy and DBAPI exceptions become ``StoreError``."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{where}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    for line in str(cause).splitlines():
        if line.strip():
            return line.strip()
    return type(cause).__name__


# -- row helpers ---------------------------------------------------------------------------


def _check_origin(origin: str) -> None:
    if origin not in (ORIGIN_CONFIG, ORIGIN_CLI):
        raise StoreError(f"link origin must be {ORIGIN_CONFIG!r} or {ORIGIN_CLI!r}, not {origin!r}")


def _json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` as it will come back from the database (JSON round trip)."""
    try:
        loaded = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from None
    assert isinstance(loaded, dict)
    return loaded


def _require_utc(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} is naive; pbxcal stores UTC times only")


def _require_link(conn: Connection, link_id: int) -> None:
    if conn.execute(select(db.links.c.id).where(db.links.c.id == link_id)).first() is None:
        raise StoreError(f"no link with id {link_id}")


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
        for table in (db.events, db.sync_state, db.sync_log):
            conn.execute(delete(table).where(table.c.link_id.in_(chunk)))
        conn.execute(delete(db.links).where(db.links.c.id.in_(chunk)))


def _state_values(state: SyncState) -> dict[str, Any]:
    _require_utc(state.fetched_at, "sync state fetched_at")
    return {
        "etag": state.etag,
        "last_modified": state.last_modified,
        "sync_token": state.sync_token,
        "calendar_tz": state.calendar_tz,
        "timezones": state.timezones,
        "fetched_at": state.fetched_at,
    }


def _upsert_state(conn: Connection, link_id: int, values: Mapping[str, Any]) -> None:
    row = {"link_id": link_id, **values}
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(db.sync_state).values(**row)
        conn.execute(
            pg.on_conflict_do_update(
                index_elements=[db.sync_state.c.link_id],
                set_={name: pg.excluded[name] for name in values},
            )
        )
    else:
        lite = sqlite.insert(db.sync_state).values(**row)
        conn.execute(
            lite.on_conflict_do_update(
                index_elements=[db.sync_state.c.link_id],
                set_={name: lite.excluded[name] for name in values},
            )
        )


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
    )


def _log_entry(row: Row[Any]) -> SyncLogEntry:
    return SyncLogEntry(
        link_id=row.link_id,
        at=row.at,
        result=row.result,
        accepted=row.accepted,
        rejected={str(reason): int(count) for reason, count in row.rejected.items()},
        message=row.message,
    )
