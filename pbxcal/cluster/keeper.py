"""``LeaseKeeper``: this process's membership and the leases ownership gives it.

What it does, once per round (every third of the ttl, and right when another member's
lease runs out unrenewed): beat this member's row, renew every lease it holds in one statement,
read the live members and the leases, compute the moves (``ownership.plan_moves``),
release what it should hand over and acquire what it should own and nobody holds.
Each held lease has a ``Fence``; ``on_gained(fence)`` and ``on_lost(fence, why)`` tell
the daemon when to start and stop writing to that PBX. A lease that cannot be renewed
(PostgreSQL unreachable) is reported lost when it runs out on the local clock; the
fence itself refuses writes from that moment whether or not anybody is told.

One dedicated connection (``connection.connect``); every round runs under a timeout, a
failed round closes the connection and the next one reconnects. Logs say when a lease
is taken (and over from whom), handed over, lost and why.

What it must not do: write to a PBX (the daemon does, through the fence), or keep a
fence alive on anything but a successful renewal.

Start reading at ``LeaseKeeper.round``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import psycopg

from pbxcal.cluster import lease as leases
from pbxcal.cluster import members as membership
from pbxcal.cluster.connection import connect
from pbxcal.cluster.lease import DEFAULT_MARGIN, DEFAULT_TTL, Fence, LocalClock, local_clock
from pbxcal.cluster.ownership import MemberAge, plan_moves
from pbxcal.errors import StoreError
from pbxcal.store.engine import one_line

log = logging.getLogger(__name__)

#: A lease that expires is tried this long after its expiry (database clock rounding).
_AFTER_EXPIRY = 0.05
#: After a failed round, the next is tried this soon (a restarted PostgreSQL is back fast).
_RETRY_FIRST = 0.25
#: Rows of long-dead members are deleted this often (seconds).
_FORGET_EVERY = 600.0


class LeaseKeeper:
    """See the module docstring. ``run()`` until cancelled, then ``close()``."""

    def __init__(
        self,
        conninfo: str,
        names: Iterable[str],
        *,
        member_id: str | None = None,
        ttl: float = DEFAULT_TTL,
        margin: float = DEFAULT_MARGIN,
        settle: float | None = None,
        clock: LocalClock = local_clock,
        on_gained: Callable[[Fence], None] | None = None,
        on_lost: Callable[[Fence, str], None] | None = None,
    ) -> None:
        if not 0 <= margin < ttl:
            raise ValueError(f"lease margin {margin} s must be at least 0 and below ttl {ttl} s")
        self.conninfo = conninfo
        self.names = frozenset(names)
        self.member_id = member_id or membership.new_member_id()
        self.ttl = ttl
        self.margin = margin
        self.settle = 3 * ttl if settle is None else settle
        self.clock = clock
        self.on_gained = on_gained
        self.on_lost = on_lost
        #: the fences of the leases held now, by lease name
        self.fences: dict[str, Fence] = {}
        #: the targets of the last round (lease name -> member id), for status
        self.targets: dict[str, str] = {}
        #: the live members as of the last round
        self.members: list[membership.Member] = []
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._failing = False
        self._retry = _RETRY_FIRST
        self._next_forget = 0.0
        #: set after every completed round (tests wait on it)
        self.round_done = asyncio.Event()
        #: called with (lease name, previous holder) when a lease is taken over
        self.on_takeover: Callable[[str, str], None] | None = None
        #: called with the live member ids whenever that set changes
        self.on_members: Callable[[list[str]], None] | None = None

    def fence(self, name: str) -> Fence | None:
        """The valid fence of lease ``name``, or None when this process must not write."""
        fence = self.fences.get(name)
        return fence if fence is not None and fence.valid() else None

    def set_names(self, names: Iterable[str]) -> None:
        """The leases to share out changed (config reload); applied on the next round."""
        self.names = frozenset(names)

    async def run(self) -> None:
        """Rounds forever (cancel to stop, then ``close``)."""
        while True:
            wait = await self.round()
            await asyncio.sleep(wait)  # the round's own schedule, not synchronisation

    async def round(self) -> float:
        """One round; returns the seconds until the next one is due."""
        try:
            async with asyncio.timeout(max(1.0, self.ttl / 3)):
                wait = await self._round()
        except (StoreError, psycopg.Error, TimeoutError, OSError) as exc:
            await self._drop_connection()
            if not self._failing:
                log.warning(
                    "cluster: PostgreSQL unreachable (%s); %d lease(s) run out on this "
                    "process's clock if it does not come back",
                    one_line(exc) if not isinstance(exc, TimeoutError) else "timed out",
                    len(self.fences),
                )
                self._failing = True
            self._expire_local()
            wait, self._retry = self._retry, min(self._retry * 2, self.ttl / 3)
        else:
            if self._failing:
                log.info("cluster: PostgreSQL reachable again")
            self._failing = False
            self._retry = _RETRY_FIRST
            self.round_done.set()
        return min(wait, self._next_local_expiry())

    async def _round(self) -> float:
        conn = await self._connection()
        await membership.heartbeat(conn, self.member_id, self.ttl)
        if self.clock() >= self._next_forget:
            self._next_forget = self.clock() + _FORGET_EVERY
            await membership.forget_dead(conn)
        if self.fences:
            held = [fence.lease for fence in self.fences.values()]
            renewed = await leases.renew_all(conn, held, clock=self.clock)
            for name, fence in list(self.fences.items()):
                if name in renewed:
                    fence.renewed(renewed[name])
                else:
                    self._lose(name, "taken over by another member (not renewed)")
        self._expire_local()
        live = await membership.list_members(conn)
        changed = {m.member_id for m in live} != {m.member_id for m in self.members}
        self.members = live
        if changed and self.on_members is not None:
            self.on_members(sorted(m.member_id for m in live))
        rows = await leases.list_leases(conn)
        holders = {row.name: row.holder for row in rows if row.live}
        moves = plan_moves(
            self.names,
            [MemberAge(m.member_id, m.alive_for) for m in live],
            holders,
            self.member_id,
            settle=self.settle,
        )
        self.targets = moves.targets
        for name in moves.release:
            given_up = self.fences.get(name)
            target = moves.targets.get(name)
            why = f"handed over to member {target}" if target else "no longer shared out"
            self._lose(name, why)
            if given_up is not None:
                await leases.release(conn, given_up.lease)
        previous = {row.name: row for row in rows}
        # A lease still ours in the database but no longer on our own clock (renewals
        # failed for a while): take it back now rather than after its expiry.
        ours = [
            name
            for name, holder in holders.items()
            if holder == self.member_id
            and name not in self.fences
            and moves.targets.get(name) == self.member_id
        ]
        for name in [*moves.acquire, *sorted(ours)]:
            lease = await leases.acquire(
                conn, name, self.member_id, self.ttl, margin=self.margin, clock=self.clock
            )
            if lease is None:
                continue  # somebody else was quicker; the next round sees it
            fence = Fence(lease, self.clock)
            self.fences[name] = fence
            before = previous.get(name)
            if before is not None and before.holder != self.member_id:
                log.warning(
                    "cluster: took over %s (epoch %d) from member %s, whose lease %s",
                    name,
                    lease.epoch,
                    before.holder,
                    "was released" if before.released else "had expired",
                )
                if self.on_takeover is not None:
                    self.on_takeover(name, before.holder)
            else:
                log.info("cluster: holding %s (epoch %d)", name, lease.epoch)
            if self.on_gained is not None:
                self.on_gained(fence)
        # Be there when another member's lease runs out unrenewed: that member has died
        # (its heartbeat, written just before its renewals, is stale by then too) and
        # the PBX is to be taken over now, not a round later.
        wait = self.ttl / 3
        for row in rows:
            if row.live and row.holder != self.member_id:
                wait = min(wait, row.expires_in + _AFTER_EXPIRY)
        return max(wait, 0.0)

    def _expire_local(self) -> None:
        for name, fence in list(self.fences.items()):
            if not fence.valid():
                self._lose(name, "not renewed in time: it ran out on this process's clock")

    def _next_local_expiry(self) -> float:
        remaining = [fence.remaining() for fence in self.fences.values()]
        return min(remaining, default=float("inf"))

    def _lose(self, name: str, why: str) -> None:
        fence = self.fences.pop(name, None)
        if fence is None:
            return
        fence.revoke(why)
        log.warning("cluster: stopped writing for %s (epoch %d): %s", name, fence.epoch, why)
        if self.on_lost is not None:
            self.on_lost(fence, why)

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self.conninfo)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(1.0):
                    await conn.close()
            except (psycopg.Error, TimeoutError, OSError):
                pass

    async def close(self) -> None:
        """Stop writing everywhere, hand every lease back, leave the group."""
        held = list(self.fences.values())
        for fence in held:
            self._lose(fence.name, "shutting down")
        try:
            async with asyncio.timeout(max(1.0, self.ttl / 3)):
                conn = await self._connection()
                for fence in held:
                    await leases.release(conn, fence.lease)
                await membership.leave(conn, self.member_id)
        except (StoreError, psycopg.Error, TimeoutError, OSError) as exc:
            log.info("cluster: could not hand the leases back on shutdown (%s); they "
                     "expire within %.0f s", one_line(exc), self.ttl)  # fmt: skip
        await self._drop_connection()
