"""Leases with fencing epochs: "one writer per PBX" on one PostgreSQL.

What it does: a lease is a row of the ``leases`` table (``name`` such as ``pbx:main``,
``holder`` member id, ``epoch``, ``expires_at``). ``acquire`` and ``renew`` are each one
atomic SQL statement whose expiry is judged by the *database's* clock
(``clock_timestamp()``), so the hosts' wall clocks never matter:

* ``acquire``: ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE expired OR holder =
  me RETURNING epoch``. Of two members racing for a free lease exactly one gets a row
  back; the epoch grows by one only when the holder changes.
* ``renew``: ``UPDATE ... WHERE name, holder and epoch are still mine``; no row back
  means the lease was taken over.
* ``release``: ends the lease now (the row and its epoch stay, so epochs never go back).

The holder's own view (``Lease.valid_until``) is measured on its *local* clock: the
clock reading taken before the request was sent, plus the ttl, minus a safety
``margin``. The database set ``expires_at`` = (its clock when it ran the statement) +
ttl, and it ran the statement after the request was sent, so as long as the two clocks
run at the same rate within ``margin`` per ttl, the holder stops believing in its lease
before anybody else can be granted it — whatever the round trip took, and even when the
process was frozen (SIGSTOP) in between: the local clock kept running. ``local_clock``
is ``CLOCK_BOOTTIME``, which also counts time the host was suspended.

``Fence`` is what a PBX writer checks before every AMI write batch: ``check()`` raises
``LeaseLost`` once the lease ran out locally or was revoked, and returns the epoch that
the writer records with state it writes about the PBX (``store.fencing``).

What it must not do: trust a wall clock, or treat a failed statement as "still mine"
(a database error raises ``StoreError``; the lease then simply runs out locally).

Start reading at ``acquire``, then ``Fence.check``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import psycopg

from pbxcal.errors import LeaseLost, StoreError
from pbxcal.store.engine import one_line

#: A clock in seconds that never jumps and keeps running while the process is frozen.
LocalClock = Callable[[], float]

#: Default lease time in seconds (the issue's bound on a takeover).
DEFAULT_TTL = 10.0
#: Default safety margin: the local view ends this much before the database's expiry.
DEFAULT_MARGIN = 2.0


def local_clock() -> float:
    """``CLOCK_BOOTTIME`` where the OS has it (counts suspend too), else monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()  # pragma: no cover - Linux has CLOCK_BOOTTIME


@dataclass(frozen=True)
class Lease:
    """A lease this process holds, as of the request that granted or renewed it."""

    name: str
    holder: str
    epoch: int
    ttl: float
    margin: float
    #: local clock: this process may act on the lease strictly before this moment
    valid_until: float
    #: the database's expiry (informational: the local view is what counts here)
    expires_at: datetime


@dataclass(frozen=True)
class LeaseRow:
    """A row of the ``leases`` table as any member or ``pbxcal cluster status`` sees it."""

    name: str
    holder: str
    epoch: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    #: seconds until expiry by the database's clock (negative: expired)
    expires_in: float

    @property
    def live(self) -> bool:
        return self.expires_in > 0

    @property
    def released(self) -> bool:
        """Ended by its holder (``release``) rather than left to expire."""
        return self.expires_at <= self.renewed_at


_ACQUIRE = """
INSERT INTO leases AS l (name, holder, epoch, acquired_at, renewed_at, expires_at)
VALUES (%(name)s, %(holder)s, 1, clock_timestamp(), clock_timestamp(),
        clock_timestamp() + make_interval(secs => %(ttl)s::float8))
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END,
    acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at
                       ELSE excluded.acquired_at END,
    renewed_at = excluded.renewed_at,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at <= clock_timestamp()
RETURNING epoch, expires_at
"""

_RENEW = """
UPDATE leases
SET renewed_at = clock_timestamp(),
    expires_at = clock_timestamp() + make_interval(secs => %(ttl)s::float8)
WHERE holder = %(holder)s AND name = ANY(%(names)s)
RETURNING name, epoch, expires_at
"""

_RELEASE = """
UPDATE leases SET expires_at = clock_timestamp(), renewed_at = clock_timestamp()
WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s
  AND expires_at > clock_timestamp()
"""

LEASES_QUERY = """
SELECT name, holder, epoch, acquired_at, renewed_at, expires_at,
       extract(epoch FROM expires_at - clock_timestamp())::float8
FROM leases ORDER BY name
"""

Connection = psycopg.AsyncConnection[tuple[object, ...]]


def _check_times(ttl: float, margin: float) -> None:
    if not 0 <= margin < ttl:
        raise ValueError(f"lease margin {margin} s must be at least 0 and below the ttl {ttl} s")


async def acquire(
    conn: Connection,
    name: str,
    member: str,
    ttl: float = DEFAULT_TTL,
    *,
    margin: float = DEFAULT_MARGIN,
    clock: LocalClock = local_clock,
) -> Lease | None:
    """Take lease ``name`` for ``member`` if it is free, expired or already theirs.

    Returns the lease (its epoch one higher than the last holder's when the holder
    changed), or None when another member holds it. ``StoreError`` when the database
    cannot be asked; then nothing is known and nothing may be assumed.
    """
    _check_times(ttl, margin)
    sent = clock()
    row = await _fetchone(conn, _ACQUIRE, {"name": name, "holder": member, "ttl": ttl}, name)
    if row is None:
        return None
    epoch, expires_at = row
    assert isinstance(epoch, int) and isinstance(expires_at, datetime)
    return Lease(name, member, epoch, ttl, margin, sent + ttl - margin, expires_at)


