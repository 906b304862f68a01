"""CalendarSync with a fake calendar source, a real SQLite store and a fake PBX.

The source is a queue of answers (a document, "not modified", an exception, or a hang);
the store is real (``tmp_path``), optionally wrapped to fail its writes. Each test drives
``sync_link`` directly, so nothing depends on the schedule's timing, except the tests of
the schedule itself, which look at its entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pbxcal.calendars import Fetched, NotModified, Validators
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.config import Config
from pbxcal.core.ical import EventInstance, ExpansionLimits
from pbxcal.core.policy import NumberPolicy
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
    StoreError,
)
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import Reconciler
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Link, Store
from pbxcal.testing.fakes import FakeClock, FakePbx

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def calendar(*events: tuple[str, int, int], uid: bool = True, extra: str = "") -> bytes:
    """A document whose events start/end ``minutes`` after NOW."""
    body = ""
    for i, (title, start, end) in enumerate(events):
        body += "BEGIN:VEVENT\r\n" + (f"UID:e{i}@test\r\n" if uid else "")
        body += f"DTSTAMP:{stamp(NOW)}\r\n"
        body += f"DTSTART:{stamp(NOW + timedelta(minutes=start))}\r\n"
        body += f"DTEND:{stamp(NOW + timedelta(minutes=end))}\r\nSUMMARY:{title}\r\n"
        body += extra + "END:VEVENT\r\n"
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n"
    return f"{head}{body}END:VCALENDAR\r\n".encode()


class FakeSource:
    """A calendar source answering from a queue; ``hang`` makes the next fetch hang."""

    provider = "fake"

    def __init__(self) -> None:
        self.answers: list[Fetched | NotModified | BaseException] = []
        self.previous: list[Validators | None] = []
        self.hang = False

    def push(self, answer: bytes | NotModified | BaseException, etag: str | None = None) -> None:
        self.answers.append(
            Fetched(answer, Validators(etag=etag)) if isinstance(answer, bytes) else answer
        )

    async def fetch(self, previous: Validators | None) -> Fetched | NotModified:
        self.previous.append(previous)
        if self.hang:
            await asyncio.Event().wait()
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FailingWrites:
    """A store whose writes fail while ``failing`` is set (reads still work)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name in {"save_expansion", "replace_events", "log_sync", "apply_changes"}:

            def write(*args: Any, **kwargs: Any) -> Any:
                if self.failing:
                    raise StoreError(f"{self.store!r}: attempt to write a readonly database")
                return attribute(*args, **kwargs)

            return write
        return attribute


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}") as opened:
        yield opened


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class World:
    def __init__(self, store: Any, **config: Any) -> None:
        self.clock = FakeClock(NOW)
        self.pbx = FakePbx()
        self.metrics = Metrics()
        self.reconciler = Reconciler(
            {"main": self.pbx}, NumberPolicy.default("NL"), self.clock, self.metrics
        )
        self.source = FakeSource()
        self.store = store
        self.config = Config(**{"sync_interval": 3600.0, "timezone": "UTC", **config})
        self.sync = CalendarSync(
            store,
            self.reconciler,
            self.metrics,
            self.clock,
            self.config,
            httpx.AsyncClient(),
            source_factory=lambda link: self.source,
        )

    def link(self, source: str = "/cal.ics", extension: str = "100") -> Link:
        link: Link = self.store.add_link(extension, "main", "ics", source)
        self.sync.set_links([link])
        return link

    def log(self, link: Link) -> list[Any]:
        return list(self.store.sync_log(link.id, 50))


async def test_a_new_version_reaches_the_reconciler_and_the_log(store: Store) -> None:
    world = World(store)
    link = world.link()
    world.source.push(
        calendar(("06-12345678", -10, 60), ("Lunch", 0, 30), ("0900 1234567", 0, 5), ("333", 0, 5))
    )
    assert await world.sync.sync_link(link.id) == "changed"
    instances = world.reconciler.link_instances(link.id)
    assert instances is not None and len(instances.instances) == 4
    entry = world.log(link)[0]
    assert (entry.result, entry.accepted) == ("changed", 1)
    # 333 is no extension on this PBX (the fake has none)
    assert entry.rejected == {"not-a-number": 1, "blocked-by-policy": 1, "unknown-extension": 1}
    assert store.load_expansions()[link.id].instances == instances.instances


