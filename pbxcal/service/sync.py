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

One read of one link is ``link_reads.LinkReads.sync_link`` (``CalendarSync`` inherits
it): every outcome of a sync — changed, unchanged, unavailable, rate-limited,
auth-failed, needs-relink, invalid, over-limit, an unwritable store, or any unexpected
error — is counted, logged, written to the link's sync log (a recovery too) and becomes
the link's status (``pbxcal.calendars.health``); no error ever leaves a link's task, and
the last known events keep driving the forwardings. A store that cannot be written does not stop
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

Start reading at ``CalendarSync.run`` (the schedule), then ``LinkReads.sync_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx

from pbxcal.calendars import Validators
from pbxcal.config import Config
from pbxcal.service.calendar_work import CalendarWork
from pbxcal.service.clock import Clock
from pbxcal.service.link_reads import AnySource, LinkReads, LinkState, link_key, throttle_key
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import LinkInstances, Reconciler
from pbxcal.service.source_secrets import SourceSecrets
from pbxcal.service.store_health import StoreHealth
from pbxcal.service.throttle import ThrottleBook
from pbxcal.store import Link, Store
from pbxcal.store.records import ExpansionRecord, SyncState

log = logging.getLogger(__name__)

#: Workers that parse and expand calendars (CPU work; more would only fight for the GIL).
EXPAND_WORKERS = 2


class CalendarSync(LinkReads):
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
        self._links: dict[int, LinkState] = {}
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
                self.reconciler.set_link_unknown(link.id, link_key(link))
                continue
            stored = states.get(link.id)
            if stored is not None:
                state.validators = Validators(stored.etag, stored.last_modified)
                state.cursor = stored.sync_token
            self.reconciler.set_link_instances(
                link.id,
                LinkInstances(
                    link_key(link), record.instances, record.range_start, record.range_end
                ),
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
                if current is None or link_key(current.link) != link_key(link):
                    self.reconciler.set_link_unknown(link_id, link_key(link))
                    added.append(link_id)
        self._count_unknown()
        self._wake.set()
        if added and self.on_links_added is not None:
            self.on_links_added(added)  # another process may have read them already

    def _track(self, link: Link) -> LinkState:
        """(Re)start following ``link``: a fresh state and one schedule entry, due now.

        The source itself is built on the link's first sync (``_source``), so a restart
        with thousands of links does not build thousands of sources before READY.
        """
        previous = self._links.get(link.id)
        if previous is not None:
            self._count(previous, -1)
            if self._unbuild(previous) and self.on_sources_changed is not None:
                self.on_sources_changed()
        state = LinkState(link, None, next(self._generations))
        self._links[link.id] = state
        self._count(state, +1)
        self.secrets.forget(link.id)  # a new grant may have replaced the old secret
        heapq.heappush(self._due, (0.0, state.generation, link.id))
        return state

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
            held = self.throttles.until(throttle_key(state), now)
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
            held = self.throttles.until(throttle_key(state), time.monotonic())
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
                LinkInstances(
                    link_key(link), record.instances, record.range_start, record.range_end
                ),
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

    async def _sync_and_reschedule(self, state: LinkState) -> None:
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
