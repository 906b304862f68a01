"""The Reconciler with an in-memory PBX and a clock the test moves by hand.

``FakePbx`` implements the ``Pbx`` protocol over a dict and records every call; it can
be switched "down" (``PbxUnavailable``), made to refuse the whole batch
(``PbxActionFailed``) or single extensions (``ApplyResult.refused``), and it reports the
extensions that exist on it. Most tests drive one pass of the loop at a time with
``step`` (``Reconciler._step``: ``run`` is that pass plus sleeping for the returned
number of seconds), so the clock is fully under the test's control;
``test_run_wakes_at_the_boundary`` runs the real loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pbxcal.core.ical import expand_calendar, parse_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.errors import PbxActionFailed, PbxUnavailable
from pbxcal.pbx import ApplyResult, ForwardingState
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import LinkInstances, PbxSettings, Reconciler

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
S = timedelta(seconds=1)
#: Extensions that exist on the fake PBX unless a test says otherwise.
EXTENSIONS = frozenset({"100", "101", "201", "202"})


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment

    def set(self, moment: datetime) -> None:
        self.moment = moment


class FakePbx:
    """The ``Pbx`` protocol over a dict: extension -> targets."""

    def __init__(self, name: str = "main", state: ForwardingState | None = None) -> None:
        self.name = name
        self.state: ForwardingState = dict(state or {})
        self.extensions = EXTENSIONS
        self.down = False
        self.refuse = False
        self.refuse_extensions: set[str] = set()
        self.reads = 0
        self.applied: list[dict[str, tuple[str, ...]]] = []
        self.changed = asyncio.Event()

    async def read_applied(self) -> ForwardingState:
        if self.down:
            raise PbxUnavailable(f"{self.name}: not connected")
        self.reads += 1
        return dict(self.state)

    async def read_extensions(self) -> frozenset[str]:
        if self.down:
            raise PbxUnavailable(f"{self.name}: not connected")
        return self.extensions

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        if self.down:
            raise PbxUnavailable(f"{self.name}: not connected")
        if self.refuse:
            raise PbxActionFailed(f"{self.name}: DBPut: Failed to update entry")
        refused = {
            e: "DBPut: Failed to update entry" for e in changes if e in self.refuse_extensions
        }
        done = {ext: tuple(t) for ext, t in changes.items() if ext not in refused}
        self.applied.append(done)
        for ext, targets in done.items():
            if targets:
                self.state[ext] = targets
            else:
                self.state.pop(ext, None)
        self.changed.set()
        return ApplyResult(refused=refused)


def ics(
    *events: tuple[str, datetime, datetime], key: tuple[str, str] = ("main", "100")
) -> LinkInstances:
    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y%m%dT%H%M%SZ")

    body = "".join(
        f"BEGIN:VEVENT\r\nUID:e{i}@test\r\nDTSTAMP:{stamp(T0)}\r\nDTSTART:{stamp(start)}\r\n"
        f"DTEND:{stamp(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\n"
        for i, (title, start, end) in enumerate(events)
    )
    text = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n{body}END:VCALENDAR\r\n"
    moments = [m for _, start, end in events for m in (start, end)] or [T0]
    since, until = min(moments) - timedelta(days=30), max(moments) + timedelta(days=60)
    expansion = expand_calendar(parse_calendar(text), since, until, ZoneInfo("UTC"))
    return LinkInstances(key, tuple(expansion.instances), since, until)


def at(link: LinkInstances, ext: str, pbx: str = "main") -> LinkInstances:
    return LinkInstances((pbx, ext), link.instances, link.since, link.until)


def make(clock: FakeClock, *pbxes: FakePbx, **kwargs: object) -> tuple[Reconciler, Metrics]:
    metrics = Metrics()
    rec = Reconciler(
        {p.name: p for p in pbxes or (FakePbx(),)},
        NumberPolicy.default("NL"),
        clock,
        metrics,
        tick_interval=3600.0,
        **kwargs,  # type: ignore[arg-type]
    )
    return rec, metrics


async def step(rec: Reconciler) -> float:
    """One pass of the loop; returns the seconds until the next pass is needed."""
    return await rec._step()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_applies_and_clears_exactly_at_the_boundaries() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, metrics = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 + 10 * S, T0 + 20 * S)))

    wait = await step(rec)
    assert pbx.state == {} and pbx.applied == []
    assert wait == pytest.approx(10.0)  # a timer for the next boundary, not a poll

    clock.set(T0 + 10 * S - timedelta(milliseconds=1))
    assert await step(rec) == pytest.approx(0.001)
    assert pbx.applied == []

    clock.set(T0 + 10 * S)
    wait = await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert pbx.applied == [{"100": ("201",)}]
    assert wait == pytest.approx(10.0)
    assert rec.active_forwardings == 1
    assert rec.desired_state("main") == {"100": ("201",)}
    assert sample(metrics, "pbxcal_forwarding_changes_total", change="set") == 1
    assert sample(metrics, "pbxcal_forwardings_active") == 1
    assert sample(metrics, "pbxcal_boundary_lag_seconds_count") == 1

    clock.set(T0 + 15 * S)
    await step(rec)
    assert len(pbx.applied) == 1  # nothing due in between: nothing sent

    clock.set(T0 + 20 * S + 30 * timedelta(milliseconds=1))
    await step(rec)
    assert pbx.state == {}
    assert pbx.applied[-1] == {"100": ()}
    assert rec.active_forwardings == 0
    assert sample(metrics, "pbxcal_forwarding_changes_total", change="clear") == 1
    assert sample(metrics, "pbxcal_boundary_lag_seconds_sum") == pytest.approx(0.030)
    assert pbx.reads == 1  # read back once at the start, then tracked


async def test_overlapping_windows_ring_in_parallel_and_adjacent_ones_switch() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(
        1,
        ics(
            ("201", T0, T0 + 20 * S),
            ("06-12345678", T0 + 10 * S, T0 + 30 * S),
            ("Lunch", T0, T0 + 60 * S),
            ("0900 1234567", T0, T0 + 60 * S),  # premium rate: blocked by policy
        ),
    )
    seen = []
    for second in (0, 10, 20, 30):
        clock.set(T0 + second * S)
        await step(rec)
        seen.append(dict(pbx.state))
    assert seen == [
        {"100": ("201",)},
        {"100": ("+31612345678", "201")},
        {"100": ("+31612345678",)},
        {},
    ]


async def test_converges_after_pbx_connected_with_stale_state() -> None:
    clock = FakeClock(T0)
    # left behind by a crash: a window that ended, and one for an unlinked extension
    pbx = FakePbx(state={"100": ("999",), "300": ("201",)})
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 60 * S, T0 + 60 * S)))
    await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert pbx.applied == [{"100": ("201",), "300": ()}]

    # Asterisk restarted and lost everything; pbxcal cannot know until it reconnects
    pbx.state.clear()
    clock.set(T0 + 1 * S)
    await step(rec)
    assert pbx.state == {}
    rec.pbx_connected("main")
    await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert pbx.reads == 2

    # an idempotent reconnect with nothing to change sends nothing
    rec.pbx_connected("main")
    await step(rec)
    assert len(pbx.applied) == 2 and pbx.reads == 3


async def test_window_that_ended_while_down_is_cleared_on_first_pass() -> None:
    clock = FakeClock(T0 + 120 * S)
    pbx = FakePbx(state={"100": ("201",)})
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0, T0 + 60 * S)))
    await step(rec)
    assert pbx.state == {}
    assert rec.first_pass.is_set()


async def test_pbx_unavailable_keeps_the_change_pending_until_it_returns() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 + 10 * S, T0 + 20 * S)))
    await step(rec)
    pbx.down = True
    clock.set(T0 + 10 * S)
    await step(rec)  # boundary passes while the PBX is unreachable
    assert pbx.state == {} and rec.active_forwardings == 0
    assert rec.desired_state("main") == {"100": ("201",)}
    clock.set(T0 + 11 * S)
    await step(rec)  # still down: still pending, nothing lost
    assert rec.desired_state("main") == {"100": ("201",)}

    pbx.down = False
    rec.pbx_connected("main")
    clock.set(T0 + 12 * S)
    await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert rec.active_forwardings == 1


async def test_pbx_back_without_reconnect_callback_still_gets_the_difference() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 20 * S)))
    pbx.down = True
    await step(rec)
    assert rec.first_pass.is_set()  # one try counts as the first pass
    pbx.down = False
    clock.set(T0 + 1 * S)
    await step(rec)
    assert pbx.state == {"100": ("201",)}


async def test_refused_change_is_retried_shortly() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 3600 * S)))
    pbx.refuse = True
    wait = await step(rec)
    assert pbx.state == {}
    assert 0 < wait <= 5.0  # retry soon, not at the next boundary an hour away
    pbx.refuse = False
    clock.set(T0 + wait * S)
    await step(rec)
    assert pbx.state == {"100": ("201",)}


async def test_removing_a_link_clears_its_forwarding() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 60 * S)))
    rec.set_link_instances(2, at(ics(("202", T0 - 10 * S, T0 + 60 * S)), "101"))
    await step(rec)
    assert pbx.state == {"100": ("201",), "101": ("202",)}
    rec.remove_link(1)
    await step(rec)
    assert pbx.state == {"101": ("202",)}
    assert rec.link_ids() == {2}
    rec.remove_link(1)  # unknown: nothing happens
    await step(rec)
    assert pbx.state == {"101": ("202",)}


async def test_two_links_on_one_extension_merge_and_moving_a_link_clears_the_old() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 60 * S)))
    rec.set_link_instances(2, ics(("202", T0 - 10 * S, T0 + 60 * S)))
    await step(rec)
    assert pbx.state == {"100": ("201", "202")}
    rec.set_link_instances(2, at(ics(("202", T0 - 10 * S, T0 + 60 * S)), "101"))
    await step(rec)
    assert pbx.state == {"100": ("201",), "101": ("202",)}


async def test_calendar_change_takes_effect_at_once_and_replaces_old_boundaries() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 60 * S)))
    await step(rec)
    rec.set_link_instances(1, ics(("202", T0 - 10 * S, T0 + 30 * S)))
    await step(rec)
    assert pbx.state == {"100": ("202",)}
    clock.set(T0 + 30 * S)
    await step(rec)
    assert pbx.state == {}
    clock.set(T0 + 60 * S)  # the old window's end is a stale boundary: harmless
    await step(rec)
    assert pbx.state == {}
    assert pbx.applied == [{"100": ("201",)}, {"100": ("202",)}, {"100": ()}]


async def test_each_pbx_is_reconciled_on_its_own() -> None:
    clock, a, b = FakeClock(T0), FakePbx("a"), FakePbx("b")
    rec, _ = make(clock, a, b)
    cal = ics(("201", T0 - 10 * S, T0 + 60 * S))
    rec.set_link_instances(1, at(cal, "100", "a"))
    rec.set_link_instances(2, at(cal, "100", "b"))
    b.down = True
    await step(rec)
    assert a.state == {"100": ("201",)} and b.state == {}
    b.down = False
    rec.pbx_connected("b")
    await step(rec)
    assert b.state == {"100": ("201",)}
    assert len(a.applied) == 1


async def test_on_applied_gets_the_new_state() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    saved: list[tuple[str, ForwardingState]] = []

    async def on_applied(name: str, state: ForwardingState) -> None:
        saved.append((name, state))

    rec, _ = make(clock, pbx, on_applied=on_applied)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 60 * S)))
    await step(rec)
    assert saved == [("main", {"100": ("201",)})]


async def test_run_wakes_at_the_boundary() -> None:
    """The real loop with the real clock: a timer, not a tick, serves the boundary."""
    pbx = FakePbx()
    ticks: list[float] = []
    loop = asyncio.get_running_loop()
    rec, _ = make(FakeClock(T0), pbx, on_tick=lambda: ticks.append(loop.time()))
    rec.clock = SystemClock()
    # iCalendar has whole seconds: the boundary is the next whole second at least 0.3 s away
    boundary = (datetime.now(UTC) + timedelta(milliseconds=1300)).replace(microsecond=0)
    task = asyncio.create_task(rec.run())
    try:
        rec.set_link_instances(1, ics(("201", boundary, boundary + 3600 * S)))
        await asyncio.wait_for(pbx.changed.wait(), timeout=5)
        applied_at = datetime.now(UTC)
        assert applied_at >= boundary  # never early
        assert pbx.state == {"100": ("201",)}
        assert len(ticks) < 10  # no polling in between
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 + 10 * S, T0 + 20 * S)))
    await step(rec)
    pbx.down = True
    with caplog.at_level(logging.INFO, logger="pbxcal.service.reconciler"):
        for second in range(10, 15):  # five passes while the PBX is unreachable
            clock.set(T0 + second * S)
            await step(rec)
        pbx.down = False
        clock.set(T0 + 15 * S)
        await step(rec)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    assert pbx.state == {"100": ("201",)}


async def test_a_refused_extension_does_not_hold_back_the_others() -> None:
    """Issue #7.1: one bad item refuses that extension only, and only it is retried."""
    clock, pbx = FakeClock(T0), FakePbx()
    pbx.refuse_extensions = {"100"}
    rec, metrics = make(clock, pbx)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 3600 * S)))
    rec.set_link_instances(2, at(ics(("202", T0 - 10 * S, T0 + 3600 * S)), "101"))
    wait = await step(rec)
    assert pbx.state == {"101": ("202",)}
    assert rec.refused("main") == {"100": "DBPut: Failed to update entry"}
    assert sample(metrics, "pbxcal_forwarding_changes_total", change="refused") == 1
    assert 0 < wait <= 5.0
    pbx.refuse_extensions = set()
    clock.set(T0 + wait * S)
    await step(rec)  # the retry is due now
    await step(rec)
    assert pbx.state == {"100": ("201",), "101": ("202",)}
    assert pbx.applied[-1] == {"100": ("201",)}  # only the refused one was sent again
    assert rec.refused("main") == {}


