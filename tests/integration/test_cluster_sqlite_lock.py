"""One service process per SQLite store (``pbxcal.store.process_lock``), with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pbxcal.errors import StoreError
from pbxcal.store import Store
from pbxcal.store.process_lock import lock_store_for_service

pytestmark = pytest.mark.integration

HOLDER = textwrap.dedent(
    """
    import sys
    from pbxcal.errors import StoreError
    from pbxcal.store.process_lock import lock_store_for_service
    try:
        lock = lock_store_for_service(sys.argv[1])
    except StoreError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print("locked", flush=True)
    sys.stdin.readline()  # hold it until told (or killed)
    """
)


def holder(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_service_process_on_one_sqlite_store_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'pbxcal.sqlite3'}"
    first = holder(url)
    try:
        assert first.stdout is not None and first.stdout.readline() == "locked\n"
        second = subprocess.run(
            [sys.executable, "-c", HOLDER, url], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2
        assert second.stderr == (
            f"store {tmp_path / 'pbxcal.sqlite3'} is in use by another pbxcal service "
            f"process (pid {first.pid}); an SQLite store serves one process, use "
            "PostgreSQL to run several\n"
        )
        with pytest.raises(StoreError, match=f"pid {first.pid}"):  # and in this process
            lock_store_for_service(url)
        # the CLI still opens the store while the service runs
        Store.open(url).close()
    finally:
        first.kill()
        first.wait()
    # killed -9: the kernel dropped the lock with the process, nothing stale is left
    assert first.returncode == -signal.SIGKILL
    lock = lock_store_for_service(url)
    assert lock is not None
    assert (tmp_path / "pbxcal.sqlite3.lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_postgresql_and_memory_stores_need_no_lock(tmp_path: Path) -> None:
    assert lock_store_for_service("postgresql://pbxcal@127.0.0.1/pbxcal") is None
    assert lock_store_for_service("sqlite://") is None
    assert lock_store_for_service("sqlite:///:memory:") is None


def test_an_unusable_lock_directory_is_a_one_line_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'pbxcal.sqlite3'}"
    with pytest.raises(StoreError, match=r"cannot lock store .*No such file or directory"):
        lock_store_for_service(url)
