"""``LeaseKeeper`` (membership + ownership + leases) with several members on a real
PostgreSQL: sharing out, takeover after a member dies, gradual handover to a joining
member, and riding out a PostgreSQL restart."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_postgres import *  # noqa: F403 - fixtures
from cluster_postgres import wait_for
from postgres import start_postgres, stop_postgres

from pbxcal.cluster.keeper import LeaseKeeper
from pbxcal.cluster.lease import Fence

pytestmark = pytest.mark.integration

NAMES = ["pbx:a", "pbx:b", "pbx:c", "pbx:d"]
TTL, MARGIN = 1.5, 0.5


class Running:
    """Keepers running as tasks; each can be killed (no clean shutdown) or closed."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.keepers: dict[str, LeaseKeeper] = {}
        self.events: list[tuple[str, str, str, int]] = []  # (member, gained/lost, name, epoch)

    def start(self, label: str, settle: float = 0.0) -> LeaseKeeper:
        def gained(fence: Fence) -> None:
            self.events.append((label, "gained", fence.name, fence.epoch))

        def lost(fence: Fence, why: str) -> None:
            self.events.append((label, "lost", fence.name, fence.epoch))

        keeper = LeaseKeeper(
            self.conninfo,
            NAMES,
            member_id=label,
            ttl=TTL,
            margin=MARGIN,
            settle=settle,
            on_gained=gained,
            on_lost=lost,
        )
        self.keepers[label] = keeper
        self.tasks[label] = asyncio.create_task(keeper.run())
        return keeper

    async def kill(self, label: str) -> None:
        task = self.tasks.pop(label)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def holding(self) -> dict[str, list[str]]:
        """Which names each keeper may write to right now (its valid fences)."""
        return {
            label: sorted(n for n in NAMES if keeper.fence(n) is not None)
            for label, keeper in self.keepers.items()
        }

    def at_most_one_writer(self) -> bool:
        writers = [name for names in self.holding().values() for name in names]
        return len(writers) == len(set(writers))


@pytest.fixture
async def running(conninfo: str) -> AsyncIterator[Running]:
    group = Running(conninfo)
    yield group
    for label in list(group.tasks):
        await group.kill(label)
    for keeper in group.keepers.values():
        await keeper.close()


def watch(group: Running, condition: Callable[[Running], bool]) -> Callable[[], bool]:
    """A condition that also checks, on every poll, that no PBX has two writers."""

    def check() -> bool:
        assert group.at_most_one_writer(), group.holding()
        return condition(group)

    return check


async def test_two_members_share_the_pbxes_and_the_survivor_takes_over_a_killed_one(
    running: Running,
) -> None:
    running.start("A")
    running.start("B")
    await wait_for(
        watch(running, lambda g: [len(v) for v in g.holding().values()] == [2, 2]),
        10,
        "two PBXes each",
    )
    # no flapping on the way: at most the two a late joiner had to be handed
    assert sum(1 for event in running.events if event[1] == "lost") <= 2, running.events
    a_had = running.holding()["A"]
    a_epochs = {name: running.keepers["A"].fences[name].epoch for name in a_had}
    await running.kill("A")  # like kill -9: no release, no goodbye
    killed = time.monotonic()
    taken = await wait_for(
        watch(running, lambda g: g.holding()["B"] == NAMES), 10, "B to hold everything"
    )
    assert taken - killed <= TTL + 0.3  # within the lease time (plus a round trip)
    assert all(running.keepers["A"].fences[name].valid() is False for name in a_had)
    epochs = {name: e for who, what, name, e in running.events if who == "B" and what == "gained"}
    assert {name: epochs[name] for name in a_had} == {  # a takeover is a new epoch
        name: epoch + 1 for name, epoch in a_epochs.items()
    }, running.events


async def test_a_joining_member_gets_its_share_only_after_settling_and_one_at_a_time(
    running: Running,
) -> None:
    settle = 1.0
    a = running.start("A", settle=settle)
    await wait_for(watch(running, lambda g: g.holding()["A"] == NAMES), 10, "A to hold all")
    await wait_for(lambda: any(m.alive_for >= settle for m in a.members), 10, "A to have settled")
    joined = time.monotonic()
    running.start("B", settle=settle)
    first = await wait_for(watch(running, lambda g: bool(g.holding()["B"])), 10, "B to get a PBX")
    assert first - joined >= settle - 0.1
    await wait_for(
        watch(running, lambda g: [len(v) for v in g.holding().values()] == [2, 2]),
        10,
        "an even split",
    )
    handed = [e for e in running.events if e[0] == "A" and e[1] == "lost"]
    gained = [e for e in running.events if e[0] == "B" and e[1] == "gained"]
    assert len(handed) == len(gained) == 2
    assert all(epoch == 2 for *_, epoch in gained)
    # and it stays that way: no flapping over the next rounds
    await running.keepers["A"].round()
    await running.keepers["B"].round()
    assert [len(v) for v in running.holding().values()] == [2, 2]


async def test_a_member_rides_out_a_postgres_restart(cluster_server: str, running: Running) -> None:
    keeper = running.start("A")
    await wait_for(watch(running, lambda g: g.holding()["A"] == NAMES), 10, "A to hold all")
    stop_postgres(cluster_server)
    try:
        # no renewal possible: the leases run out on A's own clock and A says so
        await wait_for(lambda: not keeper.fences, 10, "A to stop writing")
        assert all(keeper.fence(name) is None for name in NAMES)
    finally:
        start_postgres(cluster_server)
    await wait_for(watch(running, lambda g: g.holding()["A"] == NAMES), 15, "A to hold again")
    lost = {name for who, what, name, _ in running.events if what == "lost"}
    assert lost == set(NAMES)
    regained = [e for e in running.events if e[1] == "gained"][len(NAMES) :]
    assert sorted(name for _, _, name, _ in regained) == NAMES
    assert all(epoch == 1 for *_, epoch in regained)  # nobody else held them meanwhile


async def test_a_lease_that_ran_out_only_locally_is_taken_back_at_once(conninfo: str) -> None:
    """Renewals failed long enough for the local view to run out, but the database still
    has the lease as ours: the next good round takes it back (same epoch) without
    waiting for the database's expiry."""
    now = [1000.0]
    events: list[tuple[str, int]] = []
    keeper = LeaseKeeper(
        conninfo,
        ["pbx:a"],
        member_id="A",
        ttl=30.0,
        margin=5.0,
        clock=lambda: now[0],
        on_gained=lambda fence: events.append(("gained", fence.epoch)),
        on_lost=lambda fence, why: events.append(("lost", fence.epoch)),
    )
    try:
        await keeper.round()
        assert keeper.fence("pbx:a") is not None
        keeper.conninfo = conninfo.replace("dbname=", "dbname=no_such_database_")
        await keeper._drop_connection()
        now[0] += 26.0  # past valid_until on the local clock; the database's 30 s are not up
        await keeper.round()  # fails: cannot connect
        assert keeper.fence("pbx:a") is None and events == [("gained", 1), ("lost", 1)]
        keeper.conninfo = conninfo
        await keeper.round()
        assert keeper.fence("pbx:a") is not None
        assert events == [("gained", 1), ("lost", 1), ("gained", 1)]
    finally:
        await keeper.close()