async def renew(conn: Connection, lease: Lease, *, clock: LocalClock = local_clock) -> Lease | None:
    """Extend ``lease`` by its ttl from now; None when it is no longer this holder's."""
    renewed = await renew_all(conn, [lease], clock=clock)
    return renewed.get(lease.name)


async def renew_all(
    conn: Connection, leases: Sequence[Lease], *, clock: LocalClock = local_clock
) -> dict[str, Lease]:
    """Renew several leases of one holder (same ttl) in one statement.

    Returns the renewed ones by name; a lease missing from the answer was taken over
    (another holder or epoch) and must be given up at once.
    """
    if not leases:
        return {}
    holder, ttl = leases[0].holder, leases[0].ttl
    if any(lease.holder != holder or lease.ttl != ttl for lease in leases):
        raise ValueError("renew_all: the leases must share one holder and ttl")
    sent = clock()
    params = {"holder": holder, "ttl": ttl, "names": [lease.name for lease in leases]}
    rows = await _fetchall(conn, _RENEW, params, "renew leases")
    by_name = {lease.name: lease for lease in leases}
    renewed: dict[str, Lease] = {}
    for name, epoch, expires_at in rows:
        assert isinstance(name, str) and isinstance(expires_at, datetime)
        lease = by_name[name]
        if epoch == lease.epoch:
            valid_until = max(lease.valid_until, sent + ttl - lease.margin)
            renewed[name] = replace(lease, valid_until=valid_until, expires_at=expires_at)
    return renewed


async def release(conn: Connection, lease: Lease) -> None:
    """End ``lease`` now so another member can take it at once (its epoch is kept).

    Stop writing first (``Fence.revoke``), then release.
    """
    params = {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch}
    try:
        await conn.execute(_RELEASE, params)
    except psycopg.Error as exc:
        raise StoreError(f"cannot release lease {lease.name}: {one_line(exc)}") from exc


async def list_leases(conn: Connection) -> list[LeaseRow]:
    """Every lease row, with seconds to expiry by the database's clock."""
    rows = await _fetchall(conn, LEASES_QUERY, {}, "list leases")
    return [lease_row(row) for row in rows]


def lease_row(row: Sequence[object]) -> LeaseRow:
    name, holder, epoch, acquired_at, renewed_at, expires_at, expires_in = row
    assert isinstance(name, str) and isinstance(holder, str) and isinstance(epoch, int)
    assert isinstance(acquired_at, datetime) and isinstance(renewed_at, datetime)
    assert isinstance(expires_at, datetime) and isinstance(expires_in, float)
    return LeaseRow(name, holder, epoch, acquired_at, renewed_at, expires_at, expires_in)


class Fence:
    """The writer's check before every write batch to a PBX; see the module docstring.

    One ``Fence`` per granted lease (per epoch). The lease keeper feeds it renewals
    (``renewed``) and revokes it when the lease is taken over or given away; on its own
    it runs out when its local clock passes ``valid_until``.
    """

    def __init__(self, lease: Lease, clock: LocalClock = local_clock) -> None:
        self._lease = lease
        self._clock = clock
        self._revoked: str | None = None

    @property
    def name(self) -> str:
        return self._lease.name

    @property
    def epoch(self) -> int:
        return self._lease.epoch

    @property
    def lease(self) -> Lease:
        return self._lease

    def remaining(self) -> float:
        """Seconds this process may still act on the lease (0 once lost)."""
        if self._revoked is not None:
            return 0.0
        return max(0.0, self._lease.valid_until - self._clock())

    def valid(self) -> bool:
        return self.remaining() > 0

    def check(self, need: float = 0.0) -> int:
        """The epoch, if the lease is valid for ``need`` more seconds; else ``LeaseLost``."""
        if self._revoked is not None:
            raise LeaseLost(f"lease {self.name} epoch {self.epoch}: {self._revoked}")
        left = self._lease.valid_until - self._clock()
        if left <= need:
            raise LeaseLost(
                f"lease {self.name} epoch {self.epoch} ran out on this process's clock "
                f"{max(0.0, -left):.1f}s ago (not renewed in time)"
            )
        return self._lease.epoch

    def renewed(self, lease: Lease) -> None:
        """A renewal of this same lease (same name, holder and epoch) arrived."""
        if (lease.name, lease.holder, lease.epoch) != (
            self._lease.name,
            self._lease.holder,
            self._lease.epoch,
        ):
            raise ValueError(f"lease {lease.name} epoch {lease.epoch} is not this fence's")
        if self._revoked is None and lease.valid_until > self._lease.valid_until:
            self._lease = lease

    def revoke(self, why: str) -> None:
        """Stop at once (taken over, given away, shutting down); for good."""
        if self._revoked is None:
            self._revoked = why

    def __repr__(self) -> str:
        return f"<Fence {self.name} epoch {self.epoch} remaining {self.remaining():.1f}s>"


async def _fetchone(
    conn: Connection, sql: str, params: dict[str, object], what: str
) -> tuple[object, ...] | None:
    try:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"cannot acquire lease {what}: {one_line(exc)}") from exc


async def _fetchall(
    conn: Connection, sql: str, params: dict[str, object], what: str
) -> list[tuple[object, ...]]:
    try:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()
    except psycopg.Error as exc:
        raise StoreError(f"cannot {what}: {one_line(exc)}") from exc
