"""Reading the linked calendars: on start from the store, then from their sources.

``CalendarSync`` keeps one schedule entry per active link (a generation number makes a
link that is re-added or changed replace its entry instead of adding a second one) and
reads each source every ``sync_interval`` seconds (bounded concurrency), or at once when
a push notification asks (``sync_soon``). Two kinds of source: a document source (ICS:
conditional requests, and a body without validators is compared by its hash, so an
unchanged calendar costs no parse, no write and no replan), and an incremental source
(``pbxcal.calendars.changes``: CalDAV, Google) answering with change sets since a
cursor. A link's source is built on its first read (``pbxcal.calendars.providers``).

A new version is worked on once, in a bounded worker pool, never on the event loop
(``calendar_work.CalendarWork``): limited, parsed, expanded over ``[now - 1 day, now +
2 × horizon)`` with the instance caps, counted for the sync log, and committed with its
cursor or validators and its expansion in one transaction. The reconciler then gets the
instances and plans from them; it never parses or expands. When the horizon moves past
a link's expansion, it is expanded again from the stored rows.

Every outcome of a sync — changed, unchanged, unavailable, rate-limited, auth-failed,
needs-relink, invalid, over-limit, an unwritable store, or any unexpected error — is
counted, logged, written to the link's sync log (a recovery too) and becomes the link's
status (``pbxcal.calendars.health``); no error ever leaves a link's task, and the last
known events keep driving the forwardings. A store that cannot be written does not stop
the calendar from being followed in memory: the read is repeated until it is saved.

Two optional members of a source (``IncrementalSource``'s docstring): ``throttle_key``
(a provider's 429/503 ``Retry-After`` holds back every link with the key, not only the
one that was answered: ``throttle.ThrottleBook``) and ``updated_secret()`` (a credential
the source changed, e.g. a rotated OAuth refresh token: stored encrypted after every
sync by ``save_updated_secret``: ``source_secrets.SourceSecrets``).

Several processes on one PostgreSQL store (``pbxcal.service.cluster_links``): ``is_mine``
says which links this process reads on schedule (the others are parked until
``owners_changed``), a push still reads its link here (``sync_soon``), a committed change
is announced through ``on_link_saved`` (``stored_stamp`` says which expansion it was,
so the process does not re-read its own change), and ``adopt_stored`` takes the
expansions another process stored.

Cost per change: a sync costs in proportion to its own calendar; nothing per sync walks
every link (the push keepers are woken only when a source they tend is built or goes:
``PUSHED_PROVIDERS``; ``built_sources(provider)`` lists only that provider's; ``health``
is kept up to date as results change). Walking all links is left to start-up
(``restore``) and ``set_links`` (the link list changed).

Start reading at ``sync_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from pbxcal.core.ical import (
    OverLimit,
)
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
from pbxcal.service.calendar_work import CalendarWork, Stopped
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import PAST, LinkInstances, Reconciler
from pbxcal.service.source_secrets import SourceSecrets
from pbxcal.service.store_health import StoreHealth
from pbxcal.service.throttle import ThrottleBook
from pbxcal.store import Link, Store
from pbxcal.store.records import ExpansionRecord, SyncState

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Workers that parse and expand calendars (CPU work; more would only fight for the GIL).
EXPAND_WORKERS = 2


AnySource = CalendarSource | IncrementalSource
#: Providers whose built sources the push keepers tend (``pbxcal.service.push``,
#: ``ews_push``): only building or dropping one of these wakes them.
PUSHED_PROVIDERS = frozenset({"google", "graph", "ews"})


@dataclass
class _LinkState:
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
        store_health: StoreHealth | None = None,
        max_parallel: int = 8,
        source_factory: Callable[[Link], AnySource] | None = None,
        on_sources_changed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.metrics = metrics
        self.clock = clock
        self.config = config
        self.client = client
        self.store_health = store_health or StoreHealth(metrics)
        self.source_factory = source_factory or self._source_for
        #: Called when a link's source was built or a link went (push channels follow).
        self.on_sources_changed = on_sources_changed
        self._links: dict[int, _LinkState] = {}
        self._due: list[tuple[float, int, int]] = []  # (monotonic due, generation, link id)
        self._generations = itertools.count(1)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_parallel)
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(EXPAND_WORKERS, thread_name_prefix="pbxcal-calendar")
        self._work = CalendarWork(store, self._checkpoint)
        #: Provider quotas shared by several links (``throttle_key``) and when to go on.
        self.throttles = ThrottleBook()
        self.secrets = SourceSecrets(store, self.store_health)
        # Several processes on one store (``pbxcal.service.cluster_links``): which links
        # this one reads on schedule (None: all), and who hears of a stored change.
        self.is_mine: Callable[[int], bool] | None = None
        self.on_link_saved: Callable[[int], Awaitable[None]] | None = None
        #: called with links this process starts following (their events may be stored)
        self.on_links_added: Callable[[list[int]], None] | None = None
        #: this process's cluster member id (None: one process; push channels' owner)
        self.member_id: str | None = None
        self._parked: dict[int, int] = {}  # link id -> generation: due, but read elsewhere
        #: provider -> link id -> built source (``built_sources``)
        self._built: dict[str, dict[int, AnySource]] = {}
        #: (provider, status) -> followed links (``health``), updated as results change
        self._health: Counter[tuple[str, str]] = Counter()
        self._pushed: set[int] = set()  # read here once even if read elsewhere (webhooks)

    @property
    def link_count(self) -> int:
        return len(self._links)

    def results(self) -> Counter[str]:
        return Counter(state.last_result for state in self._links.values())

    def health(self) -> Counter[tuple[str, str]]:
        """Active links by (provider, status); kept as results change, not counted here."""
        return +self._health

    def _count(self, state: _LinkState, sign: int) -> None:
        self._health[(state.link.provider, link_status(state.last_result))] += sign

    # -- following the links ------------------------------------------------------------

    async def restore(self, links: Sequence[Link]) -> None:
        """Give the reconciler every link's last known instances from the store (on start).

        Cheap: the expansions were saved when the calendars were read, so nothing is
        parsed here. A link without a saved expansion is expanded from its stored rows
        by its first sync; until then its extension is left as it is on the PBX.
        """
        expansions, states = await asyncio.gather(
            asyncio.to_thread(self.store.load_expansions),
            asyncio.to_thread(self.store.load_sync_states),
        )
        for link in links:
            if not link.active:
                continue
            state = self._track(link)
            record = expansions.get(link.id)
            if record is None:
                self.reconciler.set_link_unknown(link.id, _key(link))
                continue
            stored = states.get(link.id)
            if stored is not None:
                state.validators = Validators(stored.etag, stored.last_modified)
                state.cursor = stored.sync_token
            self.reconciler.set_link_instances(
                link.id,
                LinkInstances(_key(link), record.instances, record.range_start, record.range_end),
            )
        self._count_unknown()

    def set_links(self, links: Sequence[Link]) -> None:
        """Follow the store's set of active links: new or changed ones are read at once."""
        wanted = {link.id: link for link in links if link.active}
        added: list[int] = []
        for link_id in set(self._links) - set(wanted):
            gone = self._links.pop(link_id)
            self._count(gone, -1)
            self.secrets.forget(link_id)
            self.reconciler.remove_link(link_id)
            if self._unbuild(gone) and self.on_sources_changed is not None:
                self.on_sources_changed()
        for link_id, link in wanted.items():
            current = self._links.get(link_id)
            if current is None or current.link != link:
                self._track(link)
                if current is None or _key(current.link) != _key(link):
                    self.reconciler.set_link_unknown(link_id, _key(link))
                    added.append(link_id)
        self._count_unknown()
        self._wake.set()
        if added and self.on_links_added is not None:
            self.on_links_added(added)  # another process may have read them already

    def _track(self, link: Link) -> _LinkState:
        """(Re)start following ``link``: a fresh state and one schedule entry, due now.

        The source itself is built on the link's first sync (``_source``), so a restart
        with thousands of links does not build thousands of sources before READY.
        """
        previous = self._links.get(link.id)
        if previous is not None:
            self._count(previous, -1)
            if self._unbuild(previous) and self.on_sources_changed is not None:
                self.on_sources_changed()
        state = _LinkState(link, None, next(self._generations))
        self._links[link.id] = state
        self._count(state, +1)
        self.secrets.forget(link.id)  # a new grant may have replaced the old secret
        heapq.heappush(self._due, (0.0, state.generation, link.id))
        return state

    async def _source(self, state: _LinkState) -> AnySource:
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

    def _unbuild(self, state: _LinkState) -> bool:
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

    # -- the schedule -------------------------------------------------------------------

    async def run(self) -> None:
        """Read due links forever."""
        while True:
            self._wake.clear()
            await self._start_due(time.monotonic())
            wait = self._due[0][0] - time.monotonic() if self._due else 60.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))

    async def _start_due(self, now: float) -> None:
        """Start a read of every link due at ``now`` (monotonic); a link whose quota is
        held (``throttles``) is moved to when it is free again."""
        while self._due and self._due[0][0] <= now:
            _, generation, link_id = heapq.heappop(self._due)
            state = self._links.get(link_id)
            if state is None or state.generation != generation or state.running:
                continue  # removed, replaced, or still being read
            if link_id not in self._pushed and self.is_mine and not self.is_mine(link_id):
                self._parked[link_id] = generation  # another process reads it
                continue
            self._pushed.discard(link_id)
            held = self.throttles.until(_throttle_key(state), now)
            if held is not None:  # its quota is used up (another link was told so)
                later = held + random.uniform(0.0, 0.1 * (held - now))
                heapq.heappush(self._due, (later, generation, link_id))
                continue
            await self._slots.acquire()
            state.running = True
            task = asyncio.create_task(self._sync_and_reschedule(state))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def sync_soon(self, link_id: int) -> bool:
        """Read a link now (a push notification said it changed); False if unknown.

        Repeated, late or out-of-order pushes cost at most one more cheap read: a link
        already being read is read once more when it finishes, never twice at once.
        """
        state = self._links.get(link_id)
        if state is None:
            return False
        self._pushed.add(link_id)  # pushed here: read here, whoever reads it on schedule
        self._parked.pop(link_id, None)
        if state.running:
            state.again = True
        else:
            held = self.throttles.until(_throttle_key(state), time.monotonic())
            heapq.heappush(self._due, (held or 0.0, state.generation, link_id))
            self._wake.set()
        return True

    def owners_changed(self) -> None:
        """The processes sharing the store changed: read the links now ours at once."""
        for link_id, generation in list(self._parked.items()):
            state = self._links.get(link_id)
            if state is None or state.generation != generation:
                del self._parked[link_id]
            elif self.is_mine is None or self.is_mine(link_id):
                del self._parked[link_id]
                heapq.heappush(self._due, (0.0, generation, link_id))
        self._wake.set()

    def adopt_stored(
        self,
        expansions: Mapping[int, ExpansionRecord],
        states: Mapping[int, SyncState],
        read_since: float,
    ) -> set[int]:
        """Take links' expansions another process stored (it was told by NOTIFY).

        Links this process gave events to after ``read_since`` (monotonic, taken before
        the store was read) keep theirs: they are at least as new. Returns the links
        that are settled: taken, or newer here. Links not followed (yet) and links being
        read right now are not.
        """
        settled: set[int] = set()
        for link_id, record in expansions.items():
            state = self._links.get(link_id)
            if state is None or state.running:
                continue
            settled.add(link_id)
            if state.set_at > read_since:
                continue
            stored = states.get(link_id)
            if stored is not None:
                state.validators = Validators(stored.etag, stored.last_modified)
                state.cursor = stored.sync_token
                state.digest = None
            state.set_at = time.monotonic()
            link = state.link
            self.reconciler.set_link_instances(
                link_id,
                LinkInstances(_key(link), record.instances, record.range_start, record.range_end),
            )
        self._count_unknown()
        return settled

    def built_sources(self, provider: str | None = None) -> list[tuple[int, AnySource]]:
        """(link id, source) of every link whose source exists (has been read once), or
        of those of one ``provider`` only (costs only that provider's links)."""
        if provider is not None:
            return list(self._built.get(provider, {}).items())
        return [(i, s.source) for i, s in self._links.items() if s.source is not None]

    def follows(self, link_id: int) -> bool:
        """Whether the link is one of the active links this process follows."""
        return link_id in self._links

    def built_source(self, link_id: int) -> AnySource | None:
        """The link's source if it has been built (read once)."""
        state = self._links.get(link_id)
        return None if state is None else state.source

    def stored_stamp(self, link_id: int) -> datetime | None:
        """``computed_at`` of the expansion this process last stored for the link."""
        state = self._links.get(link_id)
        return None if state is None else state.stored_at

    async def _sync_and_reschedule(self, state: _LinkState) -> None:
        try:
            await self.sync_link(state.link.id)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - sync_link catches everything; belt and braces
            log.exception("link %d: sync failed unexpectedly", state.link.id)
        finally:
            self._slots.release()
            state.running = False
            if self._links.get(state.link.id) is state:
                wait = max(self.config.sync_interval, state.retry_after)
                if state.retry_after:  # a provider asked us to slow down: spread the retries
                    wait += random.uniform(0.0, 0.2 * wait)
                elif state.again:
                    wait = 0.0
                state.retry_after, state.again = 0.0, False
                due = time.monotonic() + wait
                heapq.heappush(self._due, (due, state.generation, state.link.id))
                self._wake.set()

    def stop(self) -> None:
        """Abandon work in progress (workers stop at their next checkpoint)."""
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one sync -------------------------------------------------------------------------

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
                self.throttles.hold(_throttle_key(state), time.monotonic() + state.retry_after)
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

    async def _sync(self, state: _LinkState) -> SyncOutcome:
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
        state.set_at = time.monotonic()
        self.reconciler.set_link_instances(
            link.id, LinkInstances(_key(link), work.instances, work.since, work.until)
        )
        for reason, count in work.rejected.items():
            self.metrics.rejected_events.labels(reason).inc(count)
        message = f"{work.skipped} events skipped (unreadable)" if work.skipped else ""
        if work.store_error is not None:
            self.store_health.failed("save-events", work.store_error)
            state.validators, state.digest = None, None  # read and save again next time
            message = f"calendar followed, but not saved: {work.store_error}"
        else:
            self.store_health.succeeded()
            state.stored, state.stored_at = True, now
            if isinstance(fetched, Fetched):
                state.validators, state.digest = fetched.validators, digest
        return SyncOutcome("changed", work.accepted, work.rejected, message)

    async def _sync_changes(self, state: _LinkState, source: IncrementalSource) -> SyncOutcome:
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
        state.set_at = time.monotonic()
        self.reconciler.set_link_instances(
            link.id, LinkInstances(_key(link), work.instances, work.since, work.until)
        )
        for reason, count in work.rejected.items():
            self.metrics.rejected_events.labels(reason).inc(count)
        message = f"{work.skipped} events skipped (unreadable)" if work.skipped else ""
        if work.store_error is not None:
            self.store_health.failed("save-events", work.store_error)
            message = f"calendar followed, but not saved: {work.store_error}"
        else:
            self.store_health.succeeded()
            state.stored, state.stored_at = True, now
            if change is not None:
                state.cursor = change.cursor
        return SyncOutcome("changed", work.accepted, work.rejected, message)

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


def _throttle_key(state: _LinkState) -> str | None:
    key = getattr(state.source, "throttle_key", None)
    return key if isinstance(key, str) else None


def _key(link: Link) -> tuple[str, str]:
    return (link.pbx, link.extension)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
