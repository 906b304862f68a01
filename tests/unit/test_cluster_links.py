"""LinkShare reloads only the links that changed, and ends where a full reload ends.

Two "processes" (each a Reconciler, a CalendarSync and a LinkShare) share one real
SQLite store; the NOTIFY fan-out is a stub that hands every notification to both
processes' listeners (as PostgreSQL does, the sender included) or drops it (a lost
notification). Process A reads the calendars; process B only hears of them. The store
wrapper counts which links each process loads, so the tests see what a change costs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from pbxcal.calendars import Fetched, Validators
from pbxcal.config import Config
from pbxcal.core.policy import NumberPolicy
from pbxcal.service.cluster_links import LinkShare
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import Reconciler
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Link, Store
from pbxcal.testing.fakes import FakeClock, FakePbx

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
LINKS = 12


def document(version: int, link_id: int) -> bytes:
    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y%m%dT%H%M%SZ")

    start = NOW + timedelta(minutes=10 * version + link_id)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:l{link_id}@test\r\nDTSTAMP:{stamp(NOW)}\r\nDTSTART:{stamp(start)}\r\n"
        f"DTEND:{stamp(start + timedelta(minutes=30))}\r\nSUMMARY:06123456{version:02d}\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


class Calendars:
    """Every link's current document (version per link); a source per link."""

    def __init__(self) -> None:
        self.versions: dict[int, int] = {}

    def source(self, link: Link) -> Any:
        calendars = self

        class Source:
            provider = "ics-file"

            async def fetch(self, previous: Validators | None) -> Fetched:
                version = calendars.versions.get(link.id, 0)
                return Fetched(document(version, link.id), Validators(etag=f"v{version}"))

        return Source()


class CountingStore:
    """The store, counting the links whose expansions are loaded."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.loaded: list[int] = []
        self.full_loads = 0

    def load_expansions(self, link_ids: Collection[int] | None = None) -> Any:
        if link_ids is None:
            self.full_loads += 1
        else:
            self.loaded.extend(link_ids)
        return self.store.load_expansions(link_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class Fanout:
    """NOTIFY: every notification to every process (the sender too), unless lost."""

    def __init__(self) -> None:
        self.shares: list[LinkShare] = []
        self.lost = False

    async def link_changed(self, link_id: int) -> None:
        if not self.lost:
            for share in self.shares:
                share.link_changed(link_id)

    async def close(self) -> None:
        return None


class Process:
    def __init__(
        self, store: Store, calendars: Calendars, fanout: Fanout, name: str, clock: FakeClock
    ) -> None:
        self.store = CountingStore(store)
        self.reconciler = Reconciler(
            {"main": FakePbx()}, NumberPolicy.default("NL"), clock, Metrics()
        )
        self.sync = CalendarSync(
            cast(Store, self.store), self.reconciler, Metrics(), clock,
            Config(sync_interval=3600.0, timezone="UTC"), httpx.AsyncClient(),
            source_factory=calendars.source,
        )  # fmt: skip
        self.share = LinkShare(
            "host=/nonexistent", cast(Store, self.store), self.sync, name, backstop=3600.0
        )
        self.share.notifier = fanout  # type: ignore[assignment]
        fanout.shares.append(self.share)

    def instances(self) -> dict[int, object]:
        return {i: self.reconciler.link_instances(i) for i in range(1, LINKS + 1)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}") as opened:
        yield opened


async def settle(*processes: Process) -> None:
    for process in processes:
        await process.share.reloaded()


def restored(store: Store, links: list[Link]) -> dict[int, object]:
    """What a full load gives: every stored expansion, as ``restore`` hands it over."""
    expansions = store.load_expansions()
    return {
        link.id: (
            ((link.pbx, link.extension), expansions[link.id].instances)
            if link.id in expansions
            else None
        )
        for link in links
    }


def held(process: Process) -> dict[int, object]:
    result: dict[int, object] = {}
    for link_id, link in process.instances().items():
        result[link_id] = None if link is None else (link.key, link.instances)  # type: ignore[attr-defined]
    return result


async def test_a_change_loads_only_that_link_and_equals_a_full_load(store: Store) -> None:
    calendars, fanout = Calendars(), Fanout()
    links = [store.add_link(str(100 + i % 4), "main", "ics", f"/c{i}.ics") for i in range(LINKS)]
    clock = FakeClock(NOW)  # moved on before every read: each expansion is stamped anew
    a = Process(store, calendars, fanout, "member-a", clock)
    b = Process(store, calendars, fanout, "member-b", clock)
    for process in (a, b):
        process.sync.set_links(links)  # links_added: nothing stored yet, nothing loaded
    await settle(a, b)
    for link in links:
        clock.advance(1)
        assert await a.sync.sync_link(link.id) == "changed"
    await settle(a, b)
    assert a.store.loaded == []  # its own notifications load nothing
    assert sorted(b.store.loaded) == [link.id for link in links]  # each link once
    assert held(b) == held(a) == restored(store, links)

    # one link changes: B loads that link and no other
    b.store.loaded.clear()
    calendars.versions[links[3].id] = 1
    clock.advance(1)
    assert await a.sync.sync_link(links[3].id) == "changed"
    await settle(a, b)
    assert b.store.loaded == [links[3].id]
    assert a.store.loaded == []
    assert held(b) == held(a) == restored(store, links)
    assert a.store.full_loads == b.store.full_loads == 0


async def test_the_backstop_loads_only_what_changed_unnoticed(store: Store) -> None:
    calendars, fanout = Calendars(), Fanout()
    links = [store.add_link(str(100 + i % 4), "main", "ics", f"/c{i}.ics") for i in range(LINKS)]
    clock = FakeClock(NOW)  # moved on before every read: each expansion is stamped anew
    a = Process(store, calendars, fanout, "member-a", clock)
    b = Process(store, calendars, fanout, "member-b", clock)
    for process in (a, b):
        process.sync.set_links(links)
    for link in links:
        clock.advance(1)
        await a.sync.sync_link(link.id)
    await settle(a, b)
    b.store.loaded.clear()
    fanout.lost = True  # these notifications never arrive
    changed = [links[0].id, links[5].id, links[11].id]
    for link_id in changed:
        calendars.versions[link_id] = 2
        clock.advance(1)
        assert await a.sync.sync_link(link_id) == "changed"
    await settle(a, b)
    assert b.store.loaded == []
    assert held(b) != restored(store, links)  # B is behind until the backstop
    b.share.resync()  # the polling backstop (or a LISTEN reconnect)
    a.share.resync()
    await settle(a, b)
    assert sorted(b.store.loaded) == sorted(changed)  # stamps compared, 3 links loaded
    assert a.store.loaded == []  # A stored them itself
    assert held(b) == held(a) == restored(store, links)
    assert a.store.full_loads == b.store.full_loads == 0
