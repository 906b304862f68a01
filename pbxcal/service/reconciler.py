"""The reconciler: makes every PBX hold exactly the forwardings the calendars ask for now.

It keeps, per PBX, the *desired* state (from the core: which targets each extension
rings at this moment) and the *applied* state (read back from the PBX, then tracked as
changes succeed), and applies the difference — idempotently — at these moments only:

* at the exact boundary where some extension's target set changes: one heap holding
  each extension's next boundary (once) and one timer for the earliest, not a polling
  loop; serving a boundary schedules that extension's next one;
* after a calendar change (``set_link_instances`` / ``remove_link``);
* after every PBX (re)connect (``pbx_connected``) and every ``readback_interval``: the
  state is read back and the full difference applied, so a crash, a kill -9, an Asterisk
  restart, an AMI outage or a key deleted by someone else converge.

With several processes on one PostgreSQL the reconciler is given ``FencedPbx``es
(``pbxcal.cluster``): every process plans every PBX, but only the holder of a PBX's
write lease gets past the fence; elsewhere the fence raises ``LeaseLost`` and nothing
is sent. A gained lease calls ``pbx_connected``, so the new owner reads the PBX back
and converges it, as after a reconnect.

What it is given per link is already expanded (``LinkInstances``: the calendar's event
instances over a range, computed once by the sync in a worker thread). Planning
(title → target, the number policy, parallel sets) runs in a worker thread too, so a
big calendar never holds the event loop; the loop only applies results.

An extension target must exist on its PBX: the ``TitleParser`` of each PBX knows the
PBX's extensions (from the config and, with ``discover_extensions``, read from the PBX
on every (re)connect). A link whose events are not known yet (first start without
store, calendar unreachable) leaves its extension on the PBX as it is, so an outage of
the calendar never clears a live forwarding. A change the PBX refuses for one
extension is retried for that extension only; all others are applied. The per-PBX part
(read back, diff, send, record, held and refused extensions) is ``pbx_apply.PbxApplier``.

Cost: a calendar change costs in proportion to that link's extension (its links are
found through an index key -> link ids, ``_by_key``), never to the number of links; only
the periodic full replan (every half horizon, or after a policy or extension change)
and a PBX's read-back walk everything of theirs.

Start reading at ``run`` then ``_step``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import TitleParser
from pbxcal.core.windows import Plan, plan_windows
from pbxcal.errors import PbxError
from pbxcal.pbx import ForwardingState, Pbx
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.pbx_apply import PbxApplier, PbxSettings

__all__ = ["PAST", "Key", "LinkInstances", "PbxSettings", "Reconciler"]

log = logging.getLogger(__name__)

#: (pbx name, extension)
Key = tuple[str, str]
_RETRY_AFTER_FAILURE = timedelta(seconds=5)
#: Planning starts this far back, so a window that began before ``now`` is whole.
PAST = timedelta(days=1)
#: Extensions of a PBX are read again at least this often (and on every reconnect).
_EXTENSION_REFRESH = timedelta(minutes=15)
#: Keys planned per worker-thread call (the loop applies results between chunks).
_REPLAN_CHUNK = 500


@dataclass(frozen=True)
class LinkInstances:
    """What one active link contributes: its extension on its PBX and its instances.

    ``instances`` are complete from ``since`` to ``until`` (the expansion range).
    """

    key: Key
    instances: tuple[EventInstance, ...]
    since: datetime
    until: datetime


class Reconciler:
    """Desired vs applied forwarding state for every PBX. See the module docstring."""

    def __init__(
        self,
        pbxes: Mapping[str, Pbx],
        policy: NumberPolicy,
        clock: Clock,
        metrics: Metrics,
        *,
        settings: Mapping[str, PbxSettings] | None = None,
        horizon: timedelta = timedelta(days=14),
        on_tick: Callable[[], None] | None = None,
        tick_interval: float = 10.0,
        on_applied: Callable[[str, ForwardingState], Awaitable[None]] | None = None,
    ) -> None:
        self.pbxes = dict(pbxes)
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.horizon = horizon
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        settings = settings or {}
        self._pbx: dict[str, PbxApplier] = {}
        for name, pbx in self.pbxes.items():
            pbx_settings = settings.get(name, PbxSettings())
            self._pbx[name] = PbxApplier(
                name, pbx, pbx_settings, self._parser(pbx_settings, None), metrics, on_applied
            )
        self._links: dict[int, LinkInstances] = {}
        #: key -> ids of its links with known events (insertion-ordered)
        self._by_key: dict[Key, dict[int, None]] = {}
        self._unknown: dict[int, Key] = {}  # links whose events are not known yet
        self._plans: dict[Key, Plan] = {}
        self._desired: dict[str, dict[str, tuple[str, ...]]] = {n: {} for n in self.pbxes}
        self._boundaries: list[tuple[datetime, str, str]] = []
        self._boundary_set: set[tuple[datetime, str, str]] = set()
        self._replan_keys: set[Key] = set()
        self._due_keys: set[Key] = set()
        self._readback: set[str] = set(self.pbxes)
        self._refresh_extensions: set[str] = set(self.pbxes)
        self._plan_until: datetime | None = None
        self._retry_at: datetime | None = None
        self._wake = asyncio.Event()
        #: Set after the first complete pass (every PBX tried once).
        self.first_pass = asyncio.Event()

    # -- inputs (all cheap: they only mark work and wake the loop) -----------------------

    def set_link_instances(self, link_id: int, link: LinkInstances) -> None:
        """A link's events are known (fresh from its calendar, or restored)."""
        old = self._links.get(link_id)
        if old is not None and old.key != link.key:
            self._unindex(link_id, old.key)
            self._replan_keys.add(old.key)
        unknown = self._forget_unknown(link_id)
        if unknown is not None and unknown != link.key:
            self._replan_keys.add(unknown)
        self._links[link_id] = link
        self._by_key.setdefault(link.key, {})[link_id] = None
        self._replan_keys.add(link.key)
        self._wake.set()

    def set_link_unknown(self, link_id: int, key: Key) -> None:
        """A link is active but its events are not known yet: leave its extension alone."""
        if link_id in self._links:
            return  # the last known events keep driving it
        old = self._forget_unknown(link_id)
        if old is not None and old != key:
            self._replan_keys.add(old)
        self._unknown[link_id] = key
        applier = self._pbx.get(key[0])
        if applier is not None:
            applier.hold(key[1])
        self._replan_keys.add(key)
        self._wake.set()

    def remove_link(self, link_id: int) -> None:
        old = self._links.pop(link_id, None)
        if old is not None:
            self._unindex(link_id, old.key)
        unknown = self._forget_unknown(link_id)
        for key in (old.key if old is not None else None, unknown):
            if key is not None:
                self._replan_keys.add(key)
                self._wake.set()

    def _unindex(self, link_id: int, key: Key) -> None:
        ids = self._by_key.get(key)
        if ids is not None:
            ids.pop(link_id, None)
            if not ids:
                del self._by_key[key]

    def _forget_unknown(self, link_id: int) -> Key | None:
        key = self._unknown.pop(link_id, None)
        if key is not None and key[0] in self._pbx:
            self._pbx[key[0]].release(key[1])
        return key

    def link_ids(self) -> set[int]:
        return set(self._links) | set(self._unknown)

    def link_instances(self, link_id: int) -> LinkInstances | None:
        return self._links.get(link_id)

    def set_policy(self, policy: NumberPolicy) -> None:
        self.policy = policy
        for state in self._pbx.values():
            state.parser = self._parser(state.settings, state.discovered)
        self._plan_until = None  # replan everything
        self._wake.set()

    def parser_for(self, pbx: str) -> TitleParser:
        """The title parser of ``pbx`` (its policy and known extensions)."""
        state = self._pbx.get(pbx)
        return state.parser if state is not None else TitleParser(self.policy, frozenset())

    def pbx_connected(self, pbx: str) -> None:
        """After every (re)login: re-read extensions and state, apply the full difference."""
        self._readback.add(pbx)
        self._refresh_extensions.add(pbx)
        self._wake.set()

    # -- what the daemon reports ---------------------------------------------------------

    def desired_state(self, pbx: str) -> ForwardingState:
        return dict(self._desired.get(pbx, {}))

    def applied_state(self, pbx: str) -> ForwardingState | None:
        state = self._pbx[pbx].applied if pbx in self._pbx else None
        return None if state is None else dict(state)

    def refused(self, pbx: str) -> dict[str, str]:
        """Extensions whose last change the PBX refused, with the reason."""
        return dict(self._pbx[pbx].refused)

    @property
    def active_forwardings(self) -> int:
        return sum(len(s.applied) for s in self._pbx.values() if s.applied is not None)

    @property
    def unknown_links(self) -> int:
        return len(self._unknown)

    def plan_for(self, key: Key) -> Plan | None:
        return self._plans.get(key)

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run forever: apply what is due, then sleep until the next boundary or change."""
        while True:
            self._wake.clear()
            wait = await self._step()
            if self.on_tick is not None:
                self.on_tick()
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))

    async def _step(self) -> float:
        """One pass; returns how many seconds until the next pass is needed."""
        now = self.clock.now()
        self._schedule_readbacks(now)
        await self._refresh_directories(now)
        complete = self._plan_until is None or now >= self._plan_until - self.horizon / 2
        if complete:
            self._replan_keys.update(self._all_keys())
        if self._replan_keys:
            await self._replan(now, complete)
            now = self.clock.now()
        served: set[tuple[datetime, str, str]] = set()  # adjacent windows share a moment
        while self._boundaries and self._boundaries[0][0] <= now:
            entry = heapq.heappop(self._boundaries)
            self._boundary_set.discard(entry)
            self._due_keys.add(entry[1:])
            served.add(entry)
        for key in self._due_keys:
            self._update_desired(key, now)
            self._schedule_next_boundary(key, now)
        due, self._due_keys = self._due_keys, set()
        refused = await self._apply(due)
        applied_at = self.clock.now()
        for moment, _, _ in served:
            self.metrics.boundary_lag.observe((applied_at - moment).total_seconds())
        self.metrics.forwardings_active.set(self.active_forwardings)
        self.first_pass.set()
        if refused:  # retry the refused extensions shortly
            self._retry_at = applied_at + _RETRY_AFTER_FAILURE
        return self._seconds_until_next(self.clock.now())

    def _seconds_until_next(self, now: datetime) -> float:
        wait = self.tick_interval
        if self._retry_at is not None:
            if now >= self._retry_at:
                self._retry_at = None
                for name, state in self._pbx.items():
                    self._due_keys.update((name, ext) for ext in state.refused)
                wait = 0.0
            else:
                wait = min(wait, (self._retry_at - now).total_seconds())
        if self._boundaries:
            wait = min(wait, (self._boundaries[0][0] - now).total_seconds())
        if self._plan_until is not None:
            wait = min(wait, (self._plan_until - self.horizon / 2 - now).total_seconds())
        for state in self._pbx.values():
            if state.next_readback is not None:
                wait = min(wait, (state.next_readback - now).total_seconds())
        return wait

    def _schedule_readbacks(self, now: datetime) -> None:
        """Mark the periodic read-back (drift repair) and extension refresh when due."""
        for name, state in self._pbx.items():
            if state.next_readback is None or now >= state.next_readback:
                if state.next_readback is not None:
                    self._readback.add(name)
                state.next_readback = now + state.settings.readback_interval
            read_at = state.extensions_read_at
            if read_at is not None and now - read_at >= _EXTENSION_REFRESH:
                self._refresh_extensions.add(name)

    async def _refresh_directories(self, now: datetime) -> None:
        """Read the extensions of PBXes that (re)connected; replan them when they changed."""
        names, self._refresh_extensions = self._refresh_extensions, set()
        for name in names:
            state = self._pbx[name]
            if not state.settings.discover_extensions:
                continue
            try:
                discovered = await state.pbx.read_extensions()
            except PbxError as exc:
                log.debug("PBX %s: extensions not read (%s); keeping what is known", name, exc)
                self._refresh_extensions.add(name)  # try again with the next read-back
                continue
            state.extensions_read_at = now
            if discovered != state.discovered:
                log.info("PBX %s: %d extensions known", name, len(discovered))
                state.discovered = discovered
                state.parser = self._parser(state.settings, discovered)
                self._replan_keys.update(k for k in self._all_keys() if k[0] == name)

    def _parser(self, settings: PbxSettings, discovered: frozenset[str] | None) -> TitleParser:
        return TitleParser(self.policy, settings.extensions | (discovered or frozenset()))

    def _all_keys(self) -> set[Key]:
        return set(self._by_key) | set(self._unknown.values()) | set(self._plans)

    async def _replan(self, now: datetime, complete: bool) -> None:
        """Plan the marked keys over ``[now - PAST, now + horizon)`` in a worker thread.

        Planning is pure CPU; the loop only hands over references and takes the plans
        back, chunk by chunk, so AMI pings, HTTP probes and the watchdog are served.
        ``complete``: every key was marked, so the plans now reach ``now + horizon``.
        """
        start, end = now - PAST, now + self.horizon
        keys, self._replan_keys = self._replan_keys, set()
        links = self._links
        items = [(key, [links[i].instances for i in self._by_key.get(key, ())]) for key in keys]
        for offset in range(0, len(items), _REPLAN_CHUNK):
            chunk = items[offset : offset + _REPLAN_CHUNK]
            parsers = {name: self.parser_for(name) for name in {key[0] for key, _ in chunk}}
            plans = await asyncio.to_thread(_plan_keys, chunk, start, end, parsers)
            if self.on_tick is not None:
                self.on_tick()
            for key, plan in plans.items():
                self._install_plan(key, plan, now)
        if complete:
            self._plan_until = end

    def _install_plan(self, key: Key, plan: Plan, now: datetime) -> None:
        if plan.windows:
            self._plans[key] = plan
        else:
            self._plans.pop(key, None)
        self._schedule_next_boundary(key, now)
        self._due_keys.add(key)

    def _schedule_next_boundary(self, key: Key, now: datetime) -> None:
        """Hold the key's next boundary in the heap (once); the one after it is scheduled
        when this one is served, so the heap stays one entry per key, not per window."""
        plan = self._plans.get(key)
        moment = plan.next_boundary_after(now) if plan is not None else None
        if moment is None:
            return
        entry = (moment, *key)
        if entry not in self._boundary_set:
            self._boundary_set.add(entry)
            heapq.heappush(self._boundaries, entry)

    def _update_desired(self, key: Key, now: datetime) -> None:
        plan = self._plans.get(key)
        targets = plan.targets_at(now) if plan is not None else ()
        desired = self._desired.setdefault(key[0], {})
        if targets:
            desired[key[1]] = targets
        else:
            desired.pop(key[1], None)

    async def _apply(self, due: set[Key]) -> bool:
        """Apply the difference for the due keys and every PBX to be read back.

        Returns True when a PBX refused a change (it is retried shortly).
        """
        readback, self._readback = self._readback, set()
        by_pbx: dict[str, set[str]] = {}
        for name, ext in due:
            by_pbx.setdefault(name, set()).add(ext)
        names = [n for n in self.pbxes if n in readback or n in by_pbx]
        outcomes = await asyncio.gather(
            *(
                self._pbx[n].apply(by_pbx.get(n, set()), self._desired[n], n in readback)
                for n in names
            )
        )
        for name, outcome in zip(names, outcomes, strict=True):
            if outcome.read_back:
                self._readback.add(name)
        return any(outcome.retry for outcome in outcomes)


def _plan_keys(
    items: list[tuple[Key, list[tuple[EventInstance, ...]]]],
    start: datetime,
    end: datetime,
    parsers: Mapping[str, TitleParser],
) -> dict[Key, Plan]:
    """Plan each key from its links' instances (runs in a worker thread; pure)."""
    plans: dict[Key, Plan] = {}
    for key, parts in items:
        instances = [i for part in parts for i in part]
        parser = parsers[key[0]]
        plans[key] = plan_windows(instances, start, end, parser.policy, parser=parser)
    return plans
