"""The lease protocol (``pbxcal.cluster.lease``) and its fencing on a real PostgreSQL.

Races are real (two connections, concurrent statements), expiry is the database's
(short ttls, waited for by polling the condition with a time limit), the freeze is a
real SIGSTOP of a real process, and the restart is a real stop and start of the server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_postgres import *  # noqa: F403 - fixtures and wait_for
from cluster_postgres import Conn, Connect, wait_for
from postgres import start_postgres, stop_postgres

from pbxcal.cluster.lease import (
    Fence,
    acquire,
    list_leases,
    local_clock,
    release,
    renew,
)
from pbxcal.errors import LeaseLost, StoreError
from pbxcal.store import Store

pytestmark = pytest.mark.integration


async def test_two_members_race_for_one_lease_and_exactly_one_wins(connections: Connect) -> None:
    a, b = await connections(), await connections()
    for round_number in range(30):
        name = f"pbx:race{round_number}"
        got_a, got_b = await asyncio.gather(acquire(a, name, "A", 5), acquire(b, name, "B", 5))
        assert (got_a is None) != (got_b is None), f"round {round_number}: {got_a} {got_b}"
        winner = got_a or got_b
        assert winner is not None and winner.epoch == 1
    rows = await list_leases(a)
    assert len(rows) == 30 and all(row.epoch == 1 for row in rows)


async def test_the_epoch_grows_when_the_holder_changes_and_only_then(connections: Connect) -> None:
    a, b = await connections(), await connections()
    first = await acquire(a, "pbx:main", "A", 5)
    assert first is not None and first.epoch == 1
    again = await acquire(a, "pbx:main", "A", 5)  # the holder again: same epoch
    renewed = await renew(a, first)
    assert again is not None and again.epoch == 1
    assert renewed is not None and renewed.epoch == 1
    assert await acquire(b, "pbx:main", "B", 5) is None  # held and live

    await release(a, first)
    taken = await acquire(b, "pbx:main", "B", 5)
    assert taken is not None and taken.epoch == 2
    assert await renew(a, first) is None  # the old holder's renewal fails
    renewed_b = await renew(b, taken)
    assert renewed_b is not None and renewed_b.epoch == 2

    await release(b, taken)
    back = await acquire(a, "pbx:main", "A", 5)
    assert back is not None and back.epoch == 3


async def test_a_lease_not_renewed_is_free_at_the_databases_expiry(connections: Connect) -> None:
    a, b = await connections(), await connections()
    lease = await acquire(a, "pbx:main", "A", 1.0, margin=0.3)
    assert lease is not None
    assert await acquire(b, "pbx:main", "B", 1.0, margin=0.3) is None
    taken: list[object] = []

    async def b_took_it() -> bool:
        got = await acquire(b, "pbx:main", "B", 1.0, margin=0.3)
        taken.append(got)
        return got is not None

    await wait_for(b_took_it, 5.0, "B to take the expired lease")
    assert getattr(taken[-1], "epoch", None) == 2


async def test_a_holder_that_stops_renewing_fails_its_fence_a_margin_before_the_takeover(
    connections: Connect,
) -> None:
    a, b = await connections(), await connections()
    ttl, margin = 1.5, 0.5
    lease = await acquire(a, "pbx:main", "A", ttl, margin=margin)
    assert lease is not None
    fence = Fence(lease)
    assert fence.check() == 1  # valid right after acquiring
    # A now stops renewing, as if frozen; B keeps trying.
    fence_failed = await wait_for(lambda: not fence.valid(), 5.0, "the fence to run out")
    with pytest.raises(LeaseLost, match="ran out on this process's clock"):
        fence.check()

    async def b_took_it() -> bool:
        return await acquire(b, "pbx:main", "B", ttl, margin=margin) is not None

    taken = await wait_for(b_took_it, 5.0, "B to take the lease")
    # The fence failed first, and by about the margin (polling only makes B later).
    assert taken - fence_failed >= margin - 0.05, (taken - fence_failed, margin)
    assert await renew(a, lease) is None


FROZEN_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    import psycopg
    from pbxcal.cluster.lease import Fence, acquire

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(sys.argv[1], autocommit=True)
        lease = await acquire(conn, "pbx:main", "frozen", 1.5, margin=0.5)
        assert lease is not None
        fence = Fence(lease)
        print("acquired", lease.epoch, flush=True)
        while True:  # a writer that checks its fence before every "write"
            line = sys.stdin.readline()
            if not line:
                return
            try:
                print("write", fence.check(), flush=True)
            except Exception as exc:
                print("refused", type(exc).__name__, flush=True)

    asyncio.run(main())
    """
)


