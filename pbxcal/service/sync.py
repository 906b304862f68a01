"""Reading the linked calendars: on start from the store, then from their sources.

``CalendarSync`` keeps one schedule entry per active link and reads each source every
``sync_interval`` seconds (bounded concurrency), with conditional requests. A new
version is parsed, checked and written to the store as per-event rows *before* it
replaces the calendar the reconciler uses; an unreachable source or a malformed
document is logged, counted and written to the link's sync log, and the last known
events keep driving the forwardings. Nothing already stored is lost.

Start reading at ``sync_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import icalendar

from pbxcal.calendars import CalendarSource, Fetched, Validators
from pbxcal.calendars.ics import source_for
from pbxcal.calendars.snapshot import join_calendar, split_calendar
from pbxcal.config import Config
from pbxcal.core.ical import expand_calendar, parse_calendar
from pbxcal.core.windows import plan_windows
from pbxcal.errors import CalendarError, CalendarUnavailable, InputError
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import LinkCalendar, Reconciler
from pbxcal.store import Link, Store, SyncState

log = logging.getLogger(__name__)


@dataclass
class _LinkState:
    link: Link
    source: CalendarSource
    validators: Validators | None = None
    last_result: str = "pending"


class CalendarSync:
    """Reads every active link's calendar on a schedule. See the module docstring."""

    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        metrics: Metrics,
        clock: Clock,
        config: Config,
        client: httpx.AsyncClient,
        *,
        max_parallel: int = 8,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.metrics = metrics
        self.clock = clock
        self.config = config
        self.client = client
        self._links: dict[int, _LinkState] = {}
        self._due: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_parallel)
        self._running: set[asyncio.Task[None]] = set()

    @property
    def link_count(self) -> int:
        return len(self._links)

    def results(self) -> Counter[str]:
        return Counter(state.last_result for state in self._links.values())

    async def restore(self, links: Sequence[Link]) -> None:
        """Give the reconciler every link's last known events from the store (on start)."""
        stored = await asyncio.to_thread(self.store.load_all_events)
        for link in links:
            events, state = stored.get(link.id, ([], None))
            self._track(link, state)
            if state is None:
                continue
            try:
                calendar = join_calendar(
                    events, state.timezones, state.calendar_tz, source=f"link {link.id}"
                )
            except InputError as exc:
                log.error(
                    "link %d: stored events unreadable, waiting for a fresh read: %s", link.id, exc
                )
                continue
            self.reconciler.set_link_calendar(link.id, self._link_calendar(link, calendar))

    def set_links(self, links: Sequence[Link]) -> None:
        """Follow the store's set of active links: new ones are read at once."""
        wanted = {link.id: link for link in links if link.active}
        for link_id in set(self._links) - set(wanted):
            del self._links[link_id]
            self.reconciler.remove_link(link_id)
        for link_id, link in wanted.items():
            current = self._links.get(link_id)
            if current is None or current.link != link:
                self._track(link, None)
                if current is not None:
                    self._links[link_id].validators = None
                heapq.heappush(self._due, (0.0, link_id))
        self._wake.set()

    def _track(self, link: Link, state: SyncState | None) -> None:
        validators = None
        if state is not None:
            validators = Validators(state.etag, state.last_modified)
        source = source_for(link.source, self.client, self.config.max_calendar_bytes)
        self._links[link.id] = _LinkState(link, source, validators)
        heapq.heappush(self._due, (0.0, link.id))

    async def run(self) -> None:
        """Read due links forever."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, link_id = heapq.heappop(self._due)
                if link_id in self._links:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._sync_and_reschedule(link_id))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            wait = self._due[0][0] - time.monotonic() if self._due else 60.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))

    async def _sync_and_reschedule(self, link_id: int) -> None:
        try:
            await self.sync_link(link_id)
        finally:
            self._slots.release()
            if link_id in self._links:
                due = time.monotonic() + self.config.sync_interval
                heapq.heappush(self._due, (due, link_id))
                self._wake.set()

    async def sync_link(self, link_id: int) -> str:
        """Read one link's source once; returns the result (also counted and logged)."""
        state = self._links[link_id]
        link = state.link
        started = time.perf_counter()
        result, accepted, rejected, message = "error", 0, Counter[str](), ""
        try:
            fetched = await asyncio.wait_for(
                state.source.fetch(state.validators), timeout=self.config.sync_timeout
            )
            if isinstance(fetched, Fetched):
                accepted, rejected = await self._accept(link, fetched)
                state.validators = fetched.validators
                result = "changed"
            else:
                result = "unchanged"
        except TimeoutError:
            result, message = "unavailable", f"no answer within {self.config.sync_timeout:g}s"
        except CalendarUnavailable as exc:
            result, message = "unavailable", str(exc)
        except (CalendarError, InputError) as exc:
            result, message = "invalid", str(exc)
        finally:
            self.metrics.sync_duration.labels(state.source.provider).observe(
                time.perf_counter() - started
            )
        self.metrics.calendar_syncs.labels(state.source.provider, result).inc()
        state.last_result = result
        if result != "unchanged":
            if message:
                log.warning(
                    "link %d (extension %s): %s; keeping the last known events",
                    link.id,
                    link.extension,
                    message,
                )
            await asyncio.to_thread(
                self.store.log_sync, link.id, self.clock.now(), result, accepted, rejected, message
            )
        return result

    async def _accept(self, link: Link, fetched: Fetched) -> tuple[int, Counter[str]]:
        """Parse, store, then hand the new calendar to the reconciler."""
        now = self.clock.now()
        horizon = timedelta(days=self.config.horizon_days)
        zone = self._zone(link)

        def prepare() -> tuple[icalendar.Calendar, int, Counter[str]]:
            calendar = parse_calendar(fetched.body, source=f"link {link.id} ({link.source})")
            events, timezones, calendar_tz = split_calendar(calendar)
            expansion = expand_calendar(
                calendar, now, now + horizon, zone, owner_emails=_owners(link)
            )
            plan = plan_windows(expansion.instances, now, now + horizon, self.reconciler.policy)
            rejected = Counter(r.reason.value for r in plan.rejected)
            for skipped in expansion.skipped:
                log.warning("link %d: skipped event %s: %s", link.id, skipped.uid, skipped.detail)
            accepted = len(expansion.instances) - len(plan.rejected)
            state = SyncState(
                fetched.validators.etag,
                fetched.validators.last_modified,
                None,
                calendar_tz,
                timezones,
                now,
            )
            self.store.replace_events(link.id, events, state)
            return calendar, accepted, rejected

        calendar, accepted, rejected = await asyncio.to_thread(prepare)
        for reason, count in rejected.items():
            self.metrics.rejected_events.labels(reason).inc(count)
        self.reconciler.set_link_calendar(link.id, self._link_calendar(link, calendar))
        return accepted, rejected

    def _link_calendar(self, link: Link, calendar: icalendar.Calendar) -> LinkCalendar:
        return LinkCalendar(
            (link.pbx, link.extension), calendar, self._zone(link), tuple(_owners(link))
        )

    def _zone(self, link: Link) -> ZoneInfo:
        name = link.settings.get("timezone") or self.config.timezone
        return ZoneInfo(str(name))


def _owners(link: Link) -> list[str]:
    owners = link.settings.get("owner_emails") or []
    return [str(o) for o in owners] if isinstance(owners, list) else []
