"""Availability and the database agree exactly on buffers (a real SQLite store).

Agent anna books 30-minute meetings every 15 minutes with 30 minutes free before and 15
after each meeting. One booking (11:00-11:30 local) is in the store with the blocked
range ``service.blocked_range`` gives it (10:30-11:45), and its own event, synced back,
is in her calendar next to a 15:00-16:00 review. For every start of that day's working
hours the test asks both sides: is it offered (``availability.agent_slots``), and does
the database take a booking there (``Store.insert_booking`` with the blocked range the
service would store; undone at once)? Offered exactly when the database takes it and
the review is clear of its buffers: the booking's own event does not count a second
time. Then anna's buffers go to zero: the booking keeps the buffers it was booked with
(11:30 stays refused on both sides, 11:45 is offered and taken).

The race: two guests book neighbouring slots (09:00 and 09:30, 15 minutes of buffer on
each side, so the blocked ranges 08:45-09:45 and 09:15-10:15 meet), each in its own
process through the real ``service.book`` with a real Radicale as the booking calendar
(``booking_race_child.py``); both pass the service's own check and are held at the
database's door until both are there, then let go together: exactly one is booked, the
other gets ``SlotTaken``, and only the winner's event is in Radicale.
``tests/integration/test_booking_postgres.py`` runs the same race on PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbxcal.booking import availability
from pbxcal.booking.agents import add_agent, load_agent, set_agent
from pbxcal.booking.service import blocked_range
from pbxcal.config import Config
from pbxcal.core.ical import EventInstance
from pbxcal.service.metrics import Metrics
from pbxcal.store import ExpansionRecord, Store, load_key_ring
from pbxcal.store.booking import BookingOverlap
from pbxcal.store.secrets import encode_key, new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates

AMS = ZoneInfo("Europe/Amsterdam")
DAY = date(2027, 3, 9)  # a Tuesday
NOW = datetime(2027, 3, 1, 8, tzinfo=UTC)
MEETING = timedelta(minutes=30)
_numbers = itertools.count()


def local(hh: int, mm: int = 0) -> datetime:
    return datetime.combine(DAY, time(hh, mm), tzinfo=AMS).astimezone(UTC)


def row(start: datetime, blocked: dict[str, datetime]) -> dict[str, object]:
    n = next(_numbers)
    return {
        "agent_id": "anna", "start_at": start, "end_at": start + MEETING, "subject": "Talk",
        "guest_name": "G", "guest_email": "g@example.org", "language": "en",
        "uid": f"b{n}@pbxcal", "sequence": 0, "status": "confirmed",
        "manage_token_hash": f"h{n}", **blocked,
    }  # fmt: skip


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WebContext]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    link = store.add_link("100", "main", "ics", "/dev/null", {})
    add_agent(store, Config(), "anna", pbx="main", extension="100", name="Anna",
              conflict_link_ids=[link.id],
              settings={"buffer_before": 30, "buffer_after": 15, "step_minutes": 15,
                        "min_notice_minutes": 0, "horizon_days": 60})  # fmt: skip
    agent = load_agent(store, "anna")
    booked = row(local(11), blocked_range(agent, local(11), local(11, 30)))
    store.insert_booking(booked)
    instances = (
        EventInstance(str(booked["uid"]), local(11), local(11, 30), "Talk"),  # its own event
        EventInstance("review@x", local(15), local(16), "Review"),
    )
    store.save_expansion(link.id, ExpansionRecord(NOW, NOW + timedelta(days=60), instances,
                                                  NOW))  # fmt: skip
    yield WebContext(config=Config(), store=store, keys=None, sync=None, clock=FakeClock(NOW),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    availability.forget_agent(store, "anna")
    store.close()


def both_sides(ctx: WebContext) -> tuple[list[datetime], list[datetime]]:
    """(the starts offered that day, the working-hours starts the database takes)."""
    store = ctx.store
    availability.forget_agent(store, "anna")
    day_start, day_end = local(0), local(23, 59)
    offered = [s.start for s in availability.agent_slots(store, ctx, "anna", day_start,
                                                         day_end, 30)]  # fmt: skip
    agent = load_agent(store, "anna")
    bare = availability.slots_of(agent, store, availability.parser_of(ctx, agent), day_start,
                                 day_end, 30, NOW, with_busy=False)  # fmt: skip
    taken = []
    for slot in bare:
        try:
            booking_id = store.insert_booking(
                row(slot.start, blocked_range(agent, slot.start, slot.start + MEETING))
            )
        except BookingOverlap:
            continue
        store.delete_booking(booking_id)
        taken.append(slot.start)
    return offered, taken


def clear_of_review(start: datetime, before: int, after: int) -> bool:
    return (start + MEETING + timedelta(minutes=after) <= local(15)
            or start - timedelta(minutes=before) >= local(16))  # fmt: skip


def test_a_slot_is_offered_exactly_when_the_database_takes_it(ctx: WebContext) -> None:
    offered, taken = both_sides(ctx)
    assert offered == [s for s in taken if clear_of_review(s, 30, 15)]
    # around the booking: its after-buffer (to 11:45) plus the slot's before-buffer (30)
    before_lunch = [s for s in offered if s < local(13)]
    assert before_lunch == [local(9), local(9, 15), local(9, 30), local(9, 45), local(12, 15),
                            local(12, 30)]  # fmt: skip
    # what the meeting alone (the old rule) would also have offered is refused by both
    for start in (local(10), local(10, 15), local(12)):
        assert start not in offered and start not in taken


def test_a_booking_keeps_the_buffers_it_was_booked_with(ctx: WebContext) -> None:
    set_agent(ctx.store, "anna", settings={"buffer_before": 0, "buffer_after": 0})
    offered, taken = both_sides(ctx)
    assert offered == [s for s in taken if clear_of_review(s, 0, 0)]
    assert local(10) in offered and local(10, 15) not in offered  # 10:30 its buffer begins
    assert local(11, 30) not in taken and local(11, 45) in offered  # and 11:45 it ends


# -- two processes race for neighbouring slots -----------------------------------------------

CHILD = Path(__file__).resolve().parent / "booking_race_child.py"
RACE_PASSWORD = "race-dav-password"
STEP_TIMEOUT = 60.0


def race_agent(store_url: str, directory: Path, radicale: RadicaleServer) -> Path:
    """Agent ``anna`` (15 minutes before and after) booking into a Radicale calendar of
    ``radicale`` (user ``anna``, password ``RACE_PASSWORD``); the key file."""
    key_file = directory / "keys"
    key_file.touch(mode=0o600)
    key_file.write_text(encode_key(new_key()) + "\n", encoding="ascii")
    url = radicale.make_calendar("anna", "work")
    with Store.open(store_url, keys=load_key_ring(str(key_file), None)) as store:
        link = store.add_link("100", "main", "caldav", url, {"username": "anna"})
        store.save_secret(link.id, "caldav-password", RACE_PASSWORD)
        add_agent(store, Config(), "anna", pbx="main", extension="100", name="Anna",
                  booking_link_id=link.id, conflict_link_ids=[link.id],
                  settings={"buffer_before": 15, "buffer_after": 15, "min_notice_minutes": 0,
                            "horizon_days": 60})  # fmt: skip
    return key_file


def race_day() -> date:
    """A Tuesday 8-14 days ahead."""
    soon = datetime.now(AMS).date() + timedelta(days=8)
    return soon + timedelta(days=(1 - soon.weekday()) % 7)


def race_neighbours(store_url: str, key_file: Path, starts: Sequence[datetime]) -> list[str]:
    """Book each of ``starts`` in a child process of its own; let them into the database
    only when every one has passed the service's check. Their last lines, in order."""
    pipe = subprocess.PIPE
    children = [
        subprocess.Popen([sys.executable, str(CHILD)], stdin=pipe, stdout=pipe, text=True)
        for _ in starts
    ]
    lines: list[queue.Queue[str]] = []
    try:
        for n, (child, start) in enumerate(zip(children, starts, strict=True)):
            assert child.stdin is not None and child.stdout is not None
            order = {"store": store_url, "key_file": str(key_file), "agent": "anna",
                     "start": start.isoformat(), "guest": f"guest{n}"}  # fmt: skip
            child.stdin.write(json.dumps(order) + "\n")
            child.stdin.flush()
            lines.append(_lines_of(child.stdout))
        for said in lines:  # every child checked the slot and waits at the door
            assert said.get(timeout=STEP_TIMEOUT) == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [said.get(timeout=STEP_TIMEOUT) for said in lines]
        for child in children:
            assert child.wait(timeout=STEP_TIMEOUT) == 0
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _lines_of(stream: object) -> queue.Queue[str]:
    """A queue the lines of ``stream`` arrive on (read by a thread; "" at its end)."""
    said: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            said.put(str(line).rstrip("\n"))
        said.put("")

    threading.Thread(target=pump, daemon=True).start()
    return said


