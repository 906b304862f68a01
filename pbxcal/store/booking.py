"""Agents, agent groups and bookings (``Store``'s ``BookingTable`` mixin; migrations
0006 and 0009).

What it does: keeps agents (an extension with booking settings and the links that make
it busy / receive bookings), groups of agents with a round-robin counter, and bookings.
Rows go in and out as plain dicts (``pbxcal.booking`` turns them into its values).

The buffer rule lives here, in the database: each booking row carries its *blocked
range* ``[blocked_start, blocked_end)``, the meeting widened by the agent's buffers
before and after (the caller fills it; absent, it is the meeting itself), and two
confirmed bookings of one agent never have overlapping blocked ranges (touching is
fine). So two booked meetings are always at least the first one's after-buffer plus the
second one's before-buffer apart. ``insert_booking`` and ``update_booking`` raise
``BookingOverlap`` when the database refuses one: an exclusion constraint on
PostgreSQL, triggers on SQLite (migration 0009); Python never decides that race.
``claim_reminder`` is one conditional UPDATE, so a reminder is sent once even with
several processes. ``expansion_stamps`` / ``load_link_expansions`` read the synced
instances of a few links (availability needs no other link's).

What it must not do: store a manage token in plain; decide whether a slot is free.

Start reading at ``BookingTable.insert_booking``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database
from pbxcal.store.expansions import decode
from pbxcal.store.records import ExpansionRecord
from pbxcal.store.times import require_utc


class BookingOverlap(StoreError):
    """The database refused a confirmed booking that overlaps another of the agent."""


class AgentExists(StoreError):
    """An agent or group with that id exists already."""


_OVERLAP_WORDS = ("overlap", "ex_bookings_no_overlap", "exclusion")


class BookingTable:
    """Agent, group and booking calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    # -- agents ----------------------------------------------------------------------

    def add_agent(self, values: Mapping[str, Any]) -> None:
        """Insert an agent row (``id``, ``pbx``, ``extension``, ``name``, ``email``,
        ``settings``, ``booking_link_id``, ``conflict_link_ids``)."""
        row = {**values, "created_at": datetime.now(UTC)}
        with self._db.transaction(write=True) as conn:
            try:
                conn.execute(insert(db.agents), row)
            except IntegrityError as exc:
                if "links" in str(exc.orig).lower() or "foreign" in str(exc.orig).lower():
                    raise StoreError("the booking link does not exist") from None
                raise AgentExists(f"agent {values['id']!r} exists already") from None

    def update_agent(self, agent_id: str, values: Mapping[str, Any]) -> bool:
        """Change an agent's columns; False when there is no such agent."""
        with self._db.transaction(write=True) as conn:
            try:
                result = conn.execute(
                    update(db.agents).where(db.agents.c.id == agent_id).values(**values)
                )
            except IntegrityError:
                raise StoreError("the booking link does not exist") from None
            return bool(result.rowcount)

    def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        with self._db.transaction() as conn:
            row = conn.execute(select(db.agents).where(db.agents.c.id == agent_id)).first()
        return None if row is None else dict(row._mapping)

    def list_agents(self) -> list[dict[str, Any]]:
        with self._db.transaction() as conn:
            rows = conn.execute(select(db.agents).order_by(db.agents.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def delete_agent(self, agent_id: str) -> bool:
        with self._db.transaction(write=True) as conn:
            result = conn.execute(delete(db.agents).where(db.agents.c.id == agent_id))
            return bool(result.rowcount)

    # -- groups ----------------------------------------------------------------------

    def add_group(self, group_id: str, name: str, members: list[str]) -> None:
        row = {"id": group_id, "name": name, "members": members, "rr_counter": 0}
        with self._db.transaction(write=True) as conn:
            try:
                conn.execute(insert(db.agent_groups), row)
            except IntegrityError:
                raise AgentExists(f"group {group_id!r} exists already") from None

    def get_group(self, group_id: str) -> dict[str, Any] | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                select(db.agent_groups).where(db.agent_groups.c.id == group_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def list_groups(self) -> list[dict[str, Any]]:
        with self._db.transaction() as conn:
            rows = conn.execute(select(db.agent_groups).order_by(db.agent_groups.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def take_group_turn(self, group_id: str) -> int:
        """Count one booking of the group; the counter's value before it (atomic)."""
        table = db.agent_groups
        with self._db.transaction(write=True) as conn:
            row = conn.execute(
                update(table)
                .where(table.c.id == group_id)
                .values(rr_counter=table.c.rr_counter + 1)
                .returning(table.c.rr_counter)
            ).first()
        if row is None:
            raise StoreError(f"no group {group_id!r}")
        return int(row[0]) - 1

    # -- bookings --------------------------------------------------------------------

    def insert_booking(self, values: Mapping[str, Any]) -> int:
        """Insert a booking; its id. ``BookingOverlap`` when its blocked range (without
        ``blocked_start`` / ``blocked_end``: the meeting) meets another confirmed
        booking's of the agent."""
        row = {**_with_blocked_range(values),
               "created_at": values.get("created_at") or datetime.now(UTC)}  # fmt: skip
        for name in ("start_at", "end_at", "blocked_start", "blocked_end"):
            require_utc(row[name], f"booking {name}")
        with self._db.transaction(write=True) as conn:
            try:
                result = conn.execute(insert(db.bookings).returning(db.bookings.c.id), row)
            except IntegrityError as exc:
                raise _mapped(exc) from None
            return int(result.scalar_one())

    def update_booking(self, booking_id: int, values: Mapping[str, Any]) -> bool:
        """Change a booking; False when there is none. ``BookingOverlap`` as above. New
        meeting times without a blocked range block the meeting itself."""
        row = _with_blocked_range(values) if "start_at" in values else dict(values)
        with self._db.transaction(write=True) as conn:
            try:
                result = conn.execute(
                    update(db.bookings).where(db.bookings.c.id == booking_id).values(**row)
                )
            except IntegrityError as exc:
                raise _mapped(exc) from None
            return bool(result.rowcount)

    def delete_booking(self, booking_id: int) -> None:
        with self._db.transaction(write=True) as conn:
            conn.execute(delete(db.bookings).where(db.bookings.c.id == booking_id))

    def get_booking(self, booking_id: int) -> dict[str, Any] | None:
        return self._one_booking(db.bookings.c.id == booking_id)

    def find_booking_by_token(self, token_hash: str) -> dict[str, Any] | None:
        return self._one_booking(db.bookings.c.manage_token_hash == token_hash)

    def _one_booking(self, where: Any) -> dict[str, Any] | None:
        with self._db.transaction() as conn:
            row = conn.execute(select(db.bookings).where(where)).first()
        return None if row is None else dict(row._mapping)

    def confirmed_bookings(
        self, agent_ids: Collection[str], start: datetime, end: datetime
    ) -> list[tuple[str, datetime, datetime]]:
        """(agent id, start, end) of the agents' confirmed bookings overlapping the range."""
        c = db.bookings.c
        query = select(c.agent_id, c.start_at, c.end_at).where(
            c.agent_id.in_(list(agent_ids)),
            c.status == "confirmed",
            c.start_at < end,
            c.end_at > start,
        )
        with self._db.transaction() as conn:
            return [(r.agent_id, r.start_at, r.end_at) for r in conn.execute(query)]

    def blocked_ranges(
        self, agent_ids: Collection[str], start: datetime, end: datetime
    ) -> list[tuple[str, datetime, datetime]]:
        """(agent id, blocked start, blocked end) of the agents' confirmed bookings whose
        blocked range (buffers included) overlaps ``[start, end)``."""
        c = db.bookings.c
        query = select(c.agent_id, c.blocked_start, c.blocked_end).where(
            c.agent_id.in_(list(agent_ids)),
            c.status == "confirmed",
            c.blocked_start < end,
            c.blocked_end > start,
        )
        with self._db.transaction() as conn:
            return [(r.agent_id, r.blocked_start, r.blocked_end) for r in conn.execute(query)]

    def list_bookings(self, agent_id: str, since: datetime) -> list[dict[str, Any]]:
        c = db.bookings.c
        query = (
            select(db.bookings).where(c.agent_id == agent_id, c.end_at > since).order_by(c.start_at)
        )
        with self._db.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def due_reminders(self, now: datetime, until: datetime) -> list[dict[str, Any]]:
        """Confirmed, not yet reminded bookings starting in ``[now, until)``."""
        c = db.bookings.c
        query = select(db.bookings).where(
            c.status == "confirmed", c.reminded_at.is_(None), c.start_at >= now, c.start_at < until
        )
        with self._db.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def claim_reminder(self, booking_id: int, sequence: int, now: datetime) -> bool:
        """Mark the reminder of this version of the booking sent; True for the one caller
        that did (of any number of processes)."""
        c = db.bookings.c
        with self._db.transaction(write=True) as conn:
            result = conn.execute(
                update(db.bookings)
                .where(c.id == booking_id, c.sequence == sequence, c.reminded_at.is_(None))
                .values(reminded_at=now)
            )
            return bool(result.rowcount)

    def availability_inputs(
        self, agent_id: str, span: Callable[[dict[str, Any]], tuple[datetime, datetime]]
    ) -> tuple[dict[str, Any], dict[int, datetime], list[tuple[datetime, datetime]]] | None:
        """What availability reads, in one transaction: the agent's row, the
        ``computed_at`` of its conflict links' expansions, and the blocked ranges (buffers
        included) of its confirmed bookings overlapping ``span(row)`` = ``[since,
        until)``. None for an unknown agent."""
        b, x = db.bookings.c, db.expansions.c
        with self._db.transaction() as conn:
            row = conn.execute(select(db.agents).where(db.agents.c.id == agent_id)).first()
            if row is None:
                return None
            agent = dict(row._mapping)
            since, until = span(agent)
            links = [int(i) for i in agent["conflict_link_ids"] or ()]
            stamps = {
                r.link_id: r.computed_at
                for r in conn.execute(select(x.link_id, x.computed_at).where(x.link_id.in_(links)))
            } if links else {}  # fmt: skip
            bookings = [
                (r.blocked_start, r.blocked_end)
                for r in conn.execute(
                    select(b.blocked_start, b.blocked_end).where(
                        b.agent_id == agent_id, b.status == "confirmed",
                        b.blocked_start < until, b.blocked_end > since,
                    )
                )
            ]  # fmt: skip
        return agent, stamps, bookings

    # -- synced instances of a few links ---------------------------------------------

    def expansion_stamps(self, link_ids: Collection[int]) -> dict[int, datetime]:
        """When each link's saved expansion was computed (one small query)."""
        c = db.expansions.c
        with self._db.transaction() as conn:
            rows = conn.execute(
                select(c.link_id, c.computed_at).where(c.link_id.in_(list(link_ids)))
            )
            return {r.link_id: r.computed_at for r in rows}

    def load_link_expansions(self, link_ids: Collection[int]) -> dict[int, ExpansionRecord]:
        """The saved expansions of these links (absent: none saved)."""
        with self._db.transaction() as conn:
            rows = conn.execute(
                select(db.expansions).where(db.expansions.c.link_id.in_(list(link_ids)))
            ).all()
        return {
            row.link_id: ExpansionRecord(
                range_start=row.range_start,
                range_end=row.range_end,
                instances=decode(row.instances, row.link_id),
                computed_at=row.computed_at,
            )
            for row in rows
        }


def _with_blocked_range(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the blocked range defaulting to the meeting (no buffers)."""
    row = dict(values)
    row.setdefault("blocked_start", row["start_at"])
    row.setdefault("blocked_end", row["end_at"])
    return row


def _mapped(exc: IntegrityError) -> StoreError:
    text = str(exc.orig).lower()
    if any(word in text for word in _OVERLAP_WORDS):
        return BookingOverlap("the agent has another booking at that time")
    if "foreign" in text:
        return StoreError("no such agent")
    return StoreError(f"booking refused by the store: {text.splitlines()[0][:200]}")