async def test_a_process_frozen_by_sigstop_writes_nothing_after_sigcont(
    conninfo: str,
    connections: Connect,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", FROZEN_HOLDER, conninfo],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().split() == ["acquired", "1"]
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["write", "1"]
        os.kill(holder.pid, signal.SIGSTOP)
        b = await connections()

        async def b_took_it() -> bool:
            return await acquire(b, "pbx:main", "B", 1.5, margin=0.5) is not None

        await wait_for(b_took_it, 5.0, "B to take the frozen holder's lease")
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("go\n")  # the first thing it does after waking: try to write
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["refused", "LeaseLost"]
    finally:
        holder.kill()
        holder.wait()


async def test_a_stale_epochs_write_about_a_pbx_is_refused(
    cluster_url: str,
    connections: Connect,
) -> None:
    a, b = await connections(), await connections()
    store = Store.open(cluster_url)
    try:
        with pytest.raises(LeaseLost, match="no write lease"):
            store.save_applied_changes("main", {"100": ["+31612345678"]}, epoch=1)
        old = await acquire(a, "pbx:main", "A", 5)
        assert old is not None
        store.save_applied_changes("main", {"100": ["+31612345678"]}, epoch=old.epoch)
        await release(a, old)
        new = await acquire(b, "pbx:main", "B", 5)
        assert new is not None and new.epoch == old.epoch + 1
        # the old holder's write is refused before and after the new one wrote
        with pytest.raises(LeaseLost, match="epoch is 2"):
            store.save_applied_changes("main", {"100": ["333"]}, epoch=old.epoch)
        store.save_applied_changes("main", {"200": ["333"]}, epoch=new.epoch)
        with pytest.raises(LeaseLost):
            store.save_applied_changes("main", {"100": []}, epoch=old.epoch)
        assert store.load_applied("main") == {"100": ("+31612345678",), "200": ("333",)}
        assert await _pbx_epoch(a, "main") == 2
    finally:
        store.close()


async def test_a_takeover_waits_for_a_write_in_flight_and_then_fences_it_out(
    cluster_url: str,
    connections: Connect,
) -> None:
    """The lease row is read FOR SHARE: a write and a takeover never interleave."""
    from pbxcal.store.engine import Database
    from pbxcal.store.fencing import claim_pbx_epoch

    a, b = await connections(), await connections()
    old = await acquire(a, "pbx:main", "A", 0.5, margin=0.1)
    assert old is not None
    database = Database.open(cluster_url)
    try:
        with database.transaction(write=True) as conn:
            claim_pbx_epoch(conn, "main", old.epoch)
            # the lease expires while the write is still open; B tries to take it
            await wait_for(lambda: not Fence(old).valid(), 5.0, "the lease to run out")
            takeover = asyncio.create_task(acquire(b, "pbx:main", "B", 5))
            done, _ = await asyncio.wait([takeover], timeout=1.0)
            assert not done, "the takeover must wait for the write in flight"
        new = await asyncio.wait_for(takeover, 5.0)  # the write committed: B goes ahead
        assert new is not None and new.epoch == old.epoch + 1
        with pytest.raises(LeaseLost), database.transaction(write=True) as conn:
            claim_pbx_epoch(conn, "main", old.epoch)
    finally:
        database.close()


async def test_renewing_fails_cleanly_while_postgres_is_down_and_works_once_it_is_back(
    cluster_server: str,
    conninfo: str,
    connections: Connect,
) -> None:
    a = await connections()
    lease = await acquire(a, "pbx:main", "A", 2.0, margin=0.5)
    assert lease is not None
    fence = Fence(lease)
    stop_postgres(cluster_server)
    try:
        with pytest.raises(StoreError, match="cannot renew leases") as failed:
            await renew(a, lease)
        assert "\n" not in str(failed.value)
        await wait_for(lambda: not fence.valid(), 5.0, "the fence to run out unrenewed")
    finally:
        start_postgres(cluster_server)
    a2 = await connections()  # the old connection died with the server
    renewed = await renew(a2, lease)
    assert renewed is not None and renewed.epoch == lease.epoch  # nobody took it meanwhile
    assert renewed.valid_until > local_clock()


async def _pbx_epoch(conn: Conn, pbx: str) -> int:
    cursor = await conn.execute("SELECT epoch FROM pbx_epochs WHERE pbx = %s", (pbx,))
    row = await cursor.fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]
