"""The reconciler: makes every PBX hold exactly the forwardings the calendars ask for now.

It keeps, per PBX, the *desired* state (from the core: which targets each extension
rings at this moment) and the *applied* state (read back from the PBX after every
(re)connect, then tracked as changes succeed), and applies the difference — idempotently
— at these moments only:

* at the exact boundary where some extension's target set changes: one heap of future
  boundaries across all extensions and one timer for the earliest, not a polling loop;
* after a calendar change (``set_link_calendar`` / ``remove_link``);
* after every PBX (re)connect (``pbx_connected``): the state is read back and the full
  difference applied, so a crash, a kill -9, an Asterisk restart or an AMI outage
  converge, and a window that ended while pbxcal was down is cleared.

Plans are made over ``[now - 1 day, now + horizon)`` and remade when half the horizon
has passed. A PBX that is down keeps its difference pending until it returns. The loop
also beats the systemd watchdog (``on_tick``), so a stuck loop gets restarted.

Start reading at ``run`` then ``_step``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

import icalendar

from pbxcal.core.ical import EventInstance, expand_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.windows import Plan, plan_windows
from pbxcal.errors import PbxError, PbxUnavailable, UnsafeValue
from pbxcal.pbx import ForwardingState, Pbx
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics

log = logging.getLogger(__name__)

#: (pbx name, extension)
Key = tuple[str, str]
_RETRY_AFTER_FAILURE = timedelta(seconds=5)
_PAST = timedelta(days=1)
#: Keys planned between two yields to the event loop.
_REPLAN_CHUNK = 200


@dataclass(frozen=True)
class LinkCalendar:
    """What one active link contributes: its extension on its PBX and its calendar."""

    key: Key
    calendar: icalendar.Calendar
    zone: tzinfo
    owner_emails: tuple[str, ...] = ()


class Reconciler:
    """Desired vs applied forwarding state for every PBX. See the module docstring."""

    def __init__(
        self,
        pbxes: Mapping[str, Pbx],
        policy: NumberPolicy,
        clock: Clock,
        metrics: Metrics,
        *,
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
        self._links: dict[int, LinkCalendar] = {}
        self._plans: dict[Key, Plan] = {}
        self._desired: dict[Key, tuple[str, ...]] = {}
        self._applied: dict[str, ForwardingState] = {}  # absent: not read back yet
        self._boundaries: list[tuple[datetime, str, str]] = []
        self._replan_keys: set[Key] = set()
        self._due_keys: set[Key] = set()
        self._readback: set[str] = set(self.pbxes)
        self._plan_until: datetime | None = None
        self._retry_at: datetime | None = None
        self._unavailable: set[str] = set()
        self._wake = asyncio.Event()
        #: Set after the first complete pass (every PBX tried once).
        self.first_pass = asyncio.Event()

    # -- inputs (all cheap: they only mark work and wake the loop) -----------------------

    def set_link_calendar(self, link_id: int, link: LinkCalendar) -> None:
        old = self._links.get(link_id)
        if old is not None and old.key != link.key:
            self._replan_keys.add(old.key)
        self._links[link_id] = link
        self._replan_keys.add(link.key)
        self._wake.set()

    def remove_link(self, link_id: int) -> None:
        old = self._links.pop(link_id, None)
        if old is not None:
            self._replan_keys.add(old.key)
            self._wake.set()

    def link_ids(self) -> set[int]:
        return set(self._links)

    def set_policy(self, policy: NumberPolicy) -> None:
        self.policy = policy
        self._plan_until = None  # replan everything
        self._wake.set()

    def pbx_connected(self, pbx: str) -> None:
        """After every (re)login: read the PBX's state back and apply the full difference."""
        self._readback.add(pbx)
        self._wake.set()

    # -- what the daemon reports ---------------------------------------------------------

    def desired_state(self, pbx: str) -> ForwardingState:
        return {ext: t for (name, ext), t in self._desired.items() if name == pbx}

    def applied_state(self, pbx: str) -> ForwardingState | None:
        state = self._applied.get(pbx)
        return None if state is None else dict(state)

    @property
    def active_forwardings(self) -> int:
        return sum(len(state) for state in self._applied.values())

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
        if self._plan_until is None or now >= self._plan_until - self.horizon / 2:
            self._replan_keys.update(self._all_keys())
        if self._replan_keys:
            await self._replan(now)
            now = self.clock.now()
        served: set[tuple[datetime, str, str]] = set()  # adjacent windows share a moment
        while self._boundaries and self._boundaries[0][0] <= now:
            entry = heapq.heappop(self._boundaries)
            self._due_keys.add(entry[1:])
            served.add(entry)
        for key in self._due_keys:
            self._update_desired(key, now)
        due, self._due_keys = self._due_keys, set()
        refused = await self._apply(due)
        applied_at = self.clock.now()
        for moment, _, _ in served:
            self.metrics.boundary_lag.observe((applied_at - moment).total_seconds())
        self.metrics.forwardings_active.set(self.active_forwardings)
        self.first_pass.set()
        if refused:  # read back and apply the full difference again shortly
            self._retry_at = applied_at + _RETRY_AFTER_FAILURE
        return self._seconds_until_next(self.clock.now())

    def _seconds_until_next(self, now: datetime) -> float:
        wait = self.tick_interval
        if self._retry_at is not None:
            wait = min(wait, (self._retry_at - now).total_seconds())
            if now >= self._retry_at:
                self._retry_at = None
        if self._boundaries:
            wait = min(wait, (self._boundaries[0][0] - now).total_seconds())
        if self._plan_until is not None:
            wait = min(wait, (self._plan_until - self.horizon / 2 - now).total_seconds())
        return wait

    def _all_keys(self) -> set[Key]:
        return {link.key for link in self._links.values()} | set(self._plans)

    async def _replan(self, now: datetime) -> None:
        """Plan the marked keys over ``[now - 1 day, now + horizon)``.

        Planning is pure CPU (~0.3 ms for a small calendar); with thousands of links it is
        done in chunks that yield to the event loop and beat the watchdog, so AMI pings
        and HTTP probes are answered meanwhile.
        """
        start, end = now - _PAST, now + self.horizon
        keys, self._replan_keys = self._replan_keys, set()
        complete = len(keys) >= len(self._all_keys())
        links: dict[Key, list[LinkCalendar]] = {key: [] for key in keys}
        for link in self._links.values():
            if link.key in links:
                links[link.key].append(link)
        for index, (key, calendars) in enumerate(links.items()):
            if index and index % _REPLAN_CHUNK == 0:
                if self.on_tick is not None:
                    self.on_tick()
                await asyncio.sleep(0)
            instances: list[EventInstance] = []
            for link in calendars:
                instances += expand_calendar(
                    link.calendar, start, end, link.zone, owner_emails=link.owner_emails
                ).instances
            plan = plan_windows(instances, start, end, self.policy)
            if plan.windows:
                self._plans[key] = plan
            else:
                self._plans.pop(key, None)
            for window in plan.windows:
                for moment in (window.start, window.end):
                    if moment > now:
                        heapq.heappush(self._boundaries, (moment, *key))
            self._due_keys.add(key)
        if complete:
            self._plan_until = end

    def _update_desired(self, key: Key, now: datetime) -> None:
        plan = self._plans.get(key)
        targets = plan.targets_at(now) if plan is not None else ()
        if targets:
            self._desired[key] = targets
        else:
            self._desired.pop(key, None)

    async def _apply(self, due: set[Key]) -> bool:
        """Apply the difference for the due keys and every PBX to be read back.

        Returns True when a PBX refused a change (then it is read back and retried soon).
        """
        readback, self._readback = self._readback, set()
        results = await asyncio.gather(
            *(self._apply_pbx(name, due, name in readback) for name in self.pbxes)
        )
        return any(results)

    async def _apply_pbx(self, name: str, due: set[Key], readback: bool) -> bool:
        pbx = self.pbxes[name]
        try:
            if readback or name not in self._applied:
                self._applied[name] = await pbx.read_applied()
                readback = True
            applied = self._applied[name]
            if readback:
                wanted = self.desired_state(name)
                exts = set(wanted) | set(applied)
            else:
                wanted = {ext: self._desired.get((name, ext), ()) for p, ext in due if p == name}
                exts = set(wanted)
            changes = {
                ext: wanted.get(ext, ())
                for ext in exts
                if wanted.get(ext, ()) != applied.get(ext, ())
            }
            if name in self._unavailable:
                self._unavailable.discard(name)
                log.info("PBX %s reachable again; applying the difference", name)
            if not changes:
                return False
            await pbx.apply(changes)
        except PbxUnavailable as exc:
            if name not in self._unavailable:  # once per outage, not every tick
                log.warning("PBX %s unavailable, will apply when it returns: %s", name, exc)
                self._unavailable.add(name)
            self._readback.add(name)  # full difference once it is back
            return False
        except (UnsafeValue, PbxError) as exc:
            log.error("PBX %s refused a change, retrying shortly: %s", name, exc)
            self._readback.add(name)
            return True
        for ext, targets in changes.items():
            if targets:
                applied[ext] = tuple(targets)
                self.metrics.forwarding_changes.labels("set").inc()
            else:
                applied.pop(ext, None)
                self.metrics.forwarding_changes.labels("clear").inc()
        log.info(
            "PBX %s: %d forwardings changed (%s)",
            name,
            len(changes),
            ", ".join(f"{e}={'&'.join(t) or '-'}" for e, t in sorted(changes.items())[:5])
            + (" ..." if len(changes) > 5 else ""),
        )
        if self.on_applied is not None:
            await self.on_applied(name, dict(applied))
        return False
