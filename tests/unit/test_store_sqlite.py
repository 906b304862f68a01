"""SQLite-only behaviour of the store: pragmas, creating the file, unusable paths.

The read-only cases need a directory that refuses writes even to root (these tests run as
root, and root ignores ``chmod 0555``). As root they use a read-only bind mount
(``mount --bind -o ro``), which the kernel enforces for every user (EROFS); as a normal
user a ``chmod 0555`` directory does the same job. Paths that cannot work for anyone (a
file where a directory is expected, a missing parent) are tested as well.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pbxcal.store import Store, StoreError


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@contextlib.contextmanager
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody (not even root) can create files in, with one database in it."""
    source = tmp_path / "rw"
    source.mkdir()
    Store.open(url(source / "existing.db")).close()
    if os.geteuid() != 0:
        source.chmod(0o555)
        try:
            yield source
        finally:
            source.chmod(0o755)
        return
    target = tmp_path / "ro"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"a read-only bind mount is needed to test a read-only directory as root "
            f"(needs CAP_SYS_ADMIN): {mounted.stderr.strip()}",
            pytrace=False,
        )
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_pragmas_rollback_journal_no_mmap_foreign_keys_busy_timeout(tmp_path: Path) -> None:
    with Store.open(url(tmp_path / "state.db")) as store, store._db.engine.connect() as conn:
        pragma = conn.exec_driver_sql
        # not WAL: its -shm index is written through a memory mapping (SIGBUS, see engine)
        assert pragma("PRAGMA journal_mode").scalar() == "truncate"
        assert pragma("PRAGMA mmap_size").scalar() == 0
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA busy_timeout").scalar() == 10_000
    assert not (tmp_path / "state.db-shm").exists()
    assert not (tmp_path / "state.db-wal").exists()


def test_a_wal_database_of_an_older_pbxcal_is_switched_to_the_rollback_journal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with Store.open(url(path)) as store:
        link = store.add_link("100", "main", "ics", "a")
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
        raw.execute("UPDATE links SET extension = '101'")
        raw.commit()
        # while that (older) process holds it in WAL mode, a new one refuses to open it
        message = one_line_error(url(path))
        assert message == (
            f"cannot open store {path}: another process (an older pbxcal?) holds it in "
            "WAL mode; stop that process and try again"
        )
    with Store.open(url(path)) as store:
        assert [one.extension for one in store.list_links()] == ["101"]
        assert store.get_link(link.id) is not None
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not WAL
    assert not (tmp_path / "state.db-shm").exists()


def test_creates_the_file_0600_and_a_missing_directory_whose_parent_exists(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new-dir" / "state.db"
    Store.open(url(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent.is_dir()


def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Store.open("sqlite:///rel.db").close()
    assert (tmp_path / "rel.db").is_file()


def one_line_error(store_url: str) -> str:
    with pytest.raises(StoreError) as info:
        Store.open(store_url)
    message = str(info.value)
    assert "\n" not in message
    assert type(info.value) is StoreError
    return message


def test_missing_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "state.db"
    message = one_line_error(url(path))
    assert str(path) in message
    assert "No such file or directory" in message
    assert not (tmp_path / "no").exists()


def test_file_where_a_directory_is_expected(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    path = tmp_path / "afile" / "state.db"
    message = one_line_error(url(path))
    assert message == f"cannot create store {path}: {tmp_path / 'afile'} is not a directory"


def test_directory_where_the_database_is_expected(tmp_path: Path) -> None:
    message = one_line_error(url(tmp_path))
    assert message == f"cannot open store {tmp_path}: it is a directory"


def test_new_database_in_a_read_only_directory(tmp_path: Path) -> None:
    with read_only_dir(tmp_path) as directory:
        path = directory / "state.db"
        message = one_line_error(url(path))
        why = "read-only file system" if os.geteuid() == 0 else "permission denied"
        assert message == (
            f"cannot write store {path}: directory {directory} is not writable ({why})"
        )
        assert not path.exists()


def test_existing_database_in_a_read_only_directory(tmp_path: Path) -> None:
    with read_only_dir(tmp_path) as directory:
        path = directory / "existing.db"
        message = one_line_error(url(path))
        assert str(path) in message


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite file, it is much longer than a header" * 20)
    message = one_line_error(url(path))
    assert message.startswith(f"cannot open store {path}: ")
    assert "not a database" in message


def test_unsupported_or_broken_urls_do_not_echo_passwords() -> None:
    message = one_line_error("mysql://pbx:s3cret@db.example/pbxcal")
    assert "unsupported store URL scheme 'mysql'" in message
    assert "s3cret" not in message
    assert "s3cret" not in one_line_error("::not a url s3cret::")


def test_unreachable_postgres_is_a_store_error_without_password() -> None:
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    message = one_line_error("postgresql://pbx:s3cret@127.0.0.1:9/pbxcal?connect_timeout=2")
    assert message.startswith("cannot open store postgresql+psycopg://pbx:***@127.0.0.1:9/")
    assert "s3cret" not in message


def test_two_stores_on_one_file_write_concurrently(tmp_path: Path) -> None:
    """A daemon and a CLI process: writers queue on the lock instead of failing."""
    path = tmp_path / "state.db"
    stores = [Store.open(url(path)), Store.open(url(path))]
    link = stores[0].add_link("100", "main", "ics", "a")
    errors: list[BaseException] = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def work(store: Store, n: int) -> None:
        try:
            for i in range(25):
                store.log_sync(link.id, t0 + timedelta(seconds=n * 100 + i), "ok", i, {})
                store.sync_log(link.id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()

    assert errors == []
    with Store.open(url(path)) as store:
        assert len(store.sync_log(link.id, limit=1000)) == 150


def test_in_memory_database_works() -> None:
    with Store.open("sqlite://") as store:
        link = store.add_link("100", "main", "ics", "a")
        assert store.list_links() == [link]