async def test_an_unchanged_body_without_validators_costs_nothing(store: Store) -> None:
    world = World(store)
    link = world.link()
    body = calendar(("201", -10, 60))
    world.source.push(body)
    world.source.push(body)
    await world.sync.sync_link(link.id)
    first = world.reconciler.link_instances(link.id)
    assert await world.sync.sync_link(link.id) == "unchanged"
    assert world.reconciler.link_instances(link.id) is first  # no replan
    assert len(world.log(link)) == 1  # no write


async def test_not_modified_is_unchanged_and_sends_the_validators(store: Store) -> None:
    world = World(store)
    link = world.link()
    world.source.push(calendar(("201", -10, 60)), etag='"v1"')
    world.source.push(NotModified())
    await world.sync.sync_link(link.id)
    assert await world.sync.sync_link(link.id) == "unchanged"
    assert world.source.previous[-1] == Validators(etag='"v1"')


async def test_events_without_uid_are_stored_not_refused(store: Store) -> None:
    """Issue #7.4: two events without a UID made the store raise 'appears twice'."""
    world = World(store)
    link = world.link()
    world.source.push(calendar(("201", -10, 60), ("202", 0, 30), uid=False))
    assert await world.sync.sync_link(link.id) == "changed"
    events, _ = store.load_events(link.id)
    assert len(events) == 2 and all(e.uid.startswith("pbxcal-") for e in events)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), ValueError("Invalid IPv6 URL"), KeyError("x"), OSError(5, "EIO")],
)
async def test_every_error_ends_as_a_logged_counted_result(store: Store, error: Exception) -> None:
    """Issue #7.4/#7.7: nothing escapes a link's sync; it is counted and sync-logged."""
    world = World(store)
    link = world.link()
    world.source.push(error)
    assert await world.sync.sync_link(link.id) == "error"
    assert sample(world.metrics, "pbxcal_calendar_syncs_total", provider="fake", result="error")
    entry = world.log(link)[0]
    assert entry.result == "error" and type(error).__name__ in entry.message


async def test_a_source_that_cannot_be_built_is_an_invalid_link(store: Store) -> None:
    world = World(store)

    def broken(link: Link) -> FakeSource:
        raise ValueError("Invalid IPv6 URL")

    world.sync.source_factory = broken
    link = world.link(source="https://[bad/cal.ics")
    assert await world.sync.sync_link(link.id) == "invalid"
    assert "unusable calendar source" in world.log(link)[0].message


async def test_a_hanging_source_times_out_and_keeps_the_last_events(store: Store) -> None:
    world = World(store, sync_timeout=0.05)
    link = world.link()
    world.source.push(calendar(("201", -10, 60)))
    await world.sync.sync_link(link.id)
    before = world.reconciler.link_instances(link.id)
    world.source.hang = True
    assert await world.sync.sync_link(link.id) == "unavailable"
    assert world.reconciler.link_instances(link.id) is before


async def test_a_calendar_over_the_event_cap_keeps_its_last_good_plan(store: Store) -> None:
    """Issue #7.3: a link over its cap says so in plain words and keeps the last plan."""
    world = World(store, limits=ExpansionLimits(max_events=3))
    link = world.link()
    world.source.push(calendar(("201", -10, 60)))
    world.source.push(calendar(*[("202", i, i + 1) for i in range(10)]))
    await world.sync.sync_link(link.id)
    before = world.reconciler.link_instances(link.id)
    assert await world.sync.sync_link(link.id) == "over-limit"
    assert world.reconciler.link_instances(link.id) is before
    assert "10 events, more than the limit of 3" in world.log(link)[0].message


