"""Benchmark: pbxcal's CPU per calendar read, a changed read against an unchanged one.

Run::

    .venv/bin/python bench/bench_sync_reads.py [--links 1000]

Writes N small ICS files (the calendars of ``bench_cluster_scale.py``), follows them with
one in-process ``CalendarSync`` on an SQLite store and an in-memory PBX, and reads every
link three times (8 at once, as the daemon does): the first read parses, expands and
stores each calendar (``changed``); the next two find the same document (``unchanged``:
its hash compared, nothing parsed or stored). Prints the process's CPU time per read
(``time.process_time``: every thread) and the wall time of each round. The calendars are
local files: an HTTP provider's request comes on top of these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster_scale import ext_name, write_calendars

from pbxcal.config import Config
from pbxcal.core.policy import NumberPolicy
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import Reconciler
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Store
from pbxcal.testing.fakes import FakePbx


async def measure(n: int) -> None:
    e = max(1, n // 10)
    with tempfile.TemporaryDirectory(prefix="pbxcal-bench-reads-") as tmp:
        base = Path(tmp)
        cals = base / "cals"
        cals.mkdir()
        paths = write_calendars(cals, n, e, datetime.now(UTC) + timedelta(minutes=1))
        specs: list[tuple[str, str, str, str, dict[str, object]]] = [
            (ext_name(i % e), "main", "ics", str(p), {"owner_emails": []})
            for i, p in enumerate(paths)
        ]
        with Store.open(f"sqlite:///{base / 'store.sqlite3'}") as store:
            links = store.sync_config_links(specs)
            clock = SystemClock()
            reconciler = Reconciler(
                {"main": FakePbx()}, NumberPolicy.default("NL"), clock, Metrics()
            )
            config = Config(sync_interval=3600.0, timezone="UTC")
            async with httpx.AsyncClient() as client:
                sync = CalendarSync(store, reconciler, Metrics(), clock, config, client)
                sync.set_links(links)
                slots = asyncio.Semaphore(8)

                async def read(link_id: int) -> str:
                    async with slots:
                        return await sync.sync_link(link_id)

                for label in ("first read", "second read", "third read"):
                    cpu, wall = time.process_time(), time.monotonic()
                    results = await asyncio.gather(*(read(link.id) for link in links))
                    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                    print(
                        f"{n} links, {label} ({', '.join(sorted(set(results)))}): "
                        f"CPU {1000 * cpu / n:.2f} ms per read, {wall:.1f} s in all",
                        flush=True,
                    )
                sync.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one "not read yet" line per extension otherwise
    asyncio.run(measure(args.links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
