"""Reading one link's calendar once: the source, the read, its outcome counted and logged.

What it does: ``LinkReads`` is the half of ``sync.CalendarSync`` that reads one link
(``sync_link``): it builds the link's source on its first read (``_source``), fetches a
document (ICS: conditional requests, a body without validators compared by its hash) or
a change set since the cursor (``pbxcal.calendars.changes``), hands the new version to a
worker (``calendar_work.CalendarWork``: parsed, expanded, committed in one transaction),
gives the reconciler the instances, and maps every outcome (changed, unchanged,
unavailable, rate-limited, auth-failed, needs-relink, invalid, over-limit, store-error,
error) to a count, a log line, a sync log entry and the link's status. No error leaves
``sync_link``. ``LinkState`` is what ``CalendarSync`` keeps per followed link.

What it must not do: schedule reads or decide which links are followed (``sync.py``
does), or run parsing on the event loop.

Start reading at ``LinkReads.sync_link``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar, cast

import httpx

from pbxcal.calendars import CalendarSource, Fetched, Validators
from pbxcal.calendars.changes import IncrementalSource
from pbxcal.calendars.health import STATUS_OF_RESULT, link_status
from pbxcal.calendars.ics import source_for
from pbxcal.calendars.locations import check_source
from pbxcal.config import Config
from pbxcal.core.ical import OverLimit
from pbxcal.core.redact import redact_url
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
    InputError,
    StoreError,
)
from pbxcal.service.calendar_work import CalendarWork, Stopped, Work
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import PAST, LinkInstances, Reconciler
from pbxcal.service.source_secrets import SourceSecrets
from pbxcal.service.store_health import StoreHealth
from pbxcal.service.throttle import ThrottleBook
from pbxcal.store import Link, Store

log = logging.getLogger("pbxcal.service.sync")  # half of the sync: logs under its name

T = TypeVar("T")

AnySource = CalendarSource | IncrementalSource
#: Providers whose built sources the push keepers tend (``pbxcal.service.push``,
#: ``ews_push``): only building or dropping one of these wakes them.
PUSHED_PROVIDERS = frozenset({"google", "graph", "ews"})


@dataclass
class LinkState:
    """What ``CalendarSync`` keeps per followed link."""

    link: Link
    source: AnySource | None
    generation: int
    validators: Validators | None = None
    digest: str | None = None
    cursor: str | None = None
    last_result: str = "pending"
    running: bool = False
    retry_after: float = 0.0
    again: bool = False  # a push arrived while it was being read: read once more
    stored: bool = False  # the last sync committed a change (other processes are told)
    set_at: float = 0.0  # monotonic: when this process last gave the reconciler its events
    stored_at: datetime | None = None  # ``computed_at`` of the expansion it last stored


@dataclass(frozen=True)
class SyncOutcome:
    """The result of one sync of one link, as it is logged and counted."""

    result: str
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    message: str = ""


class _BrokenSource:
    """Stands in for a source that could not even be built (its fetch says why)."""

    provider = "invalid"

    def __init__(self, message: str, error: Exception | None = None) -> None:
        self.message = message
        self.error = error

    async def fetch(self, previous: Validators | None) -> Fetched:
        if isinstance(self.error, CalendarError):
            raise self.error  # e.g. CalendarAuthFailed: no stored credentials
        raise CalendarError(self.message)


class LinkReads:
    """One read of one link (a part of ``sync.CalendarSync``; its attributes are set by
    ``CalendarSync.__init__``). See the module docstring."""

    store: Store
    reconciler: Reconciler
    metrics: Metrics
    clock: Clock
    config: Config
    client: httpx.AsyncClient
    store_health: StoreHealth
    source_factory: Callable[[Link], AnySource]
    on_sources_changed: Callable[[], None] | None
    on_link_saved: Callable[[int], Awaitable[None]] | None
    throttles: ThrottleBook
    secrets: SourceSecrets
    _links: dict[int, LinkState]
    _built: dict[str, dict[int, AnySource]]
    _health: Counter[tuple[str, str]]
    _executor: ThreadPoolExecutor
    _stopping: threading.Event
    _work: CalendarWork

    def _count(self, state: LinkState, sign: int) -> None:
        self._health[(state.link.provider, link_status(state.last_result))] += sign

    async def _source(self, state: LinkState) -> AnySource:
        """The link's source, built on its first sync (in a thread: it may read a secret)."""
        if state.source is None:
            link = state.link
            problem = check_source(link.source) if link.provider == "ics" else None
            try:
                if problem is not None:  # stored before sources were checked on the way in
                    raise ValueError(problem)
                source = state.source = await asyncio.to_thread(self.source_factory, link)
                if self._links.get(link.id) is state:
                    self._built.setdefault(source.provider, {})[link.id] = source
                if source.provider in PUSHED_PROVIDERS and self.on_sources_changed is not None:
                    self.on_sources_changed()
            except (CalendarError, StoreError) as exc:  # tried again at the next sync
                return _BrokenSource(str(exc), exc)
            except Exception as exc:  # noqa: BLE001 - a bad stored source must not stop us
                where = redact_url(link.source)
                return _BrokenSource(f"unusable calendar source {where!r}: {_one_line(exc)}")
        return state.source

    def _unbuild(self, state: LinkState) -> bool:
        """Forget ``state``'s built source; True when a push keeper may have tended it."""
        if state.source is None:
            return False
        built = self._built.get(state.source.provider, {})
        if built.get(state.link.id) is state.source:
            del built[state.link.id]
        return state.source.provider in PUSHED_PROVIDERS

    def _source_for(self, link: Link) -> AnySource:
        return source_for(link.source, self.client, self.config.max_calendar_bytes)

    def _count_unknown(self) -> None:
        self.metrics.links_unknown.set(self.reconciler.unknown_links)

    async def sync_link(self, link_id: int) -> str:
        """Read one link's source once; returns the result (also counted and logged)."""
        state = self._links[link_id]
        link = state.link
        started = time.perf_counter()
        state.stored = False
        try:
            outcome = await self._sync(state)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            timeout = self.config.sync_timeout
            outcome = SyncOutcome("unavailable", message=f"no answer within {timeout:g}s")
        except CalendarRateLimited as exc:
            state.retry_after = exc.retry_after or 0.0
            if state.retry_after > 0:  # every link of this quota waits, not only this one
                self.throttles.hold(throttle_key(state), time.monotonic() + state.retry_after)
            outcome = SyncOutcome("rate-limited", message=str(exc))
        except CalendarUnavailable as exc:
            state.retry_after = self.config.sync_interval  # the next poll, spread out
            outcome = SyncOutcome("unavailable", message=str(exc))
        except CalendarAuthFailed as exc:
            outcome = SyncOutcome("auth-failed", message=str(exc))
        except CalendarNeedsRelink as exc:
            outcome = SyncOutcome("needs-relink", message=str(exc))
        except OverLimit as exc:
            outcome = SyncOutcome("over-limit", message=str(exc))
        except (CalendarError, InputError) as exc:
            outcome = SyncOutcome("invalid", message=str(exc))
        except StoreError as exc:
            self.store_health.failed("read-events", exc)
            outcome = SyncOutcome("store-error", message=str(exc))
        except Stopped:
            return "stopped"
        except Exception as exc:
            outcome = SyncOutcome("error", message=f"{type(exc).__name__}: {_one_line(exc)}")
            log.debug("link %d: unexpected sync error", link_id, exc_info=True)
        await self.save_updated_secret(link_id)  # a token may have rotated, even on errors
        provider = (await self._source(state)).provider
        self.metrics.sync_duration.labels(provider).observe(time.perf_counter() - started)
        self.metrics.calendar_syncs.labels(provider, outcome.result).inc()
        followed = self._links.get(link_id) is state  # not removed or replaced meanwhile
        if followed:
            self._count(state, -1)
        previous, state.last_result = state.last_result, outcome.result
        if followed:
            self._count(state, +1)
        self._count_unknown()
        recovered = STATUS_OF_RESULT.get(previous) not in ("connected", "pending")
        if outcome.result != "unchanged" or recovered:
            if outcome.message:
                log.warning(
                    "link %d (extension %s): %s%s",
                    link.id,
                    link.extension,
                    outcome.message,
                    "; keeping the last known events" if outcome.result != "changed" else "",
                )
            await self._log_sync(link.id, outcome)
        if state.stored and self.on_link_saved is not None:
            await self.on_link_saved(link.id)  # after the commit: the others re-read it
        return outcome.result

    async def save_updated_secret(self, link_id: int) -> None:
        """Store the credential the link's source changed (``updated_secret``), if any
        (``source_secrets.SourceSecrets``). Never raises; the push keeper calls it too."""
        state = self._links.get(link_id)
        if state is not None and state.source is not None:
            await self.secrets.save(
                link_id, state.source, lambda: self._links.get(link_id) is state
            )

    async def _log_sync(self, link_id: int, outcome: SyncOutcome) -> None:
        try:
            await asyncio.to_thread(
                self.store.log_sync,
                link_id,
                self.clock.now(),
                outcome.result,
                outcome.accepted,
                outcome.rejected,
                outcome.message,
            )
        except StoreError as exc:
            self.store_health.failed("sync-log", exc)

    async def _sync(self, state: LinkState) -> SyncOutcome:
        source = await self._source(state)
        if hasattr(source, "changes"):
            return await self._sync_changes(state, cast(IncrementalSource, source))
        link = state.link
        fetched = await asyncio.wait_for(
            source.fetch(state.validators), timeout=self.config.sync_timeout
        )
        now = self.clock.now()
        stale = self._expansion_stale(link.id, now)
        digest: str | None
        if isinstance(fetched, Fetched):
            # hashing a big calendar takes tens of ms: not on the event loop
            digest = await asyncio.to_thread(_digest, fetched.body)
            if digest == state.digest and not stale:
                state.validators = fetched.validators
                return SyncOutcome("unchanged")
            parser = self.reconciler.parser_for(link.pbx)
            work = await self._in_worker(
                self._work.on_fetched, self.config, link, fetched, now, parser
            )
        elif stale:
            parser = self.reconciler.parser_for(link.pbx)
            work = await self._in_worker(self._work.on_stored, self.config, link, now, parser)
            digest = state.digest
        else:
            return SyncOutcome("unchanged")
        message = self._take(state, work, now)
        if work.store_error is not None:
            state.validators, state.digest = None, None  # read and save again next time
        elif isinstance(fetched, Fetched):
            state.validators, state.digest = fetched.validators, digest
        return SyncOutcome("changed", work.accepted, work.rejected, message)

    async def _sync_changes(self, state: LinkState, source: IncrementalSource) -> SyncOutcome:
        """One incremental read: the change set, its cursor and the new expansion are
        committed together; the cursor moves on in memory only once they are."""
        link = state.link
        change = await asyncio.wait_for(
            source.changes(state.cursor), timeout=self.config.sync_timeout
        )
        now = self.clock.now()
        parser = self.reconciler.parser_for(link.pbx)
        if change is None:
            if not self._expansion_stale(link.id, now):
                return SyncOutcome("unchanged")
            work = await self._in_worker(self._work.on_stored, self.config, link, now, parser)
        else:
            work = await self._in_worker(
                self._work.on_changes, self.config, link, change, now, parser
            )
        message = self._take(state, work, now)
        if work.store_error is None and change is not None:
            state.cursor = change.cursor
        return SyncOutcome("changed", work.accepted, work.rejected, message)

    def _take(self, state: LinkState, work: Work, now: datetime) -> str:
        """Give the read's instances to the reconciler and count its rejections; returns
        the outcome's message. ``state.stored`` when the store took it too."""
        link = state.link
        state.set_at = time.monotonic()
        self.reconciler.set_link_instances(
            link.id, LinkInstances(link_key(link), work.instances, work.since, work.until)
        )
        for reason, count in work.rejected.items():
            self.metrics.rejected_events.labels(reason).inc(count)
        if work.store_error is not None:
            self.store_health.failed("save-events", work.store_error)
            return f"calendar followed, but not saved: {work.store_error}"
        self.store_health.succeeded()
        state.stored, state.stored_at = True, now
        return f"{work.skipped} events skipped (unreadable)" if work.skipped else ""

    def _checkpoint(self) -> None:
        """Called by the workers every ~1,000 items: abandon the work when stopping."""
        if self._stopping.is_set():
            raise Stopped

    def _expansion_stale(self, link_id: int, now: datetime) -> bool:
        """True when the link has no instances, or they no longer cover the horizon."""
        current = self.reconciler.link_instances(link_id)
        horizon = timedelta(days=self.config.horizon_days)
        return current is None or current.until < now + horizon or current.since > now - PAST

    async def _in_worker(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            raise Stopped
        return await loop.run_in_executor(self._executor, lambda: function(*args))


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def throttle_key(state: LinkState) -> str | None:
    key = getattr(state.source, "throttle_key", None)
    return key if isinstance(key, str) else None


def link_key(link: Link) -> tuple[str, str]:
    return (link.pbx, link.extension)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
