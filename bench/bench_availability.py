"""Benchmark of agent availability: the pure slot computation and the HTTP endpoint.

Run: ``.venv/bin/python bench/bench_availability.py [--requests N] [--concurrency C]``

One agent, 31 days, 1,000 busy events (meetings of 15-90 minutes at random quarter
hours, like ``bench_core``'s slots calendar), stored as the saved expansion of the
agent's conflict link, as the daemon's sync leaves it.

* baseline, the pure computation alone: ``free_slots`` (the core) over the 31 days from
  the merged busy intervals (goal ≤ 2 ms);
* ``slots_of``: the same behind the store (agent row, expansion stamp, bookings query,
  busy time cached per link and expansion);
* the availability endpoint over HTTP: ``GET /api/v1/agents/anna/availability`` for 31
  days on the admin API (the real aiohttp app with bearer-token authentication and the
  audit log line of every call, committed in batches every 50 ms, and the token check
  answered from the 5 s cache of verified tokens) served by a separate process pinned
  to one core, a client pinned to another (keep-alive, ``--concurrency`` requests in
  flight):
  median, p99 and requests/s (goal ≥ 1,000 requests/s, p99 ≤ 10 ms).

The store is SQLite on the temporary directory's file system (``--store-dir`` elsewhere,
e.g. a disk, to see the cost of the audit log's commits there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from pbxcal.booking.agents import add_agent, load_agent
from pbxcal.booking.availability import meeting_intervals, slots_of
from pbxcal.booking.settings import rules_for
from pbxcal.config import Config
from pbxcal.core.ical import EventInstance
from pbxcal.core.slots import free_slots
from pbxcal.core.targets import TitleParser
from pbxcal.store import ExpansionRecord, Store

ZONE = ZoneInfo("Europe/Amsterdam")
_TODAY = datetime.now(ZONE).date()
#: The Monday 7-13 days from now: the 31 days lie inside the agent's horizon.
FIRST = _TODAY + timedelta(days=7 + (7 - _TODAY.weekday()) % 7)
MEETINGS = ["Team meeting", "1:1", "Customer call", "Review", "Planning", "Lunch with Jo"]


def instances(rng: random.Random, count: int = 1000) -> tuple[EventInstance, ...]:
    made = []
    for n in range(count):
        day = FIRST + timedelta(days=rng.randrange(31))
        start = datetime(day.year, day.month, day.day, rng.randrange(6, 17),
                         rng.choice([0, 15, 30, 45]), tzinfo=ZONE).astimezone(UTC)  # fmt: skip
        end = start + timedelta(minutes=rng.choice([15, 30, 45, 60, 90]))
        made.append(EventInstance(f"b{n}@bench", start, end, rng.choice(MEETINGS), False, False))
    return tuple(made)


def prepare(url: str) -> str:
    """Store the link, its expansion, the agent and an admin token; returns the token."""
    from pbxcal.admin.tokens import create_admin_token

    rng = random.Random(12)
    with Store.open(url) as store:
        link = store.add_link("100", "main", "ics", "/dev/null", {})
        made = instances(rng)
        now = datetime.now(UTC)
        begin = datetime.combine(FIRST, datetime.min.time(), tzinfo=UTC) - timedelta(days=30)
        record = ExpansionRecord(begin, begin + timedelta(days=90), made, now)
        store.save_expansion(link.id, record)
        settings = {"buffer_before": 15, "buffer_after": 15, "min_notice_minutes": 0,
                    "horizon_days": 366}  # fmt: skip
        add_agent(store, Config(), "anna", pbx="main", extension="100", name="Anna",
                  booking_link_id=None, conflict_link_ids=[link.id], settings=settings)  # fmt: skip
        _, token = create_admin_token(store, "bench", None, [])
    return token


def median_ms(function: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def pure(url: str, repeat: int) -> int:
    with Store.open(url) as store:
        agent = load_agent(store, "anna")
        record = store.load_link_expansions(agent.conflict_link_ids)[agent.conflict_link_ids[0]]
        parser = TitleParser(Config().policy, frozenset())
        busy = meeting_intervals(record.instances, parser)
        rules = rules_for(agent.settings, 30)
        last = FIRST + timedelta(days=30)
        now = datetime.now(UTC)
        slots = free_slots(busy, rules, FIRST, last, now)
        print(f"1,000 busy events ({len(busy)} merged intervals), 31 days: {len(slots)} slots")
        baseline = median_ms(lambda: free_slots(busy, rules, FIRST, last, now), repeat)
        print(f"  baseline  free_slots alone (the pure computation): {baseline:7.3f} ms "
              "(goal <= 2 ms)")  # fmt: skip
        start = datetime.combine(FIRST, datetime.min.time(), tzinfo=ZONE).astimezone(UTC)
        end = start + timedelta(days=31)

        def stored() -> object:
            return slots_of(agent, store, parser, start, end, 30, now)

        assert len(stored()) == len(slots)  # also fills the per-link cache, like a request
        print(f"  slots_of  store + cache + free_slots:              "
              f"{median_ms(stored, repeat):7.3f} ms")  # fmt: skip
        return len(slots)


def serve(url: str, port: int) -> None:
    """The admin API on 127.0.0.1:port (the server process of the HTTP part)."""
    from aiohttp import web

    from pbxcal.service.clock import SystemClock
    from pbxcal.service.metrics import Metrics
    from pbxcal.web import CONTEXT, WebContext
    from pbxcal.web.api import add_routes
    from pbxcal.web.i18n import Templates

    os.sched_setaffinity(0, {0})
    store = Store.open(url)
    ctx = WebContext(config=Config(), store=store, keys=None, sync=None, clock=SystemClock(),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    app = web.Application()
    app[CONTEXT] = ctx
    add_routes(app, ctx)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def load(
    port: int, token: str, requests: int, concurrency: int, expected: int
) -> list[float]:
    import aiohttp

    path = (f"/api/v1/agents/anna/availability?from={FIRST.isoformat()}"
            f"&to={(FIRST + timedelta(days=30)).isoformat()}&duration=30")  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    left = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            async with session.get(path, headers=headers) as reply:
                body = await reply.json()
                assert reply.status == 200, body
            latencies.append(time.perf_counter() - started)
            assert len(body["slots"]) == expected, (len(body["slots"]), expected)
            continue

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies


def http(url: str, token: str, requests: int, concurrency: int, expected: int) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, (cpus - {0}) or cpus)
        asyncio.run(load(port, token, 200, concurrency, expected))  # warm up
        started = time.perf_counter()
        latencies = asyncio.run(load(port, token, requests, concurrency, expected))
        wall = time.perf_counter() - started
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        print(f"  HTTP      GET availability, 31 days ({requests} requests, "
              f"{concurrency} in flight, server on one core):")  # fmt: skip
        print(f"            median {statistics.median(latencies) * 1000:.2f} ms, p99 {p99:.2f} ms, "
              f"{requests / wall:.0f} requests/s (goal >= 1,000/s, p99 <= 10 ms)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--store-dir", help="directory for the SQLite store")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    with tempfile.TemporaryDirectory(dir=args.store_dir) as work:
        url = f"sqlite:///{Path(work) / 'bench.db'}"
        token = prepare(url)
        expected = pure(url, args.repeat)
        http(url, token, args.requests, args.concurrency, expected)


if __name__ == "__main__":
    main()
