"""One ``pbxcal run`` per SQLite store: an exclusive lock file held for the process's life.

What it does: ``lock_store_for_service(url)`` takes an exclusive, non-blocking
``flock`` on ``<database>.lock`` beside an SQLite store and keeps the file open until
the process ends (the kernel drops the lock when the process dies, however it dies, so
a kill -9 never leaves a stale lock). A second service process on the same store gets
a one-line ``StoreError`` naming the store and the pid holding it. PostgreSQL stores
(several processes form a group there, ``pbxcal.cluster``) and in-memory stores need
no lock and get ``None``.

Why: SQLite has no leases, so two daemons on one file would both write every PBX. The
CLI (``pbxcal links ...``) does not take this lock: it may change links while the
service runs, as before.

What it must not do: block (a second service must fail at once, not wait) or delete
the lock file (deleting it would let a third process lock a new file while the first
still runs).

Start reading at ``lock_store_for_service``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from pbxcal.errors import StoreError


class ServiceLock:
    """The held lock; ``release`` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> ServiceLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_path(database: Path) -> Path:
    """The lock file of the SQLite database ``database``."""
    return database.with_name(database.name + ".lock")


def lock_store_for_service(url: str) -> ServiceLock | None:
    """Lock the SQLite store at ``url`` for this process, or raise ``StoreError``.

    Call once when ``pbxcal run`` opens its store, before anything is written, and keep
    the result for the life of the process. ``None`` for PostgreSQL and in-memory stores.
    """
    database = _sqlite_file(url)
    if database is None:
        return None
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot lock store {database}: {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f" (pid {holder})" if holder else ""
        raise StoreError(
            f"store {database} is in use by another pbxcal service process{who}; "
            "an SQLite store serves one process, use PostgreSQL to run several"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock store {database}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # the pid is only for the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return ServiceLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database or ""
    except ArgumentError:
        raise StoreError("invalid store URL; expected sqlite:///PATH") from None
    if database in ("", ":memory:") or "mode=memory" in url:
        return None
    return Path(database).expanduser().absolute()
