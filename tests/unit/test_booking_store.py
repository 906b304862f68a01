"""The bookings table refuses double booking in the database itself (migrations 0006
and 0009).

On SQLite (triggers; writers serialised by ``BEGIN IMMEDIATE``): 20 threads inserting
one agent's same slot leave exactly one row; overlapping but not equal times are refused
too, touching ones are not; a cancelled booking frees its time; an update that would
overlap is refused; another agent's bookings never conflict. The buffers are the
database's too: what is kept apart is each booking's blocked range (the meeting with
its buffers), so 20 threads booking two neighbouring slots whose buffers collide leave
one row, a move is checked on its blocked range, and a blocked range that does not hold
its meeting is refused. Migration 0009 on a store with rows of the old schema gives
them their meeting as blocked range and keeps ids unique. The reminder claim is won
once. ``tests/integration/test_booking_postgres.py`` runs every test here on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from pbxcal.errors import StoreError
from pbxcal.store import Store, migrate
from pbxcal.store import schema as db
from pbxcal.store.booking import BookingOverlap

T0 = datetime(2027, 3, 22, 9, tzinfo=UTC)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/booking.db"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        for agent in ("anna", "ben"):
            opened.add_agent(
                {"id": agent, "pbx": "main", "extension": "100", "name": agent.title(),
                 "email": None, "settings": {}, "booking_link_id": None,
                 "conflict_link_ids": []}
            )  # fmt: skip
        yield opened


_counter = iter(range(10**9))


def row(
    agent: str,
    start: datetime,
    minutes: int = 30,
    status: str = "confirmed",
    *,
    before: int | None = None,
    after: int | None = None,
) -> dict[str, Any]:
    """A booking row; ``before`` / ``after``: buffers in minutes (None: no blocked range
    given, the store's default, which is the meeting)."""
    n = next(_counter)
    end = start + timedelta(minutes=minutes)
    values = {
        "agent_id": agent, "start_at": start, "end_at": end,
        "subject": "Talk", "guest_name": "Guest", "guest_email": "g@example.com",
        "language": "en", "uid": f"uid-{n}@test", "sequence": 0, "status": status,
        "manage_token_hash": f"hash-{n}",
    }  # fmt: skip
    if before is not None or after is not None:
        values["blocked_start"] = start - timedelta(minutes=before or 0)
        values["blocked_end"] = end + timedelta(minutes=after or 0)
    return values


def test_twenty_threads_one_slot_exactly_one_row(store: Store) -> None:
    results: list[str] = []
    barrier = threading.Barrier(20)

    def attempt() -> None:
        barrier.wait()
        try:
            store.insert_booking(row("anna", T0))
            results.append("booked")
        except BookingOverlap:
            results.append("taken")

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["booked"] + ["taken"] * 19
    assert (
        len(store.confirmed_bookings(("anna",), T0 - timedelta(days=1), T0 + timedelta(days=1)))
        == 1
    )


def test_overlap_rules(store: Store) -> None:
    store.insert_booking(row("anna", T0, 60))
    with pytest.raises(BookingOverlap):
        store.insert_booking(row("anna", T0 + timedelta(minutes=59), 30))  # overlaps the end
    with pytest.raises(BookingOverlap):
        store.insert_booking(row("anna", T0 - timedelta(minutes=15), 120))  # covers it
    store.insert_booking(row("anna", T0 + timedelta(minutes=60), 30))  # touches: fine
    store.insert_booking(row("anna", T0 - timedelta(minutes=30), 30))  # touches: fine
    store.insert_booking(row("ben", T0, 60))  # another agent
    store.insert_booking(row("anna", T0, 60, status="cancelled"))  # cancelled rows never block


def test_cancelled_frees_and_update_is_checked(store: Store) -> None:
    first = store.insert_booking(row("anna", T0))
    second = store.insert_booking(row("anna", T0 + timedelta(hours=1)))
    with pytest.raises(BookingOverlap):  # moving onto the first
        store.update_booking(second, {"start_at": T0 + timedelta(minutes=15),
                                      "end_at": T0 + timedelta(minutes=45)})  # fmt: skip
    assert store.update_booking(first, {"status": "cancelled"})
    store.update_booking(second, {"start_at": T0, "end_at": T0 + timedelta(minutes=30)})
    with pytest.raises(BookingOverlap):  # reconfirming the cancelled one now overlaps
        store.update_booking(first, {"status": "confirmed"})


def test_reminder_is_claimed_once(store: Store) -> None:
    booking = store.insert_booking(row("anna", T0))
    due = store.due_reminders(T0 - timedelta(minutes=15), T0 + timedelta(minutes=1))
    assert [d["id"] for d in due] == [booking]
    wins = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(store.claim_reminder(booking, 0, T0 - timedelta(minutes=15)))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(wins) == [False] * 7 + [True]
    assert store.due_reminders(T0 - timedelta(minutes=15), T0 + timedelta(minutes=1)) == []
    # a moved booking (new sequence, reminded_at cleared) is reminded again
    store.update_booking(booking, {"sequence": 1, "reminded_at": None})
    assert store.claim_reminder(booking, 1, T0)


def test_group_turns_are_counted_atomically(store: Store) -> None:
    store.add_group("team", "Team", ["anna", "ben"])
    turns: list[int] = []

    def take() -> None:
        turns.append(store.take_group_turn("team"))

    threads = [threading.Thread(target=take) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(turns) == list(range(10))


# -- buffers: the blocked ranges are kept apart (migration 0009) ----------------------------


def test_buffers_keep_meetings_apart(store: Store) -> None:
    # 10:00-10:30 with 15 minutes before and after blocks 09:45-10:45
    store.insert_booking(row("anna", T0 + timedelta(hours=1), before=15, after=15))
    ten = T0 + timedelta(hours=1)
    with pytest.raises(BookingOverlap):  # the meetings do not overlap, the buffers do
        store.insert_booking(row("anna", ten + timedelta(minutes=45), before=15, after=15))
    with pytest.raises(BookingOverlap):  # no buffers of its own, inside the other's
        store.insert_booking(row("anna", ten + timedelta(minutes=30)))
    with pytest.raises(BookingOverlap):  # before it: its after-buffer meets the other's
        store.insert_booking(row("anna", ten - timedelta(minutes=45), after=5))
    # the gap is the first one's after-buffer plus the second one's before-buffer
    store.insert_booking(row("anna", ten + timedelta(minutes=60), before=15, after=15))
    store.insert_booking(row("anna", ten - timedelta(minutes=45)))  # touches 09:45
    store.insert_booking(row("ben", ten + timedelta(minutes=30), before=15))  # another agent
    store.insert_booking(row("anna", ten + timedelta(minutes=30), status="cancelled"))
    blocked = store.blocked_ranges(("anna",), ten, ten + timedelta(minutes=1))
    assert blocked == [("anna", ten - timedelta(minutes=15), ten + timedelta(minutes=45))]


def test_twenty_threads_on_neighbouring_slots_whose_buffers_collide(store: Store) -> None:
    # 09:00 and 09:30, 15 minutes before and after each: 08:45-09:45 and 09:15-10:15
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(20)

    def attempt(n: int) -> None:
        start = T0 + timedelta(minutes=30 * (n % 2))
        barrier.wait()
        try:
            store.insert_booking(row("anna", start, before=15, after=15))
            results.append((n % 2, "booked"))
        except BookingOverlap:
            results.append((n % 2, "taken"))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r for _, r in results) == ["booked"] + ["taken"] * 19
    assert len(store.confirmed_bookings(("anna",), T0, T0 + timedelta(hours=2))) == 1


def test_a_move_is_checked_on_its_blocked_range(store: Store) -> None:
    store.insert_booking(row("anna", T0, before=15, after=15))  # blocks 08:45-09:45
    later = store.insert_booking(row("anna", T0 + timedelta(hours=2), before=15, after=15))
    nine_forty_five = T0 + timedelta(minutes=45)
    with pytest.raises(BookingOverlap):  # the meeting at 09:45 is free, its buffer is not
        store.update_booking(later, {
            "start_at": nine_forty_five, "end_at": nine_forty_five + timedelta(minutes=30),
            "blocked_start": nine_forty_five - timedelta(minutes=15),
            "blocked_end": nine_forty_five + timedelta(minutes=45)})  # fmt: skip
    assert store.update_booking(
        later, {"start_at": nine_forty_five, "end_at": nine_forty_five + timedelta(minutes=30)}
    )
    moved = store.get_booking(later)
    assert moved is not None and moved["blocked_start"] == nine_forty_five  # the meeting


def test_a_blocked_range_must_hold_its_meeting(store: Store) -> None:
    bad = row("anna", T0)
    bad["blocked_start"] = T0 + timedelta(minutes=5)
    bad["blocked_end"] = T0 + timedelta(minutes=30)
    with pytest.raises(StoreError) as refused:
        store.insert_booking(bad)
    assert not isinstance(refused.value, BookingOverlap)
    assert "blocked_range" in str(refused.value)
    assert store.list_bookings("anna", T0 - timedelta(days=1)) == []


def test_migration_0009_gives_old_rows_their_meeting_as_blocked_range(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    old = {
        "subject": "Talk", "guest_name": "Guest", "guest_email": "g@example.com",
        "language": "en", "sequence": 0, "created_at": T0,
    }  # fmt: skip
    minutes = timedelta(minutes=30)
    try:
        with engine.begin() as conn:  # a store as pbxcal with migration 0008 left it
            config = migrate.alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0008")
            conn.execute(sa.insert(db.agents), {
                "id": "anna", "pbx": "main", "extension": "100", "name": "Anna",
                "settings": {"buffer_before": 15, "buffer_after": 15}, "conflict_link_ids": [],
                "created_at": T0})  # fmt: skip
            earlier = [(T0, "confirmed"), (T0 + minutes, "confirmed"), (T0, "cancelled"),
                       (T0 + 4 * minutes, "gone")]  # fmt: skip
            for n, (start, status) in enumerate(earlier):
                values = {
                    "agent_id": "anna",
                    "start_at": start,
                    "end_at": start + minutes,
                    "status": status,
                    "uid": f"old-{n}",
                    "manage_token_hash": f"old-{n}",
                }
                conn.execute(sa.insert(db.bookings), {**old, **values})
            conn.execute(sa.delete(db.bookings).where(db.bookings.c.status == "gone"))
    finally:
        engine.dispose()
    with Store.open(store_url) as store:
        rows = sorted(store.list_bookings("anna", T0 - timedelta(days=1)), key=lambda r: r["id"])
        assert [(r["id"], r["status"]) for r in rows] == [
            (1, "confirmed"), (2, "confirmed"), (3, "cancelled")]  # fmt: skip
        for r in rows:
            assert (r["blocked_start"], r["blocked_end"]) == (r["start_at"], r["end_at"])
            assert r["join_url"] is None
        # the triggers / the constraint now work on the blocked ranges
        with pytest.raises(BookingOverlap):  # 10:00 with a 15 minute before-buffer
            store.insert_booking(row("anna", T0 + 2 * minutes, before=15))
        fresh = store.insert_booking(row("anna", T0 + 2 * minutes + timedelta(minutes=15),
                                         before=15))  # fmt: skip
        assert fresh > 4  # the deleted row's id 4 is not handed out again
