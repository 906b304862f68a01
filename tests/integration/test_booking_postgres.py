"""Double booking is impossible on PostgreSQL too: the exclusion constraint (migration
0006, over the blocked ranges since 0009), with threads and with two processes sharing
one database.

The store tests of ``tests/unit/test_booking_store.py`` run again on a real PostgreSQL
(20 threads on one slot and on two neighbouring slots whose buffers collide, the
overlap rules with and without buffers, migration 0009 over old rows, the reminder
claimed once); the constraint is an exclusion constraint over the blocked range. Two
processes booking neighbouring slots through ``service.book``, both held after the
service's check until both are at the database (``booking_race_child.py``): one booked,
one ``SlotTaken``, one event in Radicale. Then two real daemons on the same PostgreSQL
store (and the same key file) serve the admin API; 20 concurrent bookings of one slot,
ten sent to each process, give exactly one 201 and nineteen 409, and exactly one event
lands in the agent's Radicale calendar; 20 more for two neighbouring slots of that agent
(15 minutes of buffer each side) the same.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest

for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from daemon_helpers import DaemonRun, new_key_file, wait_for  # noqa: E402
from postgres import PostgresUnavailable, create_database, running_postgres  # noqa: E402
from test_booking_buffers import (  # noqa: E402
    RACE_PASSWORD,
    check_one_winner,
    race_agent,
    race_day,
    race_neighbours,
)
from test_booking_store import *  # noqa: E402, F403 - the shared tests and fixtures

from pbxcal.store import Store, load_key_ring  # noqa: E402
from pbxcal.testing.asterisk import AsteriskSandbox  # noqa: E402
from pbxcal.testing.radicale import RadicaleServer  # noqa: E402

pytestmark = pytest.mark.integration

_numbers = itertools.count(1)
PASSWORD = "pg-dav-password"


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with running_postgres(tmp_path_factory.mktemp("postgres")) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def store_url(postgres_server: str) -> str:
    """A fresh, empty PostgreSQL database for each test (overrides the SQLite one)."""
    return create_database(postgres_server, f"booking_test_{next(_numbers)}")


def test_the_constraint_is_postgresql_s(store: Store) -> None:
    import sqlalchemy as sa

    with store._db.engine.connect() as conn:
        kind = conn.execute(
            sa.text("SELECT contype FROM pg_constraint WHERE conname = 'ex_bookings_no_overlap'")
        ).scalar()
    assert kind == "x"  # an exclusion constraint
    with store._db.engine.connect() as conn:
        definition = conn.execute(
            sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conname = 'ex_bookings_no_overlap'")
        ).scalar()  # fmt: skip
    assert "tstzrange(blocked_start, blocked_end)" in str(definition), definition


def test_two_processes_racing_for_neighbouring_slots_book_one_on_postgresql(
    postgres_server: str, tmp_path: Path
) -> None:
    from datetime import time

    url = create_database(postgres_server, f"booking_race_{next(_numbers)}")
    radicale = RadicaleServer(tmp_path / "radicale", {"anna": RACE_PASSWORD}).start()
    try:
        key_file = race_agent(url, tmp_path, radicale)
        day = race_day()
        zone = ZoneInfo("Europe/Amsterdam")
        starts = [datetime.combine(day, time(9, m), tzinfo=zone) for m in (0, 30)]
        check_one_winner(url, race_neighbours(url, key_file, starts), radicale)
    finally:
        radicale.stop()


def test_two_processes_on_one_postgresql_book_a_slot_once(
    asterisk: AsteriskSandbox,
    postgres_server: str,
    tmp_path: Path,
    daemons: list[DaemonRun],
) -> None:
    url = create_database(postgres_server, f"booking_two_{next(_numbers)}")
    radicale = RadicaleServer(tmp_path / "radicale", {"anna": PASSWORD}).start()
    try:
        radicale.make_calendar("anna", "work")
        keys = new_key_file(tmp_path)
        runs = []
        for name in ("one", "two"):
            work = tmp_path / name
            work.mkdir()
            runs.append(DaemonRun(work, asterisk, [], interval=3600, store=url, key_file=keys,
                                  pbx_extra='extensions = ["100-299"]\n'))  # fmt: skip
        with Store.open(url, keys=load_key_ring(str(keys), None)) as store:
            link = store.add_link("100", "main", "caldav", radicale.calendar_url("anna", "work"),
                                  {"username": "anna"})  # fmt: skip
            store.save_secret(link.id, "caldav-password", PASSWORD)
            from pbxcal.booking.agents import add_agent
            from pbxcal.config import Config

            add_agent(store, Config(), "anna", pbx="main", extension="100", name="Anna",
                      email="anna@example.com", booking_link_id=link.id,
                      conflict_link_ids=[link.id],
                      settings={"min_notice_minutes": 0, "horizon_days": 366,
                                "buffer_before": 15, "buffer_after": 15})  # fmt: skip
        for run in runs:
            daemons.append(run)
            run.start()
        for run in runs:
            run.wait_ready(60)
        done = subprocess.run(
            runs[0].command("admin-token", "create", "--name", "ops"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip()
        with Store.open(url) as store:
            wait_for(lambda: store.expansion_stamps([link.id]), bool, timeout=60,
                     what="the calendar synced")  # fmt: skip

        async def race(*starts: str) -> list[int]:
            """20 bookings, sent to the processes in turn, of ``starts`` in turn."""
            headers = {"Authorization": f"Bearer {token}"}
            body = {"duration": 30, "subject": "Intro", "guest_name": "G",
                    "guest_email": "g@example.org"}  # fmt: skip
            async with httpx.AsyncClient(headers=headers, timeout=60) as client:
                answers = await asyncio.gather(*(
                    client.post(f"http://{runs[i % 2].listen}/api/v1/agents/anna/bookings",
                                json={**body, "start": starts[i % len(starts)]})
                    for i in range(20)
                ))  # fmt: skip
            for answer in answers:
                assert answer.status_code in (201, 409), answer.text
            return sorted(a.status_code for a in answers)

        started = time.monotonic()
        assert asyncio.run(race("2027-04-06T07:00:00Z")) == [201] + [409] * 19
        print(f"20 bookings over two processes in {time.monotonic() - started:.2f}s")
        # neighbouring slots whose 15-minute buffers collide (09:00 and 09:30 local)
        neighbours = ("2027-04-07T07:00:00Z", "2027-04-07T07:30:00Z")
        assert asyncio.run(race(*neighbours)) == [201] + [409] * 19
        auth = b64encode(f"anna:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            radicale.calendar_url("anna", "work"), headers={"Authorization": f"Basic {auth}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            calendar = icalendar.Calendar.from_ical(reply.read())
        days = sorted(e.decoded("DTSTART").date().isoformat() for e in calendar.walk("VEVENT"))
        assert days == ["2027-04-06", "2027-04-07"]
        with Store.open(url) as store:
            rows = store.list_bookings("anna", datetime.now(UTC))
        assert [r["status"] for r in rows] == ["confirmed", "confirmed"]
        assert sorted(r["uid"] for r in rows) == sorted(
            str(e["UID"]) for e in calendar.walk("VEVENT")
        )  # the calendar lists its events in no particular order
        for run in runs:
            run.check_alive()
    finally:
        radicale.stop()
