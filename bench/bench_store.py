"""Benchmark of the state store (SQLite file) at the scale of 10,000 links / extensions.

Run: ``.venv/bin/python bench/bench_store.py [--links N] [--repeat N]``

* restart: ``load_expansions()`` for N links x 20 saved instances (what the daemon reads
  on start now; goal well under 1 s for 10,000 links), against the old restart path as
  baseline: ``load_all_events()`` (two recurring VEVENTs per link, 20 instances over the
  horizon) and expanding every link's calendar again (``join_calendar`` +
  ``expand_calendar``).
* applied: ``save_applied_changes`` of 1 and of 100 changed extensions on a PBX with N
  applied extensions, against the old ``save_applied`` (delete the PBX's rows, insert all
  N again, one transaction; re-implemented here since the store no longer has it).
* link watcher: one ``links_version()`` poll, against re-reading all N links with
  ``list_links()`` (what the watcher did every 5 s before).
* one small write (``log_sync``) with the rollback journal the store uses now, against
  WAL (the old journal mode, given up to avoid SIGBUS): the price of that choice.

Prints the median wall time of ``--repeat`` runs (default 5) of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert

from pbxcal.calendars.snapshot import join_calendar
from pbxcal.core.ical import EventInstance, expand_calendar
from pbxcal.store import Store, SyncState, engine
from pbxcal.store import schema as db
from pbxcal.store.events import state_values
from pbxcal.store.expansions import encode

T0 = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
HORIZON = timedelta(days=14)


def median(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fill(store: Store, links: int) -> list[int]:
    """N links, each with two daily VEVENTs, a sync state and a 20-instance expansion.

    Written straight into the tables in one transaction (the calls would take one
    transaction each); the rows are exactly what the store's calls write.
    """
    ids = [
        link.id
        for link in store.sync_config_links(
            [(str(100_000 + n), "main", "ics", f"https://x.test/{n}.ics", {}) for n in range(links)]
        )
    ]
    state = SyncState("e", None, None, "UTC", "", T0)
    event_rows, state_rows, expansion_rows = [], [], []
    for n, link_id in enumerate(ids):
        instances = []
        for k in range(2):
            start = T0 + timedelta(hours=k * 3 + n % 8)
            uid = f"daily-{n}-{k}@bench"
            ical = (
                "BEGIN:VEVENT\r\n"
                f"UID:{uid}\r\n"
                f"DTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
                f"DTEND:{start + timedelta(hours=1):%Y%m%dT%H%M%SZ}\r\n"
                "RRULE:FREQ=DAILY\r\n"
                "SUMMARY:+31612345678\r\n"
                "END:VEVENT\r\n"
            )
            event_rows.append({"link_id": link_id, "uid": uid, "recurrence_id": "", "ical": ical})
            for day in range(10):
                begin = start + timedelta(days=day)
                instances.append(
                    EventInstance(uid, begin, begin + timedelta(hours=1), "+31612345678")
                )
        state_rows.append(state_values(link_id, state))
        expansion_rows.append(
            {
                "link_id": link_id,
                "range_start": T0,
                "range_end": T0 + timedelta(days=10),
                "computed_at": T0,
                "instances": encode(tuple(instances)),
            }
        )
    with store._db.transaction(write=True) as conn:
        conn.execute(insert(db.events), event_rows)
        conn.execute(insert(db.sync_state), state_rows)
        conn.execute(insert(db.expansions), expansion_rows)
    return ids


def one_write_latency(directory: Path, journal_mode: str, repeat: int) -> float:
    """Median time of one small write transaction (``log_sync``) in a journal mode."""
    saved = engine.SQLITE_JOURNAL_MODE
    engine.SQLITE_JOURNAL_MODE = journal_mode
    try:
        with Store.open(f"sqlite:///{directory}/{journal_mode}.db") as store:
            link = store.add_link("100", "main", "ics", "a")
            return median(repeat, lambda: store.log_sync(link.id, T0, "ok", 1, {}))
    finally:
        engine.SQLITE_JOURNAL_MODE = saved


def old_restart(store: Store) -> int:
    count = 0
    for link_id, (events, state) in store.load_all_events().items():
        assert state is not None
        calendar = join_calendar(
            events, state.timezones, state.calendar_tz, source=f"link {link_id}"
        )
        count += len(expand_calendar(calendar, T0, T0 + timedelta(days=10), UTC).instances)
    return count


def old_save_applied(store: Store, pbx: str, state: dict[str, list[str]]) -> None:
    """The removed ``save_applied``: the PBX's whole state rewritten after every change."""
    rows = [{"pbx": pbx, "extension": ext, "targets": targets} for ext, targets in state.items()]
    with store._db.transaction(write=True) as conn:
        conn.execute(delete(db.applied).where(db.applied.c.pbx == pbx))
        conn.execute(insert(db.applied), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.links, args.repeat

    with tempfile.TemporaryDirectory() as tmp, Store.open(f"sqlite:///{Path(tmp)}/b.db") as store:
        started = time.perf_counter()
        fill(store, n)
        print(f"filled {n} links in {time.perf_counter() - started:.1f}s (SQLite, {tmp})")

        loaded = store.load_expansions()
        assert len(loaded) == n and all(len(r.instances) == 20 for r in loaded.values())
        new = median(repeat, store.load_expansions)
        assert old_restart(store) == 20 * n
        old = median(max(1, repeat // 2), lambda: old_restart(store))
        print(
            f"restart   load_expansions ({n} links x 20 instances): {new * 1000:8.1f} ms"
            f"   baseline load_all_events + expand: {old * 1000:8.1f} ms  ({old / new:.0f}x)"
        )

        state = {str(100_000 + k): ["+31612345678", "333"] for k in range(n)}
        store.save_applied_changes("main", state)
        for changed in (1, 100):

            def change(k: int = changed) -> None:
                store.save_applied_changes("main", {str(100_000 + j): ["444"] for j in range(k)})

            def rewrite(k: int = changed) -> None:
                for j in range(k):
                    state[str(100_000 + j)] = ["444"]
                old_save_applied(store, "main", state)

            new = median(repeat, change)
            old = median(repeat, rewrite)
            print(
                f"applied   save_applied_changes ({changed:3d} of {n}): {new * 1000:8.2f} ms"
                f"   baseline full rewrite: {old * 1000:8.1f} ms  ({old / new:.0f}x)"
            )

        new = median(repeat * 20, store.links_version)
        old = median(repeat, store.list_links)
        print(
            f"watcher   links_version(): {new * 1000:8.3f} ms"
            f"   baseline list_links() of {n}: {old * 1000:8.1f} ms  ({old / new:.0f}x)"
        )

        # the price of leaving WAL (see pbxcal/store/engine.py): one small write
        new = one_write_latency(Path(tmp), engine.SQLITE_JOURNAL_MODE, repeat * 20)
        old = one_write_latency(Path(tmp), "wal", repeat * 20)
        print(
            f"one write log_sync() journal={engine.SQLITE_JOURNAL_MODE}: {new * 1000:8.2f} ms"
            f"   baseline journal=wal (old): {old * 1000:8.2f} ms"
        )


if __name__ == "__main__":
    main()