async def test_an_endless_secondly_rule_is_capped(store: Store) -> None:
    world = World(store, limits=ExpansionLimits(max_instances_per_event=100))
    link = world.link()
    world.source.push(calendar(("201", 0, 1), extra="RRULE:FREQ=SECONDLY\r\n"))
    assert await world.sync.sync_link(link.id) == "changed"
    instances = world.reconciler.link_instances(link.id)
    assert instances is not None and len(instances.instances) <= 100


async def test_an_unwritable_store_still_follows_the_calendar(store: Store) -> None:
    """Issue #7.7: the plan in memory follows the calendar; the write is retried."""
    failing = FailingWrites(store)
    world = World(failing)
    link = world.link()
    body = calendar(("201", -10, 60))
    failing.failing = True
    world.source.push(body)
    assert await world.sync.sync_link(link.id) == "changed"
    assert world.reconciler.link_instances(link.id) is not None
    assert not world.sync.store_health.writable
    assert sample(world.metrics, "pbxcal_store_writable") == 0
    failing.failing = False
    world.source.push(body)  # the same body: not "unchanged", because it was never saved
    assert await world.sync.sync_link(link.id) == "changed"
    assert world.sync.store_health.writable
    assert link.id in store.load_expansions()


async def test_a_link_is_scheduled_once_however_often_it_is_set(store: Store) -> None:
    """Issue #9.1 (from #8.5): a link added at run time was fetched twice per interval."""
    world = World(store)
    link = world.link()
    for _ in range(3):
        world.sync.set_links([link])
    entries = [e for e in world.sync._due if e[2] == link.id]
    live = [e for e in entries if e[1] == world.sync._links[link.id].generation]
    assert len(live) == 1


# -- incremental sources (issue #9: the port every provider implements) ---------------


def row(uid: str, title: str, start: int, end: int, extra: str = "") -> EventRow:
    ical = (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{stamp(NOW)}\r\n"
        f"DTSTART:{stamp(NOW + timedelta(minutes=start))}\r\n"
        f"DTEND:{stamp(NOW + timedelta(minutes=end))}\r\nSUMMARY:{title}\r\n{extra}END:VEVENT\r\n"
    )
    return EventRow(uid, None, ical)


class FakeIncremental:
    """An incremental source answering from a queue; records the cursors it was given."""

    provider = "fake-incremental"

    def __init__(self) -> None:
        self.answers: list[ChangeSet | BaseException | None] = []
        self.cursors: list[str | None] = []

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        self.cursors.append(cursor)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def incremental_world(store: Any) -> tuple[World, FakeIncremental, Link]:
    world = World(store)
    source = FakeIncremental()
    world.sync.source_factory = lambda link: source
    return world, source, world.link()


def titles(world: World, link: Link) -> list[str]:
    instances = world.reconciler.link_instances(link.id)
    assert instances is not None
    return sorted(i.title for i in instances.instances)


async def test_an_incremental_source_applies_change_sets_with_their_cursor(store: Store) -> None:
    world, source, link = incremental_world(store)
    source.answers = [
        ChangeSet("c1", True, (row("a", "0612345678", 0, 60), row("b", "Lunch", 0, 30))),
        ChangeSet("c2", False, (row("a", "0201234567", 0, 60),), removed=("b",)),
        None,
    ]
    assert await world.sync.sync_link(link.id) == "changed"
    assert titles(world, link) == ["0612345678", "Lunch"]
    assert await world.sync.sync_link(link.id) == "changed"
    assert titles(world, link) == ["0201234567"]
    assert await world.sync.sync_link(link.id) == "unchanged"
    assert source.cursors == [None, "c1", "c2"]
    events, state = store.load_events(link.id)
    assert [e.uid for e in events] == ["a"] and state is not None and state.sync_token == "c2"
    assert store.load_expansions()[link.id].instances == world.reconciler.link_instances(
        link.id
    ).instances  # type: ignore[union-attr]