async def test_extension_targets_must_exist_on_the_pbx() -> None:
    """Issue #7.2: digits that look like an extension but are none are not dialled."""
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    rec.set_link_instances(1, ics(("118218", T0 - 10 * S, T0 + 60 * S)))
    rec.set_link_instances(2, at(ics(("1888", T0 - 10 * S, T0 + 60 * S)), "101"))
    await step(rec)
    assert pbx.state == {}
    plan = rec.plan_for(("main", "100"))
    assert plan is None or not plan.windows

    # an extension that the PBX really has becomes known on its next (re)connect
    pbx.extensions = EXTENSIONS | {"118218"}
    rec.pbx_connected("main")
    await step(rec)
    assert pbx.state == {"100": ("118218",)}


async def test_configured_extensions_count_without_discovery() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    pbx.extensions = frozenset()
    settings = {"main": PbxSettings(extensions=frozenset({"333"}), discover_extensions=False)}
    rec, _ = make(clock, pbx, settings=settings)
    rec.set_link_instances(1, ics(("333", T0 - 10 * S, T0 + 60 * S), ("201", T0, T0 + 9 * S)))
    await step(rec)
    assert pbx.state == {"100": ("333",)}


async def test_periodic_readback_repairs_a_key_deleted_behind_our_back() -> None:
    """Issue #7.7: a forwarding removed in Asterisk by someone else comes back."""
    clock, pbx = FakeClock(T0), FakePbx()
    settings = {"main": PbxSettings(readback_interval=timedelta(seconds=30))}
    rec, _ = make(clock, pbx, settings=settings)
    rec.set_link_instances(1, ics(("201", T0 - 10 * S, T0 + 3600 * S)))
    wait = await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert wait <= 30.0  # the read-back is a timer too
    del pbx.state["100"]  # `database del pbxcal fwd/100` on the Asterisk console
    clock.set(T0 + 29 * S)
    await step(rec)
    assert pbx.state == {}
    clock.set(T0 + 30 * S)
    await step(rec)
    assert pbx.state == {"100": ("201",)}


