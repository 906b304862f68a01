"""The push keepers read stored channel rows in proportion to change (``push_keeper``):
the rows of a link when the keeper starts tending it, again only when a notification or
its own write says they changed, everything after a resync and at the backstop; a store
failure keeps what was asked for and looks again soon. A real SQLite store holds the
rows; "another process" writes them through its own ``Store``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.google import GoogleCalendarSource, user_credentials
from pbxcal.calendars.graph import GraphCalendarSource, GraphSubscription
from pbxcal.errors import StoreError
from pbxcal.service.metrics import Metrics
from pbxcal.service.push import CLAIM_INTERVAL, GooglePush, GraphPush
from pbxcal.service.push_keeper import (
    BACKSTOP_SECONDS,
    CHANNEL_CHECK_INTERVAL,
    RETRY_SECONDS,
    ChannelChanges,
    StoredPushKeeper,
)
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Store
from pbxcal.store.push_channels import PushChannelRecord
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.google_fake import FakeGoogle

START = datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


class Keeper(StoredPushKeeper):
    """Tends ``tending``; each look keeps what ``_rows_for`` answered."""

    provider = "graph"

    def __init__(self, store: Any, clock: FakeClock) -> None:
        sync = SimpleNamespace(store=store, member_id="me", is_mine=lambda link_id: True)
        super().__init__(cast(CalendarSync, sync), Metrics(), clock)
        self.tending: set[int] = set()
        self.seen: dict[int, list[PushChannelRecord]] | None = None
        self.looks = 0
        self.looked = asyncio.Event()
        self.renewals: list[datetime] = []

    async def _tend(self, now: datetime) -> None:
        self.seen = await self._rows_for(self.tending, now)
        self.looks += 1
        self.looked.set()

    def _renewal_times(self) -> list[datetime]:
        return self.renewals

    async def look(self) -> dict[int, list[PushChannelRecord]] | None:
        await self._tend(self.clock.now())
        return self.seen


def row(link_id: int, channel_id: str, owner: str = "other") -> PushChannelRecord:
    return PushChannelRecord(
        "graph", channel_id, link_id, b"d" * 32, f"users/{link_id}/events",
        START + timedelta(days=2), owner,
    )  # fmt: skip


def ids(rows: list[PushChannelRecord]) -> list[str]:
    return [r.channel_id for r in rows]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(f"sqlite:///{tmp_path}/s.db")
    for ext in ("100", "101", "102"):
        opened.add_link(ext, "main", "graph", f"user{ext}@contoso.com", {})
    return opened


@pytest.fixture
def elsewhere(tmp_path: Path, store: Store) -> Store:
    """The same store opened by "another process"."""
    return Store.open(f"sqlite:///{tmp_path}/s.db")


async def test_rows_are_read_when_it_starts_tending_a_link_then_only_when_told(
    store: Store, elsewhere: Store
) -> None:
    elsewhere.save_push_channel(row(1, "sub-1"))
    elsewhere.save_push_channel(row(2, "sub-2"))
    keeper = Keeper(store, FakeClock(START))
    keeper.tending = {1, 2}
    seen = await keeper.look()
    assert seen is not None and ids(seen[1]) == ["sub-1"] and ids(seen[2]) == ["sub-2"]
    assert (keeper.reads, keeper.rows_read, keeper.started) == (1, 2, {1, 2})

    seen = await keeper.look()  # nothing changed, nothing said: no read at all
    assert (keeper.reads, keeper.started) == (1, set())

    elsewhere.save_push_channel(row(1, "sub-1b"))  # another process, not heard of yet
    seen = await keeper.look()
    assert seen is not None and ids(seen[1]) == ["sub-1"] and keeper.reads == 1

    keeper.channels_changed(1)  # its NOTIFY: that link's rows only, and a wake
    assert keeper._wake.is_set()
    seen = await keeper.look()
    assert seen is not None and ids(seen[1]) == ["sub-1", "sub-1b"]
    assert (keeper.reads, keeper.rows_read, keeper.started) == (2, 4, set())

    keeper._wake.clear()
    keeper.channels_changed(3)  # a link it does not tend: ignored
    assert not keeper._wake.is_set()
    keeper.tending = {1, 3}  # link 3 became its own, link 2 went elsewhere
    seen = await keeper.look()
    assert seen is not None and set(seen) == {1, 3} and seen[3] == []
    assert (keeper.reads, keeper.rows_read, keeper.started) == (3, 4, {3})
    keeper.channels_changed(2)  # no longer tended: nothing cached, nothing to wake for
    assert not keeper._wake.is_set()
    keeper.tending = {1, 2, 3}  # back again: read afresh, not from an old cache
    elsewhere.delete_push_channel("graph", "sub-2")
    seen = await keeper.look()
    assert seen is not None and seen[2] == [] and keeper.started == {2}


async def test_the_backstop_and_a_resync_read_everything_it_tends(
    store: Store, elsewhere: Store
) -> None:
    clock = FakeClock(START)
    keeper = Keeper(store, clock)
    keeper.tending = {1, 2}
    await keeper.look()
    assert keeper._next_look(clock.now()) == BACKSTOP_SECONDS
    elsewhere.save_push_channel(row(2, "sub-2"))
    clock.advance(BACKSTOP_SECONDS - 1)
    seen = await keeper.look()
    assert seen is not None and seen[2] == [] and keeper.reads == 1
    clock.advance(1)
    seen = await keeper.look()  # the backstop: a lost notification costs no more
    assert seen is not None and ids(seen[2]) == ["sub-2"]
    assert (keeper.reads, keeper.started) == (2, {1, 2})
    assert keeper._next_look(clock.now()) == BACKSTOP_SECONDS

    elsewhere.expire_push_channel("graph", "sub-2")
    keeper.resync()  # the listener reconnected: what was sent meanwhile is lost
    seen = await keeper.look()
    assert seen is not None and seen[2][0].expires_at != row(2, "sub-2").expires_at
    assert (keeper.reads, keeper.started) == (3, {1, 2})


async def test_its_own_writes_are_read_back_at_the_next_look(store: Store) -> None:
    keeper = Keeper(store, FakeClock(START))
    keeper.tending = {1, 2}
    await keeper.look()
    await keeper._save(row(1, "sub-1", owner="me"))
    seen = await keeper.look()
    assert seen is not None and ids(seen[1]) == ["sub-1"] and seen[1][0].owner == "me"
    assert keeper.reads == 2 and keeper.started == set()
    await keeper._forget_stored(1, "sub-1")
    seen = await keeper.look()
    assert seen is not None and seen[1] == [] and keeper.reads == 3


class FailingOnce:
    """A store whose next ``push_channels`` fails."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fail = True

    def push_channels(self, provider: str, link_ids: Any = None) -> list[PushChannelRecord]:
        if self.fail:
            self.fail = False
            raise StoreError("cannot read push channels: the server is gone")
        return self.store.push_channels(provider, link_ids)


