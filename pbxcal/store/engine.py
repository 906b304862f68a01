"""The database under the store: engine creation, SQLite tuning, transactions, errors.

What it does: turns a store URL into a SQLAlchemy engine (an SQLite file, created 0600
with its directory when that directory's parent exists; or PostgreSQL through psycopg
3), tunes SQLite, hands out one connection and transaction per call
(``Database.transaction``), offers the one upsert used by every table
(``upsert``), and is the one place where SQLAlchemy, sqlite3 and OS errors become a
one-line ``StoreError`` that names the store (``store_errors``).

What it must not do: know any table but through ``upsert``'s arguments, log or print a
database password, or let a raw ``sqlite3.Error`` / ``OSError`` escape.

SQLite is tuned for one daemon plus an occasional CLI process: a rollback journal
(``journal_mode=TRUNCATE``, not WAL, see below), ``synchronous=NORMAL``, foreign keys
on, ``mmap_size=0``, a busy timeout, and ``BEGIN IMMEDIATE`` for writes so two writers
queue on the busy timeout instead of failing with "database is locked" when a read
transaction tries to upgrade. PostgreSQL reads that span several queries run in
REPEATABLE READ so events and their sync state come from one snapshot.

Why no WAL (issue #7 item 7, the SIGBUS): in WAL mode every connection maps the
``-shm`` file (the WAL index) with ``mmap(MAP_SHARED)`` and writes to it through memory,
not through ``write()``; ``PRAGMA mmap_size`` covers only the database file, never that
mapping. When the kernel refuses to let a page of the mapping be written, the writer
gets SIGBUS instead of an error code. Reproduced here (``tests/unit/
test_store_unwritable.py``): a WAL store, ``chattr +i`` on its files, the next write
kills the process with signal 7 (ext4 fails ``page_mkwrite`` on an immutable inode with
``VM_FAULT_SIGBUS``, Linux >= 5.3). An ext4 that turned itself read-only after an error
(``errors=remount-ro``) and a full disk gave clean I/O errors in both journal modes in
the same tests (SQLite writes each new ``-shm`` page with ``write()`` before mapping
it), but any fault on an already-mapped page is a signal, not an error. A read-only
bind mount cannot be applied under an open store at all (``mount`` says busy while a
file is open for writing); a store opened on one is refused by ``Store.open``.
SQLite only keeps the WAL index off shared memory when it holds the database
exclusively (``locking_mode=EXCLUSIVE``, or the ``unix-excl`` VFS), which would lock the
CLI out while the daemon runs. A rollback journal has no shared-memory file at all, and
with ``mmap_size=0`` every page goes through ``read()``/``write()``: an unwritable store
is an error code (I/O error, read-only, disk full), i.e. a ``StoreError`` whose message
says why when the OS can tell (``diagnose``), and reads keep working. The price: a small
write transaction costs about 1.5 ms instead of 0.4 ms (two fsyncs; ``bench/
bench_store.py``), and a writer waits for running readers to finish before it commits
(the busy timeout covers it). ``TRUNCATE`` rather than ``DELETE`` saves creating and
unlinking the journal on every write; the CLI hands ``-journal`` to the directory's owner
like the database. A database left in WAL mode by an older pbxcal is switched back on
open; while another process still holds it in WAL mode the open is refused with a
message saying so.

Start reading at ``Database.open``, then ``Database.transaction`` and ``store_errors``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from pbxcal.errors import StoreError

#: How long an SQLite writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: SQLite's journal mode; see the module docstring for why it is not WAL.
SQLITE_JOURNAL_MODE = "truncate"

_FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h, _IOR('f', 1, long)
_FS_IMMUTABLE_FL = 0x00000010
_FS_APPEND_FL = 0x00000020


class Database:
    """An engine plus the name of the database for messages; see the module docstring."""

    def __init__(self, engine: Engine, where: str, path: Path | None = None) -> None:
        self.engine = engine
        #: the path or password-free URL, for error messages
        self.where = where
        #: the SQLite file (None for PostgreSQL and in-memory SQLite), for diagnosing
        self.path = path
        self.closed = False

    @classmethod
    def open(cls, url: str) -> Database:
        """An engine for ``url``; nothing is connected yet. ``StoreError`` if unusable."""
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
                return _sqlite_database(parsed)
            if backend == "postgresql":
                where = parsed.render_as_string(hide_password=True)
                # Fail within seconds when the server is unreachable, and show up as
                # "pbxcal" in pg_stat_activity; both can be overridden in the URL.
                defaults = {"connect_timeout": 10, "application_name": "pbxcal"}
                connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
                engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
                return cls(engine, where)
        except (ArgumentError, ImportError) as exc:
            raise StoreError(
                f"cannot open store {parsed.render_as_string(hide_password=True)}: "
                f"database driver unavailable ({one_line(exc)})"
            ) from exc
        raise StoreError(
            f"unsupported store URL scheme {parsed.drivername!r}; use sqlite:/// or postgresql://"
        )

    def close(self) -> None:
        self.closed = True
        self.engine.dispose()

    @contextmanager
    def transaction(
        self, *, write: bool = False, snapshot: bool = False, action: str | None = None
    ) -> Iterator[Connection]:
        """One connection and transaction; commits on success, maps errors on failure.

        ``write`` takes SQLite's write lock up front (``BEGIN IMMEDIATE``); ``snapshot``
        makes several PostgreSQL reads see one consistent state. ``action`` starts the
        error message (default: "cannot write store" / "cannot read store").
        """
        if self.closed:
            raise StoreError(f"store {self.where} is closed")
        verb = action or ("cannot write store" if write else "cannot read store")
        with store_errors(f"{verb} {self.where}", self.path), self.engine.connect() as conn:
            if write:
                conn.execution_options(pbxcal_write=True)
            elif snapshot and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn


# -- the one upsert ----------------------------------------------------------------------


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
) -> None:
    """Insert ``rows`` into ``table``, overwriting the other columns of existing keys.

    ``INSERT ... ON CONFLICT (keys) DO UPDATE SET col = excluded.col``, which SQLite and
    PostgreSQL spell the same way; only the dialect's ``insert`` construct differs. Many
    rows go as one executemany.
    """
    if not rows:
        return
    statement: postgresql.Insert | sqlite.Insert
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(table)
    else:  # Database.open accepts only these two
        statement = sqlite.insert(table)
    updated = [name for name in rows[0] if name not in keys]
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c[name] for name in keys],
            set_={name: statement.excluded[name] for name in updated},
        ),
        [dict(row) for row in rows],
    )


# -- SQLite ------------------------------------------------------------------------------


def _sqlite_database(url: URL) -> Database:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        # One shared connection, or every pooled connection would see its own database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        _tune_sqlite(engine, "sqlite :memory:")
        return Database(engine, "sqlite :memory:")
    path = Path(database).expanduser()
    _prepare_sqlite_file(path)
    engine = create_engine(
        url.set(database=str(path)),
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    _tune_sqlite(engine, str(path))
    return Database(engine, str(path), path)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database file (and its directory, if that one's parent exists).

    Checks with the operating system first so the error names the real cause ("Read-only
    file system", "No such file or directory") instead of SQLite's "unable to open
    database file". The file is created 0600: link settings may hold credentials.
    """
    directory = path.absolute().parent
    try:
        if not directory.exists():
            try:
                directory.mkdir(mode=0o750)
            except OSError as exc:
                raise StoreError(
                    f"cannot create store {path}: cannot create directory {directory} "
                    f"({exc.strerror})"
                ) from None
        if not directory.is_dir():
            raise StoreError(f"cannot create store {path}: {directory} is not a directory")
        if path.is_dir():
            raise StoreError(f"cannot open store {path}: it is a directory")
        # SQLite also creates <path>-journal next to the file.
        if not os.access(directory, os.W_OK | os.X_OK):
            why = "read-only file system" if _read_only_fs(directory) else "permission denied"
            raise StoreError(
                f"cannot write store {path}: directory {directory} is not writable ({why})"
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        why = diagnose(path) or exc.strerror or type(exc).__name__
        raise StoreError(f"cannot write store {path}: {why}") from None
    os.close(fd)


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _tune_sqlite(engine: Engine, where: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module; "begin" below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # Never write the database through a memory mapping (see the docstring).
            cursor.execute("PRAGMA mmap_size = 0")
            try:
                mode = cursor.execute(f"PRAGMA journal_mode = {SQLITE_JOURNAL_MODE}").fetchone()
            except sqlite3.OperationalError:
                # leaving WAL needs the database to itself; anything else is a real error
                mode = cursor.execute("PRAGMA journal_mode").fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    raise
            if mode is not None and str(mode[0]).lower() not in (SQLITE_JOURNAL_MODE, "memory"):
                raise StoreError(
                    f"cannot open store {where}: another process (an older pbxcal?) holds "
                    "it in WAL mode; stop that process and try again"
                )
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("pbxcal_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- errors --------------------------------------------------------------------------------


@contextmanager
def store_errors(where: str, path: Path | None = None) -> Iterator[None]:
    """The one place SQLAlchemy, DBAPI and OS errors become ``StoreError``.

    For an SQLite file, a failed call also says why the file cannot be written when the
    operating system can tell (read-only file system, immutable file, disk full), since
    SQLite itself only says "disk I/O error" or "attempt to write a readonly database".
    """
    try:
        yield
    except StoreError:
        raise
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        why = diagnose(path) if path is not None else None
        detail = one_line(exc)
        message = f"{where}: {detail}" + (f" ({why})" if why and why not in detail else "")
        raise StoreError(message) from exc


def diagnose(path: Path) -> str | None:
    """Why ``path`` (an SQLite file and its journal) cannot be written, if the OS can say."""
    directory = path.absolute().parent
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return None
    if vfs.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if _mount_options(directory) & {"ro", "emergency_ro"}:
        return "file system turned read-only, see the kernel log"
    for candidate in (path, Path(f"{path}-journal"), directory):
        flags = _inode_flags(candidate)
        if flags & _FS_IMMUTABLE_FL:
            return f"{candidate} is immutable, chattr +i"
        if flags & _FS_APPEND_FL:
            return f"{candidate} is append-only, chattr +a"
    if vfs.f_bavail == 0 or vfs.f_favail == 0:
        return "no space left on the file system"
    if not os.access(directory, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        return "permission denied"
    return None


def _mount_options(directory: Path) -> set[str]:
    """The mount and super-block options of the mount holding ``directory`` (Linux).

    An ext4 that hit an error with ``errors=remount-ro`` shows ``emergency_ro`` here
    while ``statvfs`` still says read-write.
    """
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    target = str(directory.absolute())
    best: tuple[int, set[str]] = (-1, set())
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 6:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best[0]:
            super_options = fields[fields.index("-") + 3 :]
            options = set(fields[5].split(","))
            for extra in super_options:
                options |= set(extra.split(","))
            best = (len(mount_point), options)
    return best[1]


def _inode_flags(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        buffer = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0))
        flags: int = struct.unpack("l", buffer)[0]
        return flags
    except OSError:  # a file system without inode flags
        return 0
    finally:
        os.close(fd)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception (the DBAPI error's, not SQLAlchemy's)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    for line in str(cause).splitlines():
        if line.strip():
            return line.strip()
    return type(cause).__name__
