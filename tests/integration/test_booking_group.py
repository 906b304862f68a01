"""Group booking: a slot when any member is free; round-robin among the free ones,
fair and stable under races (the database decides who got a slot).

In-process (``book`` and ``group_slots`` with a real SQLite store and a real Radicale
as both agents' booking calendars). Bookings at different times alternate between the
two agents; a second booking of a time one agent already has goes to the other; a third
is 409; ten concurrent bookings of one slot give exactly two bookings, one per agent;
``group_slots`` offers a time while one member is free and drops it when both are booked.
A calendar that refuses the event (Radicale answering 507) leaves no booking behind,
and the same time can be booked once it works again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import new_key_file

from pbxcal.booking import ProviderFailed, SlotTaken, book, group_slots
from pbxcal.booking.agents import add_agent, add_group
from pbxcal.config import Config
from pbxcal.service.metrics import Metrics
from pbxcal.store import Store, load_key_ring
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates

pytestmark = pytest.mark.integration

MONDAY = datetime(2027, 4, 12, 7, tzinfo=UTC)  # 09:00 in Amsterdam


class FixedClock:
    def now(self) -> datetime:
        return datetime(2027, 4, 1, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WebContext]:
    key = new_key_file(tmp_path)
    radicale = RadicaleServer(tmp_path / "dav", {"anna": "pw-a", "ben": "pw-b"}).start()
    store = Store.open(f"sqlite:///{tmp_path}/s.db", keys=load_key_ring(str(key), None))
    try:
        settings = {"min_notice_minutes": 0, "horizon_days": 366}
        for agent, password in (("anna", "pw-a"), ("ben", "pw-b")):
            radicale.make_calendar(agent, "work")
            url = radicale.calendar_url(agent, "work")
            extension = "100" if agent == "anna" else "101"
            link = store.add_link(extension, "main", "caldav", url, {"username": agent})
            store.save_secret(link.id, "caldav-password", password)
            add_agent(store, Config(), agent, pbx="main", extension=link.extension,
                      name=agent.title(), booking_link_id=link.id, settings=settings)  # fmt: skip
        add_group(store, "team", "Team", ["anna", "ben"])
        context = WebContext(config=Config(), store=store, keys=None, sync=None,
                             clock=FixedClock(), metrics=Metrics(),
                             templates=Templates(("en",)))  # fmt: skip
        context.radicale = radicale  # type: ignore[attr-defined]
        yield context
    finally:
        store.close()
        radicale.stop()


def guest(n: int) -> dict[str, Any]:
    return {"duration_minutes": 30, "subject": "Talk", "guest_name": f"G{n}",
            "guest_email": f"g{n}@example.org", "group": True}  # fmt: skip


def test_round_robin_and_a_slot_per_free_member(ctx: WebContext) -> None:
    starts = [MONDAY + timedelta(hours=h) for h in range(4)]
    owners = [asyncio.run(book(ctx, "team", start=s, **guest(n))).agent_id
              for n, s in enumerate(starts)]  # fmt: skip
    assert owners == ["anna", "ben", "anna", "ben"]
    # the same time again: the turn says anna, but anna has it, so ben; then nobody
    first = asyncio.run(book(ctx, "team", start=MONDAY + timedelta(days=1), **guest(10)))
    second = asyncio.run(book(ctx, "team", start=MONDAY + timedelta(days=1), **guest(11)))
    assert {first.agent_id, second.agent_id} == {"anna", "ben"}
    with pytest.raises(SlotTaken):
        asyncio.run(book(ctx, "team", start=MONDAY + timedelta(days=1), **guest(12)))
    day = MONDAY + timedelta(days=1)
    offered = asyncio.run(group_slots(ctx, "team", day, day + timedelta(hours=2), 30))
    assert day not in [s.start for s in offered]
    assert day + timedelta(minutes=30) in [s.start for s in offered]


def test_ten_concurrent_group_bookings_of_one_slot(ctx: WebContext) -> None:
    start = MONDAY + timedelta(days=2)

    async def race() -> list[Any]:
        return await asyncio.gather(
            *(book(ctx, "team", start=start, **guest(n)) for n in range(10)),
            return_exceptions=True,
        )

    results = asyncio.run(race())
    booked = [r for r in results if not isinstance(r, BaseException)]
    assert sorted(b.agent_id for b in booked) == ["anna", "ben"]
    assert all(isinstance(r, SlotTaken) for r in results if isinstance(r, BaseException))


def test_a_calendar_that_refuses_the_event_leaves_nothing_booked(ctx: WebContext) -> None:
    radicale: RadicaleServer = ctx.radicale  # type: ignore[attr-defined]
    start = MONDAY + timedelta(days=3)
    radicale.fault = (507, b"insufficient storage")
    try:
        with pytest.raises(ProviderFailed, match="507"):
            asyncio.run(book(ctx, "anna", start=start, **{**guest(1), "group": False}))
    finally:
        radicale.fault = None
    assert ctx.store.list_bookings("anna", start - timedelta(days=1)) == []
    booked = asyncio.run(book(ctx, "anna", start=start, **{**guest(2), "group": False}))
    assert booked.agent_id == "anna" and booked.provider_event_id
