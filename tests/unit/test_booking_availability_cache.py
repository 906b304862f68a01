"""The availability endpoint's fast path (``availability.cached_window_slots``) on a real
SQLite store: it declines (None) until the agent's inputs and busy time are cached,
then answers exactly what ``window_slots`` answers without touching the store, and
declines again once the inputs are older than ``INPUTS_TTL`` or the window reaches back
before what the cache holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbxcal.booking import availability
from pbxcal.booking.agents import add_agent
from pbxcal.booking.availability import cached_window_slots, window_slots
from pbxcal.config import Config
from pbxcal.core.ical import EventInstance
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.store import ExpansionRecord, Store
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates

AMS = ZoneInfo("Europe/Amsterdam")


def meeting_start() -> datetime:
    """10:00 local on the Monday 7-13 days ahead: the agent's one busy hour."""
    soon = datetime.now(AMS).date() + timedelta(days=7)
    day = soon + timedelta(days=(7 - soon.weekday()) % 7)
    return datetime(day.year, day.month, day.day, 10, tzinfo=AMS).astimezone(UTC)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WebContext]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    link = store.add_link("100", "main", "ics", "/dev/null", {})
    meeting = meeting_start()
    made = (EventInstance("m@x", meeting, meeting + timedelta(hours=1), "Review", False, False),)
    begin = datetime.now(UTC) - timedelta(days=30)
    store.save_expansion(link.id, ExpansionRecord(begin, begin + timedelta(days=90), made,
                                                  datetime.now(UTC)))  # fmt: skip
    add_agent(store, Config(), "anna", pbx="main", extension="100", name="Anna",
              conflict_link_ids=[link.id], settings={"min_notice_minutes": 0})  # fmt: skip
    yield WebContext(config=Config(), store=store, keys=None, sync=None, clock=SystemClock(),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    availability.forget_agent(store, "anna")
    store.close()


def test_the_fast_path_answers_from_memory_only(
    ctx: WebContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime.now(UTC) + timedelta(days=1)

    def window(_: object) -> tuple[datetime, datetime, int]:
        return start, start + timedelta(days=14), 30

    store = ctx.store
    assert cached_window_slots(store, ctx, "anna", window) is None  # nothing cached yet
    agent, slots = window_slots(store, ctx, "anna", window)
    meeting = meeting_start()
    starts = {s.start for s in slots}
    assert meeting - timedelta(minutes=30) in starts and meeting + timedelta(hours=1) in starts
    assert not {meeting, meeting + timedelta(minutes=30)} & starts  # busy: the review

    def no_store(*_: object, **__: object) -> None:
        raise AssertionError("the fast path read the store")

    for name in ("availability_inputs", "load_link_expansions", "expansion_stamps",
                 "load_events", "get_link", "confirmed_bookings", "blocked_ranges"):  # fmt: skip
        monkeypatch.setattr(store, name, no_store)
    assert cached_window_slots(store, ctx, "anna", window) == (agent, slots)
    assert cached_window_slots(store, ctx, "anna", lambda _: (start - timedelta(days=3),
                                                              start, 30)) is None  # fmt: skip
    monkeypatch.setattr(availability, "INPUTS_TTL", 0.0)
    assert cached_window_slots(store, ctx, "anna", window) is None
