"""An open store that becomes unwritable: every write is a one-line ``StoreError`` naming
the store, reads keep working, and the process is never killed (issue #7 item 7).

Each case runs ``store_fault_child.py`` in a child process in a private mount namespace
(``unshare -m``, so its tmpfs / loop mounts vanish with it, even if it dies), because
the failure this guards against is a signal: with SQLite's WAL journal a write through
the memory-mapped ``-shm`` index on an immutable file is SIGBUS, which would kill pytest
itself. ``test_wal_would_be_killed_by_sigbus`` keeps the evidence for that finding: the
same child with the old journal mode dies by signal 7.

These tests need root (mount, chattr, loop devices), like the read-only directory tests
in ``test_store_sqlite.py``; without it they fail and say so, they are not skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).resolve().parent / "store_fault_child.py"
WRITES = [
    "add_link",
    "save_applied_changes",
    "replace_events",
    "save_expansion",
    "log_sync",
    "set_link_active",
]


@pytest.fixture
def fault_dir() -> Iterator[Path]:
    needed = ["unshare", "mount", "chattr", "mkfs.ext4", "findmnt", "truncate"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail(
            f"unwritable-store tests need root and {', '.join(needed)} "
            f"(missing: {', '.join(missing) or 'root'})",
            pytrace=False,
        )
    # Not under pytest's tmp_path: that is 0700 and "nobody" (the permission case) must
    # reach the directory.
    top = Path(tempfile.mkdtemp(prefix="pbxcal-store-fault-"))
    top.chmod(0o755)
    directory = top / "store"
    directory.mkdir()
    try:
        yield directory
    finally:
        # a child killed mid-way cannot take its chattr +i back
        subprocess.run(["chattr", "-R", "-i", str(top)], capture_output=True, check=False)
        shutil.rmtree(top)


def run_child(directory: Path, fault: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = ["unshare", "-m", "--propagation", "private", sys.executable, str(CHILD)]
    return subprocess.run(
        [*command, str(directory), fault, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def report(directory: Path, fault: str) -> dict[str, Any]:
    done = run_child(directory, fault)
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("immutable", "state.db is immutable, chattr +i"),
        ("fs-error", "file system turned read-only, see the kernel log"),
        ("disk-full", "database or disk is full"),
        ("permission", "permission denied"),
    ],
)
def test_unwritable_store_is_a_store_error_and_reads_keep_working(
    fault_dir: Path, fault: str, why: str
) -> None:
    result = report(fault_dir, fault)
    store = result["store"]

    assert sorted(result["writes"]) == sorted(WRITES)
    for name, (kind, message) in result["writes"].items():
        assert kind == "pbxcal.errors.StoreError", f"{name}: {kind}: {message}"
        assert message.startswith(f"cannot write store {store}: "), f"{name}: {message}"
        assert why in message, f"{name}: {message}"
        assert "\n" not in message
    assert result["read_error"] == ""
    # what was written before the fault is all still there, nothing half-written
    assert result["reads"] == {"links": 1, "applied": "+31612345672", "expansions": 1, "etag": "e2"}


def test_wal_would_be_killed_by_sigbus(fault_dir: Path) -> None:
    """The finding behind ``engine``'s journal mode: WAL's mmapped -shm on an immutable
    file. This is the old configuration; the store no longer uses it."""
    done = run_child(fault_dir, "immutable", "wal")
    # unshare reports a child killed by a signal as 128 + the signal number
    assert done.returncode in (-signal.SIGBUS, 128 + signal.SIGBUS), (
        f"expected SIGBUS, got {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}"
    )