def booked_uids(radicale: RadicaleServer) -> list[str]:
    """The UIDs of the events in anna's Radicale calendar, from Radicale's own files."""
    import icalendar

    root = radicale.directory / "collections" / "collection-root" / "anna" / "work"
    calendars = [icalendar.Calendar.from_ical(p.read_bytes()) for p in sorted(root.glob("*.ics"))]
    return [str(event["UID"]) for calendar in calendars for event in calendar.walk("VEVENT")]


def check_one_winner(store_url: str, results: list[str], radicale: RadicaleServer) -> None:
    assert sorted(r.split(" ", 1)[0] for r in results) == ["booked", "taken"], results
    winner = next(r.split(" ", 1)[1] for r in results if r.startswith("booked"))
    assert "just booked by someone else" in next(r for r in results if r.startswith("taken"))
    with Store.open(store_url) as store:
        rows = store.list_bookings("anna", datetime.now(UTC))
    assert [(r["uid"], r["status"]) for r in rows] == [(winner, "confirmed")]
    assert booked_uids(radicale) == [winner]


def test_two_processes_racing_for_neighbouring_slots_book_one(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/race.db"
    radicale = RadicaleServer(tmp_path / "radicale", {"anna": RACE_PASSWORD}).start()
    try:
        key_file = race_agent(store_url, tmp_path, radicale)
        day = race_day()
        starts = [datetime.combine(day, time(9, m), tzinfo=AMS) for m in (0, 30)]
        check_one_winner(store_url, race_neighbours(store_url, key_file, starts), radicale)
    finally:
        radicale.stop()
