"""Child process for ``test_store_unwritable.py``: makes an open store unwritable, reports.

Run as ``python store_fault_child.py DIRECTORY FAULT [wal]`` (as root, in a private
mount namespace: the test starts it under ``unshare -m``). It opens a store in DIRECTORY,
writes to it, then applies FAULT while the store stays open:

* ``immutable``  ``chattr +i`` on the database and every file next to it (-journal,
  -wal, -shm): the case that killed the daemon by SIGBUS in WAL mode;
* ``fs-error``   DIRECTORY is a fresh ext4 on a loop device mounted
  ``errors=remount-ro``; an ext4 error is triggered, the kernel makes it read-only;
* ``disk-full``  DIRECTORY is a 1 MiB tmpfs; a filler file takes the rest of it;
* ``permission`` the store is opened by ``nobody``, who then loses write permission on
  the database and its directory.

Then it tries every kind of write and the reads, and prints one JSON object: each
write's outcome (``ok``, or the exception type and message) and whether the reads still
worked. A SIGBUS kills the child before it prints: the test sees the signal in the exit
status. With ``wal`` the store's SQLite journal mode is forced back to WAL (the old
setting) to show what happened before.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pbxcal.core.ical import EventInstance
from pbxcal.store import ExpansionRecord, Store, StoredEvent, SyncState, engine

T0 = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


def sync_state(etag: str) -> SyncState:
    return SyncState(etag, None, None, "UTC", "", T0)


def record(n: int) -> ExpansionRecord:
    start = T0 + timedelta(hours=n)
    instance = EventInstance(f"u{n}", start, start + timedelta(hours=1), "+31612345678")
    return ExpansionRecord(T0, T0 + timedelta(days=1), (instance,) * 50, T0)


def event(n: int) -> StoredEvent:
    return StoredEvent(f"u{n}", None, "BEGIN:VEVENT\r\n" + "X" * 2000 + "\r\nEND:VEVENT\r\n")


def prepare(directory: Path, fault: str) -> None:
    if fault == "fs-error":
        image = directory.parent / "ext4.img"
        subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        subprocess.run(
            ["mount", "-o", "loop,errors=remount-ro", str(image), str(directory)], check=True
        )
    elif fault == "disk-full":
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], check=True
        )
    elif fault == "permission":
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)


def break_it(directory: Path, fault: str) -> None:
    if fault == "immutable":
        for path in sorted(directory.iterdir()):
            subprocess.run(["chattr", "+i", str(path)], check=True)
    elif fault == "fs-error":
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(directory)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("1")
    elif fault == "disk-full":
        try:
            with (directory / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        except OSError:
            pass
    elif fault == "permission":
        for path in directory.iterdir():
            path.chmod(0o400)
        directory.chmod(0o500)


def undo(directory: Path, fault: str) -> None:
    if fault == "immutable":
        for path in sorted(directory.iterdir()):
            subprocess.run(["chattr", "-i", str(path)], check=False)


def main() -> None:
    directory, fault = Path(sys.argv[1]), sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "wal":
        engine.SQLITE_JOURNAL_MODE = "wal"
    prepare(directory, fault)
    store = Store.open(f"sqlite:///{directory}/state.db")
    link = store.add_link("100", "main", "ics", "a")
    for n in range(3):
        store.replace_events(link.id, [event(n)], sync_state(f"e{n}"))
        store.save_expansion(link.id, record(n))
        store.log_sync(link.id, T0, "ok", 1, {})
        store.save_applied_changes("main", {"100": [f"+3161234567{n}"]})
    print("ready", file=sys.stderr, flush=True)
    break_it(directory, fault)

    writes: dict[str, Callable[[], object]] = {
        "add_link": lambda: store.add_link("101", "main", "ics", "b"),
        "save_applied_changes": lambda: store.save_applied_changes(
            "main", {str(200 + n): ["333"] for n in range(500)}
        ),
        "replace_events": lambda: store.replace_events(
            link.id, [event(n) for n in range(100)], sync_state("later")
        ),
        "save_expansion": lambda: store.save_expansion(link.id, record(9)),
        "log_sync": lambda: store.log_sync(link.id, T0, "ok", 2, {}),
        "set_link_active": lambda: store.set_link_active(link.id, False),
    }
    outcomes: dict[str, list[str]] = {}
    for name, write in writes.items():
        try:
            write()
            outcomes[name] = ["ok", ""]
        except Exception as exc:  # noqa: BLE001 - the point: report whatever escapes
            outcomes[name] = [f"{type(exc).__module__}.{type(exc).__name__}", str(exc)]
    try:
        reads = {
            "links": len(store.list_links()),
            "applied": store.load_applied("main").get("100", [""])[0],
            "expansions": len(store.load_expansions()),
            "etag": (store.load_events(link.id)[1] or sync_state("none")).etag,
        }
        read_error = ""
    except Exception as exc:  # noqa: BLE001 - reported to the test
        reads, read_error = {}, f"{type(exc).__name__}: {exc}"
    store.close()
    undo(directory, fault)
    print(
        json.dumps(
            {
                "store": f"{directory}/state.db",
                "writes": outcomes,
                "reads": reads,
                "read_error": read_error,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
