"""CalendarSync.health() is kept up to date as results change, and equals a full count.

``health`` feeds ``pbxcal_links{provider, status}`` every few seconds; it is no longer
counted over all links each time but updated when a link is followed, dropped, replaced
or read. Random sequences of those (reads that succeed or fail in different ways, links
changed so that they are followed anew, links dropped while being read) must leave it
equal to a count over every followed link.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pbxcal.calendars import Fetched, Validators
from pbxcal.calendars.health import link_status
from pbxcal.config import Config
from pbxcal.core.policy import NumberPolicy
from pbxcal.errors import CalendarAuthFailed, CalendarUnavailable
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import Reconciler
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Link, Store
from pbxcal.testing.fakes import FakeClock, FakePbx

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
ANSWERS = ("document", "unavailable", "auth", "document")


def document(version: int) -> bytes:
    start = NOW + timedelta(minutes=version)
    end = start + timedelta(minutes=30)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:e@t\r\n"
        f"DTSTAMP:20260330T070000Z\r\nDTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
        f"DTEND:{end:%Y%m%dT%H%M%SZ}\r\nSUMMARY:0612345678\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


class Sources:
    """Per link: what its next read answers; ``gate`` holds reads until set."""

    def __init__(self) -> None:
        self.answer: dict[int, str] = {}
        self.version = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.reached = asyncio.Event()  # a read has reached the gate

    def source(self, link: Link) -> object:
        sources = self

        class Source:
            provider = "ics-file"

            async def fetch(self, previous: Validators | None) -> Fetched:
                sources.reached.set()
                await sources.gate.wait()
                answer = sources.answer.get(link.id, "document")
                if answer == "unavailable":
                    raise CalendarUnavailable("down")
                if answer == "auth":
                    raise CalendarAuthFailed("refused")
                sources.version += 1
                return Fetched(document(sources.version), Validators())

        return Source()


def full_count(sync: CalendarSync) -> Counter[tuple[str, str]]:
    return Counter(
        (state.link.provider, link_status(state.last_result)) for state in sync._links.values()
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}") as opened:
        yield opened


def make(store: Store, sources: Sources) -> CalendarSync:
    clock = FakeClock(NOW)
    reconciler = Reconciler({"main": FakePbx()}, NumberPolicy.default("NL"), clock, Metrics())
    return CalendarSync(
        store, reconciler, Metrics(), clock, Config(sync_interval=3600.0, timezone="UTC"),
        httpx.AsyncClient(), source_factory=sources.source,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
async def test_health_follows_every_change_and_equals_a_full_count(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    sources = Sources()
    sync = make(store, sources)
    links = [store.add_link(str(100 + i), "main", "ics", f"/c{i}.ics") for i in range(8)]
    followed = list(links)
    sync.set_links(followed)
    for _ in range(40):
        choice = rng.random()
        if choice < 0.5:
            link = rng.choice(followed)
            sources.answer[link.id] = rng.choice(ANSWERS)
            await sync.sync_link(link.id)
        elif choice < 0.7:  # another set of links; some changed (followed anew)
            followed = rng.sample(links, rng.randint(1, len(links)))
            changed = rng.choice(followed)
            timezone = rng.choice(("UTC", "Europe/Amsterdam"))
            updated = replace(changed, settings={"timezone": timezone})
            followed = [updated if f.id == changed.id else f for f in followed]
            sync.set_links(followed)
        else:  # a link dropped (or followed anew) while it is being read
            link = rng.choice(followed)
            sources.gate.clear()
            sources.reached.clear()
            reading = asyncio.create_task(sync.sync_link(link.id))
            await asyncio.wait_for(sources.reached.wait(), timeout=10)
            rest = [f for f in followed if f.id != link.id]
            if rest and rng.random() < 0.5:
                followed = rest
            else:
                timezone = rng.choice(("UTC", "Europe/Amsterdam"))
                followed = [*rest, replace(link, settings={"timezone": timezone})]
            sync.set_links(followed)
            sources.gate.set()
            await reading
        assert sync.health() == full_count(sync)
    assert sum(sync.health().values()) == len(followed)
    sync.stop()
