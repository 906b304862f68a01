"""Membership: which pbxcal processes are alive, by heartbeats in the ``members`` table.

What it does: every process has a member id (a uuid, new on every start, ``new_member_id``)
and beats its ``members`` row about every third of its ttl (``heartbeat``). A member
whose last beat is older than the ttl is dead. All times are the *database's* clock,
so hosts with wrong wall clocks agree on who is alive. ``alive_since`` is the start of
the member's current unbroken run of beats: a member that missed its ttl and comes back
starts a new run, so ownership (``ownership.plan_moves``) waits a settle time again
before moving anything to it, and a flaky member cannot pull PBXes back and forth.

What it must not do: decide anything about leases (``lease``) or ownership
(``ownership``); membership only says who is alive and since when.

Start reading at ``heartbeat``, then ``list_members``.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from pbxcal.errors import StoreError
from pbxcal.store.engine import one_line

Connection = psycopg.AsyncConnection[tuple[object, ...]]

#: Rows of members dead this long are deleted by ``forget_dead``.
FORGET_AFTER_SECONDS = 24 * 3600.0


def new_member_id() -> str:
    """A fresh member id for this process."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Member:
    """One row of ``members`` as seen at one moment of the database's clock."""

    member_id: str
    host: str
    pid: int
    ttl: float
    started_at: datetime
    alive_since: datetime
    heartbeat_at: datetime
    #: seconds since the last beat (database clock)
    heartbeat_age: float
    #: seconds since ``alive_since`` (database clock)
    alive_for: float

    @property
    def live(self) -> bool:
        return self.heartbeat_age < self.ttl


_HEARTBEAT = """
INSERT INTO members AS m (member_id, host, pid, ttl, started_at, alive_since, heartbeat_at)
VALUES (%(member)s, %(host)s, %(pid)s, %(ttl)s, clock_timestamp(), clock_timestamp(),
        clock_timestamp())
ON CONFLICT (member_id) DO UPDATE SET
    alive_since = CASE
        WHEN m.heartbeat_at < clock_timestamp() - make_interval(secs => m.ttl)
        THEN excluded.alive_since ELSE m.alive_since END,
    heartbeat_at = excluded.heartbeat_at,
    ttl = excluded.ttl
"""

MEMBERS_QUERY = """
SELECT member_id, host, pid, ttl, started_at, alive_since, heartbeat_at,
       extract(epoch FROM clock_timestamp() - heartbeat_at)::float8,
       extract(epoch FROM clock_timestamp() - alive_since)::float8
FROM members ORDER BY member_id
"""

_LEAVE = "DELETE FROM members WHERE member_id = %(member)s"

_FORGET = """
DELETE FROM members
WHERE heartbeat_at < clock_timestamp() - make_interval(secs => %(after)s::float8)
"""


async def heartbeat(conn: Connection, member_id: str, ttl: float) -> None:
    """Beat ``member_id``'s row (creating it on the first beat)."""
    params = {"member": member_id, "host": socket.gethostname(), "pid": os.getpid(), "ttl": ttl}
    await _execute(conn, _HEARTBEAT, params, "beat")


async def list_members(conn: Connection, *, live_only: bool = True) -> list[Member]:
    """Members sorted by id (only the live ones unless ``live_only`` is False)."""
    try:
        cursor = await conn.execute(MEMBERS_QUERY)
        rows = await cursor.fetchall()
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the cluster's members: {one_line(exc)}") from exc
    members = [member_row(row) for row in rows]
    return [m for m in members if m.live] if live_only else members


def member_row(row: Sequence[object]) -> Member:
    member_id, host, pid, ttl, started, since, beat, age, alive_for = row
    assert isinstance(member_id, str) and isinstance(host, str) and isinstance(pid, int)
    assert isinstance(ttl, float) and isinstance(age, float) and isinstance(alive_for, float)
    assert isinstance(started, datetime) and isinstance(since, datetime)
    assert isinstance(beat, datetime)
    return Member(member_id, host, pid, ttl, started, since, beat, age, alive_for)


async def leave(conn: Connection, member_id: str) -> None:
    """Remove this member's row on a clean shutdown (the others need not wait a ttl)."""
    await _execute(conn, _LEAVE, {"member": member_id}, "leave")


async def forget_dead(conn: Connection, after: float = FORGET_AFTER_SECONDS) -> None:
    """Delete rows of members whose last beat is older than ``after`` seconds."""
    await _execute(conn, _FORGET, {"after": after}, "forget dead members")


async def _execute(conn: Connection, sql: str, params: dict[str, object], what: str) -> None:
    try:
        await conn.execute(sql, params)
    except psycopg.Error as exc:
        raise StoreError(f"cannot {what} in the cluster's members: {one_line(exc)}") from exc