async def test_a_link_not_read_yet_leaves_its_extension_alone() -> None:
    """Issue #7.7: store lost and calendar unreachable at start: live forwardings stay."""
    clock = FakeClock(T0)
    pbx = FakePbx(state={"100": ("201",), "300": ("202",)})
    rec, _ = make(clock, pbx)
    rec.set_link_unknown(1, ("main", "100"))
    await step(rec)
    assert pbx.state == {"100": ("201",)}  # 300 has no link at all: cleared
    clock.set(T0 + 10 * S)
    await step(rec)
    assert pbx.state == {"100": ("201",)}
    assert rec.unknown_links == 1
    rec.set_link_instances(1, ics(("Lunch", T0, T0 + 60 * S)))  # first successful read
    await step(rec)
    assert pbx.state == {}
    assert rec.unknown_links == 0


async def test_each_future_boundary_is_held_once() -> None:
    clock, pbx = FakeClock(T0), FakePbx()
    rec, _ = make(clock, pbx)
    link = ics(("201", T0 + 10 * S, T0 + 20 * S))
    for _ in range(5):  # the same calendar read again and again
        rec.set_link_instances(1, link)
        await step(rec)
    assert rec._boundaries == [(T0 + 10 * S, "main", "100")]  # the next one, once
    clock.set(T0 + 10 * S)
    await step(rec)
    assert rec._boundaries == [(T0 + 20 * S, "main", "100")]  # then the one after it
    assert pbx.state == {"100": ("201",)}
