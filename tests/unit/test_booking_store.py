"""The bookings table refuses double booking in the database itself (migration 0006).

On SQLite (triggers; writers serialised by ``BEGIN IMMEDIATE``): 20 threads inserting
one agent's same slot leave exactly one row; overlapping but not equal times are refused
too, touching ones are not; a cancelled booking frees its time; an update that would
overlap is refused; another agent's bookings never conflict. The reminder claim is won
once. ``tests/integration/test_booking_postgres.py`` runs ``STORE_CASES`` on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pbxcal.store import Store
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
    agent: str, start: datetime, minutes: int = 30, status: str = "confirmed"
) -> dict[str, Any]:
    n = next(_counter)
    return {
        "agent_id": agent, "start_at": start, "end_at": start + timedelta(minutes=minutes),
        "subject": "Talk", "guest_name": "Guest", "guest_email": "g@example.com",
        "language": "en", "uid": f"uid-{n}@test", "sequence": 0, "status": status,
        "manage_token_hash": f"hash-{n}",
    }  # fmt: skip


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