async def test_a_change_set_that_was_not_committed_is_asked_for_again(store: Store) -> None:
    """A crash (here: a failing store) between fetching and committing skips nothing."""
    failing = FailingWrites(store)
    world, source, link = incremental_world(failing)
    change = ChangeSet("c1", True, (row("a", "0612345678", 0, 60),))
    source.answers = [change, change]
    failing.failing = True
    await world.sync.sync_link(link.id)
    failing.failing = False
    await world.sync.sync_link(link.id)
    assert source.cursors == [None, None]  # the cursor moved on only once committed
    assert store.load_events(link.id)[1].sync_token == "c1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "result", "status"),
    [
        (CalendarAuthFailed("wrong user name or password"), "auth-failed", "auth_failed"),
        (CalendarNeedsRelink("access was revoked"), "needs-relink", "needs_relink"),
        (CalendarRateLimited("slow down", retry_after=600), "rate-limited", "unreachable"),
        (CalendarUnavailable("connection refused"), "unavailable", "unreachable"),
    ],
)
async def test_provider_errors_become_a_link_status(
    store: Store, error: Exception, result: str, status: str
) -> None:
    world, source, link = incremental_world(store)
    source.answers = [ChangeSet("c1", True, (row("a", "0612345678", 0, 60),)), error, None]
    await world.sync.sync_link(link.id)
    assert await world.sync.sync_link(link.id) == result
    assert world.sync.health() == {("ics", status): 1}
    assert world.reconciler.link_instances(link.id) is not None  # last known events kept
    assert world.log(link)[0].result == result
    # back to normal: the recovery is logged even though nothing changed
    assert await world.sync.sync_link(link.id) == "unchanged"
    assert world.log(link)[0].result == "unchanged"
    assert world.sync.health() == {("ics", "connected"): 1}


async def test_a_hanging_source_never_delays_a_boundary(store: Store) -> None:
    """Issue #9.6: a provider that hangs (here for good) while a boundary passes."""
    from pbxcal.service.clock import SystemClock
    from pbxcal.service.reconciler import LinkInstances

    class Hanging:
        provider = "hanging"

        def __init__(self) -> None:
            self.entered = asyncio.Event()

        async def changes(self, cursor: str | None) -> ChangeSet | None:
            self.entered.set()
            await asyncio.Event().wait()  # never answers
            return None

    world = World(store, sync_timeout=600.0)
    world.reconciler.clock = SystemClock()
    world.sync.clock = SystemClock()
    hanging = Hanging()
    world.sync.source_factory = lambda link: hanging
    link = world.link()
    begin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    instance = EventInstance("a@t", begin, begin + timedelta(hours=1), "0612345678")
    world.reconciler.set_link_instances(
        link.id,
        LinkInstances(
            ("main", "100"), (instance,), begin - timedelta(days=1), begin + timedelta(days=30)
        ),
    )
    tasks = [asyncio.create_task(world.reconciler.run()), asyncio.create_task(world.sync.run())]
    try:
        await asyncio.wait_for(hanging.entered.wait(), 5)  # the read is hanging now
        batch = await asyncio.wait_for(world.pbx.next_apply(), 10)
        assert batch.applied == {"100": ("+31612345678",)}
        assert datetime.now(UTC) >= begin  # at the boundary, not before
        assert world.sync._links[link.id].running  # the read still hangs
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        world.sync.stop()


# -- per-quota Retry-After and credentials a source renewed (issue #10) ------------------


class QuotaSource(FakeIncremental):
    """An incremental source on a provider quota (``throttle_key``) whose credential may
    change (``updated_secret``: what ``renewed`` holds, handed out once)."""

    def __init__(self, key: str | None) -> None:
        super().__init__()
        self.throttle_key = key
        self.renewed: tuple[str, bytes] | None = None

    def updated_secret(self) -> tuple[str, bytes] | None:
        value, self.renewed = self.renewed, None
        return value


def quota_world(store: Any, keys: list[str | None]) -> tuple[World, list[QuotaSource], list[Link]]:
    world = World(store)
    sources = [QuotaSource(key) for key in keys]
    links: list[Link] = [
        store.add_link(str(100 + i), "main", "ics", f"/cal{i}.ics") for i in range(len(keys))
    ]
    by_id = {link.id: source for link, source in zip(links, sources, strict=True)}
    world.sync.source_factory = lambda link: by_id[link.id]
    world.sync.set_links(links)
    return world, sources, links