async def test_a_store_failure_keeps_what_was_asked_and_looks_again_soon(
    store: Store, elsewhere: Store
) -> None:
    elsewhere.save_push_channel(row(1, "sub-1"))
    clock = FakeClock(START)
    keeper = Keeper(FailingOnce(store), clock)
    keeper.tending = {1}
    assert await keeper.look() is None
    assert keeper._next_look(clock.now()) == RETRY_SECONDS
    seen = await keeper.look()
    assert seen is not None and ids(seen[1]) == ["sub-1"] and keeper.started == {1}
    assert keeper._next_look(clock.now()) == BACKSTOP_SECONDS


async def test_the_next_look_is_the_earliest_renewal_retry_or_backstop(store: Store) -> None:
    clock = FakeClock(START)
    keeper = Keeper(store, clock)
    keeper.tending = {1}
    await keeper.look()
    keeper.renewals = [START + timedelta(seconds=90), START + timedelta(hours=3)]
    assert keeper._next_look(clock.now()) == 90
    keeper.renewals = [START - timedelta(seconds=5)]  # overdue: at once
    assert keeper._next_look(clock.now()) == 0
    keeper.renewals = []
    keeper.retry.add(1)  # the provider refused: again after the check interval...
    assert keeper._next_look(clock.now()) == CHANNEL_CHECK_INTERVAL
    await keeper.look()  # ...as a link it starts tending (it may take it over then)
    assert keeper.started == {1} and not keeper.retry


async def test_a_notification_wakes_the_loop_long_before_the_backstop(store: Store) -> None:
    keeper = Keeper(store, FakeClock(START))
    keeper.tending = {1}
    loop = asyncio.create_task(keeper.run())
    try:
        await asyncio.wait_for(keeper.looked.wait(), 5)
        keeper.looked.clear()
        keeper.channels_changed(1)
        await asyncio.wait_for(keeper.looked.wait(), 5)  # not BACKSTOP_SECONDS
        assert keeper.looks == 2 and keeper.reads == 2
    finally:
        loop.cancel()


def test_notification_payloads_reach_the_keeper_of_their_provider(store: Store) -> None:
    graph = Keeper(store, FakeClock(START))
    graph._rows = {1: [], 2: []}
    changes = ChannelChanges("host=unused", [graph])
    for payload in ("google 1", "graph", "graph x", "", "graph 3", "graph 1"):
        changes.deliver(payload)
    assert graph._stale == {1}


# -- the rule for another process's channel (GooglePush against the Google fake) ---------


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with FakeGoogle() as fake:
        fake.add_calendar("primary")
        yield fake


