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
extension is retried for that extension only; all others are applied.

Start reading at ``run`` then ``_step``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import TitleParser
from pbxcal.core.windows import Plan, plan_windows
from pbxcal.errors import LeaseLost, PbxError, PbxUnavailable
from pbxcal.pbx import ForwardingState, Pbx
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics

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


@dataclass(frozen=True)
class PbxSettings:
    """How the reconciler treats one PBX."""

    extensions: frozenset[str] = frozenset()
    discover_extensions: bool = True
    readback_interval: timedelta = timedelta(seconds=60)


@dataclass
class _PbxState:
    settings: PbxSettings
    parser: TitleParser
    discovered: frozenset[str] | None = None
    extensions_read_at: datetime | None = None
    next_readback: datetime | None = None
    refused: dict[str, str] = field(default_factory=dict)


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
        self.on_applied = on_applied
        settings = settings or {}
        self._pbx: dict[str, _PbxState] = {}
        for name in self.pbxes:
            pbx_settings = settings.get(name, PbxSettings())
            self._pbx[name] = _PbxState(pbx_settings, self._parser(pbx_settings, None))
        self._links: dict[int, LinkInstances] = {}
        self._unknown: dict[int, Key] = {}  # links whose events are not known yet
        self._plans: dict[Key, Plan] = {}
        self._desired: dict[Key, tuple[str, ...]] = {}
        self._applied: dict[str, ForwardingState] = {}  # absent: not read back yet
        self._boundaries: list[tuple[datetime, str, str]] = []
        self._boundary_set: set[tuple[datetime, str, str]] = set()
        self._replan_keys: set[Key] = set()
        self._due_keys: set[Key] = set()
        self._readback: set[str] = set(self.pbxes)
        self._refresh_extensions: set[str] = set(self.pbxes)
        self._plan_until: datetime | None = None
        self._retry_at: datetime | None = None
        self._unavailable: set[str] = set()
        self._held_logged: set[Key] = set()
        self._wake = asyncio.Event()
        #: Set after the first complete pass (every PBX tried once).
        self.first_pass = asyncio.Event()

    # -- inputs (all cheap: they only mark work and wake the loop) -----------------------

    def set_link_instances(self, link_id: int, link: LinkInstances) -> None:
        """A link's events are known (fresh from its calendar, or restored)."""
        old = self._links.get(link_id)
        old_key = old.key if old is not None else self._unknown.get(link_id)
        if old_key is not None and old_key != link.key:
            self._replan_keys.add(old_key)
        self._unknown.pop(link_id, None)
        self._links[link_id] = link
        self._replan_keys.add(link.key)
        self._wake.set()

    def set_link_unknown(self, link_id: int, key: Key) -> None:
        """A link is active but its events are not known yet: leave its extension alone."""
        if link_id in self._links:
            return  # the last known events keep driving it
        self._unknown[link_id] = key
        self._replan_keys.add(key)
        self._wake.set()

    def remove_link(self, link_id: int) -> None:
        old = self._links.pop(link_id, None)
        unknown = self._unknown.pop(link_id, None)
        for key in (old.key if old is not None else None, unknown):
            if key is not None:
                self._replan_keys.add(key)
                self._wake.set()

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
        return {ext: t for (name, ext), t in self._desired.items() if name == pbx}

    def applied_state(self, pbx: str) -> ForwardingState | None:
        state = self._applied.get(pbx)
        return None if state is None else dict(state)

    def refused(self, pbx: str) -> dict[str, str]:
        """Extensions whose last change the PBX refused, with the reason."""
        return dict(self._pbx[pbx].refused)

    @property
    def active_forwardings(self) -> int:
        return sum(len(state) for state in self._applied.values())

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
        if self._plan_until is None or now >= self._plan_until - self.horizon / 2:
            self._replan_keys.update(self._all_keys())
        if self._replan_keys:
            await self._replan(now)
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
                discovered = await self.pbxes[name].read_extensions()
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
        return (
            {link.key for link in self._links.values()}
            | set(self._unknown.values())
            | set(self._plans)
        )

    async def _replan(self, now: datetime) -> None:
        """Plan the marked keys over ``[now - PAST, now + horizon)`` in a worker thread.

        Planning is pure CPU; the loop only hands over references and takes the plans
        back, chunk by chunk, so AMI pings, HTTP probes and the watchdog are served.
        """
        start, end = now - PAST, now + self.horizon
        keys, self._replan_keys = self._replan_keys, set()
        complete = len(keys) >= len(self._all_keys())
        inputs: dict[Key, list[tuple[EventInstance, ...]]] = {key: [] for key in keys}
        for link in self._links.values():
            if link.key in inputs:
                inputs[link.key].append(link.instances)
        items = list(inputs.items())
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
        if targets:
            self._desired[key] = targets
        else:
            self._desired.pop(key, None)

    def _held(self, name: str) -> set[str]:
        """Extensions of ``name`` left as they are: a link of theirs has no events yet."""
        held = {ext for pbx, ext in self._unknown.values() if pbx == name}
        for ext in held:
            if (name, ext) not in self._held_logged:
                self._held_logged.add((name, ext))
                log.warning(
                    "PBX %s extension %s: a linked calendar has not been read yet; "
                    "leaving its forwarding on the PBX as it is until the first read",
                    name,
                    ext,
                )
        self._held_logged = {k for k in self._held_logged if k[0] != name or k[1] in held}
        return held

    async def _apply(self, due: set[Key]) -> bool:
        """Apply the difference for the due keys and every PBX to be read back.

        Returns True when a PBX refused a change (it is retried shortly).
        """
        readback, self._readback = self._readback, set()
        results = await asyncio.gather(
            *(self._apply_pbx(name, due, name in readback) for name in self.pbxes)
        )
        return any(results)

    async def _apply_pbx(self, name: str, due: set[Key], readback: bool) -> bool:
        pbx, state = self.pbxes[name], self._pbx[name]
        try:
            if readback or name not in self._applied:
                self._applied[name] = await pbx.read_applied()
                readback = True
            applied = self._applied[name]
            held = self._held(name)
            if readback:
                wanted = self.desired_state(name)
                exts: Iterable[str] = set(wanted) | set(applied)
            else:
                wanted = {ext: self._desired.get((name, ext), ()) for p, ext in due if p == name}
                exts = set(wanted)
            changes = {
                ext: wanted.get(ext, ())
                for ext in exts
                if ext not in held and wanted.get(ext, ()) != applied.get(ext, ())
            }
            if name in self._unavailable:
                self._unavailable.discard(name)
                log.info("PBX %s reachable again; applying the difference", name)
            if readback and changes and not _due_only(changes, due, name):
                log.info("PBX %s: repairing %d forwardings after read-back", name, len(changes))
            for ext in set(exts) - set(changes):  # nothing to do there any more
                state.refused.pop(ext, None)
            if not changes:
                return False
            result = await pbx.apply(changes)
        except LeaseLost as exc:  # another process writes this PBX (pbxcal.cluster)
            log.debug("PBX %s: not written here: %s", name, exc)
            self._readback.add(name)  # read back first once the lease is ours
            return False
        except PbxUnavailable as exc:
            if name not in self._unavailable:  # once per outage, not every tick
                log.warning("PBX %s unavailable, will apply when it returns: %s", name, exc)
                self._unavailable.add(name)
            self._readback.add(name)  # full difference once it is back
            return False
        except PbxError as exc:  # a whole-batch refusal: read back and retry it all
            log.error("PBX %s refused the changes, retrying shortly: %s", name, exc)
            self._readback.add(name)
            return True
        self._record(name, applied, changes, result.refused)
        if self.on_applied is not None:
            done = {e: t for e, t in changes.items() if e not in result.refused}
            await self.on_applied(name, done)
        return bool(result.refused)

    def _record(
        self,
        name: str,
        applied: ForwardingState,
        changes: Mapping[str, tuple[str, ...]],
        refused: Mapping[str, str],
    ) -> None:
        state = self._pbx[name]
        for ext, targets in changes.items():
            if ext in refused:
                if state.refused.get(ext) != refused[ext]:
                    log.error("PBX %s extension %s: change refused: %s", name, ext, refused[ext])
                self.metrics.forwarding_changes.labels("refused").inc()
                continue
            state.refused.pop(ext, None)
            if targets:
                applied[ext] = tuple(targets)
                self.metrics.forwarding_changes.labels("set").inc()
            else:
                applied.pop(ext, None)
                self.metrics.forwarding_changes.labels("clear").inc()
        state.refused.update(refused)
        done = {e: t for e, t in changes.items() if e not in refused}
        if done:
            log.info(
                "PBX %s: %d forwardings changed (%s)",
                name,
                len(done),
                ", ".join(f"{e}={'&'.join(t) or '-'}" for e, t in sorted(done.items())[:5])
                + (" ..." if len(done) > 5 else ""),
            )


def _due_only(changes: Collection[str], due: set[Key], name: str) -> bool:
    """True when every change was due anyway (no drift was found by the read-back)."""
    return all((name, ext) in due for ext in changes)


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