async def test_a_retry_after_holds_back_every_link_of_the_same_quota(store: Store) -> None:
    """Two links read one mailbox through one app (same key): Graph's 429 to one is the
    other's too. A link of another quota is read as usual; sync_soon waits as well."""
    import time

    world, (first, second, other), links = quota_world(store, ["mbx-a", "mbx-a", "mbx-b"])
    for source in (first, second, other):
        source.answers = [ChangeSet("c1", True, (row("a", "0612345678", 0, 60),))]
    for link in links:
        assert await world.sync.sync_link(link.id) == "changed"
    first.answers = [CalendarRateLimited("throttled (429)", retry_after=120)]
    second.answers, other.answers = [None], [None]
    assert await world.sync.sync_link(links[0].id) == "rate-limited"
    held = world.sync.throttles.until("mbx-a", time.monotonic())
    assert held is not None and held > time.monotonic() + 100

    world.sync._due.clear()
    assert world.sync.sync_soon(links[1].id) and world.sync.sync_soon(links[2].id)
    await world.sync._start_due(time.monotonic())
    await asyncio.gather(*world.sync._running)
    assert other.cursors == [None, "c1"]  # another quota: read at once
    assert second.cursors == [None]  # held back with the link that was told to wait
    moved = [due for due, _, link_id in world.sync._due if link_id == links[1].id]
    assert moved and min(moved) >= held  # moved to when the quota is free

    await world.sync._start_due(held + 1)  # the quota is free again
    await asyncio.gather(*world.sync._running)
    assert second.cursors == [None, "c1"]
    assert len(world.sync.throttles) == 0  # an expired hold is forgotten


async def test_a_rate_limit_without_retry_after_or_key_holds_no_one(store: Store) -> None:
    world, (first, _), links = quota_world(store, [None, None])
    first.answers = [CalendarRateLimited("throttled", retry_after=60)]
    assert await world.sync.sync_link(links[0].id) == "rate-limited"
    assert len(world.sync.throttles) == 0


async def test_a_renewed_credential_is_stored_encrypted_after_the_sync(
    tmp_path: Path,
) -> None:
    from pbxcal.store import KeyRing
    from pbxcal.store.secrets import new_key

    with Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}", keys=KeyRing([new_key()])) as store:
        failing = FailingSecretWrites(store)
        world, (source,), (link,) = quota_world(failing, ["k"])
        source.answers = [ChangeSet("c1", True, (row("a", "0612345678", 0, 60),)), None, None]
        source.renewed = ("graph-token-cache", b"cache-v2")
        failing.failing = True
        assert await world.sync.sync_link(link.id) == "changed"  # followed all the same
        assert store.load_secret(link.id, "graph-token-cache") is None
        assert not world.sync.store_health.writable
        assert sample(world.metrics, "pbxcal_store_write_failures_total",
                      operation="save-secret") == 1  # fmt: skip
        failing.failing = False
        assert await world.sync.sync_link(link.id) == "unchanged"
        # kept in memory and stored at the next sync, though the source has nothing new
        assert store.load_secret(link.id, "graph-token-cache") == b"cache-v2"
        assert world.sync.store_health.writable
        source.renewed = ("graph-token-cache", b"cache-v3")
        await world.sync.save_updated_secret(link.id)  # what the push keeper calls
        assert store.load_secret(link.id, "graph-token-cache") == b"cache-v3"
        assert b"cache-v3" not in (tmp_path / "s.sqlite3").read_bytes()  # encrypted


class FailingSecretWrites(FailingWrites):
    """``save_secret`` fails while ``failing`` is set."""

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name == "save_secret":

            def write(*args: Any, **kwargs: Any) -> Any:
                if self.failing:
                    raise StoreError("attempt to write a readonly database")
                return attribute(*args, **kwargs)

            return write
        return attribute