async def test_another_process_channel_is_left_alone_until_the_link_is_started_again(
    store: Store, elsewhere: Store, google: FakeGoogle
) -> None:
    """Two processes whose views of the members differ both think link 1 is theirs: a
    look woken by the other's write neither stops its channel nor opens a new one of its
    own (they would replace each other on every notification); the backstop, where the
    keeper starts the link afresh, takes it over."""
    calls = BlockingCalls(2)
    info = google.add_user("client", "secret", "refresh")
    source = GoogleCalendarSource(
        user_credentials(info), calls=calls, api_endpoint=google.api_endpoint
    )
    sync = SimpleNamespace(
        store=store, member_id="me", is_mine=lambda link_id: True,
        built_sources=lambda provider=None: [(1, source)], sync_soon=lambda link_id: True,
    )  # fmt: skip
    clock = FakeClock(START)
    keeper = GooglePush(cast(CalendarSync, sync), "http://127.0.0.1:9", Metrics(), clock)
    try:
        await keeper._tend(clock.now())
        [mine] = google.channels()
        assert [(r.channel_id, r.owner) for r in store.push_channels("google")] == [(mine, "me")]

        theirs = PushChannelRecord("google", "pbxcal-theirs", 1, b"t" * 32, "", None, "them")
        elsewhere.save_push_channel(theirs)  # the other process opens one (pending row)
        keeper.channels_changed(1)
        await keeper._tend(clock.now())
        rows = {r.channel_id: r.owner for r in store.push_channels("google")}
        assert rows == {mine: "me", "pbxcal-theirs": "them"} and google.channels() == [mine]

        elsewhere.delete_push_channel("google", mine)  # and stops ours: we let go...
        keeper.channels_changed(1)
        await keeper._tend(clock.now())
        assert keeper._live_links() == []
        assert [r.channel_id for r in store.push_channels("google")] == ["pbxcal-theirs"]
        assert google.channels() == [mine]  # ...opening nothing (we stop nothing of theirs)

        clock.advance(BACKSTOP_SECONDS)  # still ours at the backstop: taken over
        await keeper._tend(clock.now())
        [row] = store.push_channels("google")
        assert row.owner == "me" and row.channel_id != "pbxcal-theirs"
        assert row.channel_id in google.channels()
    finally:
        calls.close()


async def test_the_owner_claims_back_a_graph_row_another_process_took_over(
    store: Store, elsewhere: Store
) -> None:
    """Another process whose view of the members lagged took our subscription over (by
    renewal: the same id, its name in the row). The link is ours: the row names us again
    at the next look, without a call to Graph, and not more often than every
    ``CLAIM_INTERVAL`` seconds while the other keeps claiming it."""
    source = cast(GraphCalendarSource, SimpleNamespace())  # never called: no renewal due
    sync = SimpleNamespace(
        store=store, member_id="me", is_mine=lambda link_id: True,
    )  # fmt: skip
    clock = FakeClock(START)
    keeper = GraphPush(cast(CalendarSync, sync), "http://127.0.0.1:9", Metrics(), clock)
    ours = row(1, "sub-1", owner="me")
    store.save_push_channel(ours)
    subscription = GraphSubscription("sub-1", ours.resource_id, "", START + timedelta(days=2))
    keeper._subscriptions[1] = (source, subscription, ours.token_digest)

    elsewhere.save_push_channel(row(1, "sub-1", owner="them"))  # taken over elsewhere
    await keeper._tend_link(1, source, store.push_channels("graph", [1]), clock.now())
    assert [(r.channel_id, r.owner) for r in store.push_channels("graph")] == [("sub-1", "me")]

    elsewhere.save_push_channel(row(1, "sub-1", owner="them"))  # at once again
    await keeper._tend_link(1, source, store.push_channels("graph", [1]), clock.now())
    # within CLAIM_INTERVAL: left as it is for now, but looked at again when it is over
    assert [r.owner for r in store.push_channels("graph")] == ["them"]
    assert keeper._subscriptions[1][1] is subscription  # still tended here
    assert keeper._next_look(clock.now()) == CLAIM_INTERVAL.total_seconds()
    keeper._rows[1] = store.push_channels("graph", [1])  # tended: its rows are known
    keeper._stale.clear()  # (its own write above was read back)
    keeper._due_rechecks(clock.now())
    assert 1 not in keeper._stale  # not yet
    clock.advance(CLAIM_INTERVAL.total_seconds())
    keeper._due_rechecks(clock.now())
    assert 1 in keeper._stale  # its rows are read at this look...
    await keeper._tend_link(1, source, store.push_channels("graph", [1]), clock.now())
    assert [r.owner for r in store.push_channels("graph")] == ["me"]  # ...and claimed back
