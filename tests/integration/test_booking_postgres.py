"""Double booking is impossible on PostgreSQL too: the exclusion constraint of migration
0006, with threads and with two ``pbxcal run`` processes sharing one database.

The store tests of ``tests/unit/test_booking_store.py`` run again on a real PostgreSQL
(20 threads on one slot, the overlap rules, the reminder claimed once). Then two real
daemons on the same PostgreSQL store (and the same key file) serve the admin API; 20
concurrent bookings of one slot, ten sent to each process, give exactly one 201 and
nineteen 409, and exactly one event lands in the agent's Radicale calendar.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import icalendar
import pytest

for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from daemon_helpers import DaemonRun, new_key_file, wait_for  # noqa: E402
from postgres import PostgresUnavailable, create_database, running_postgres  # noqa: E402
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
                      conflict_link_ids=[link.id], settings={"min_notice_minutes": 0,
                                                             "horizon_days": 366})  # fmt: skip
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

        async def race() -> list[int]:
            headers = {"Authorization": f"Bearer {token}"}
            body = {"start": "2027-04-06T07:00:00Z", "duration": 30, "subject": "Intro",
                    "guest_name": "G", "guest_email": "g@example.org"}  # fmt: skip
            async with httpx.AsyncClient(headers=headers, timeout=60) as client:
                answers = await asyncio.gather(*(
                    client.post(f"http://{runs[i % 2].listen}/api/v1/agents/anna/bookings",
                                json=body)
                    for i in range(20)
                ))  # fmt: skip
            for answer in answers:
                assert answer.status_code in (201, 409), answer.text
            return sorted(a.status_code for a in answers)

        started = time.monotonic()
        assert asyncio.run(race()) == [201] + [409] * 19
        print(f"20 bookings over two processes in {time.monotonic() - started:.2f}s")
        auth = b64encode(f"anna:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            radicale.calendar_url("anna", "work"), headers={"Authorization": f"Basic {auth}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            calendar = icalendar.Calendar.from_ical(reply.read())
        assert len(calendar.walk("VEVENT")) == 1
        with Store.open(url) as store:
            rows = store.list_bookings("anna", datetime.now(UTC))
        assert [r["status"] for r in rows] == ["confirmed"]
        assert json.dumps([r["uid"] for r in rows]) in json.dumps(
            [str(e["UID"]) for e in calendar.walk("VEVENT")]
        )
        for run in runs:
            run.check_alive()
    finally:
        radicale.stop()
