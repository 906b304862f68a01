"""The push keepers' common loop, and re-reading stored channel rows only when they changed.

What it does: ``PushKeeper`` is what every push keeper shares (``GooglePush``,
``GraphPush`` in ``pbxcal.service.push``, ``EwsPush``): a loop that looks at the links
this process reads on schedule and opens, renews and stops their channels (``_tend``),
woken by ``links_changed()`` (a link's source built or gone, the cluster's members
changed) and otherwise every ``CHANNEL_CHECK_INTERVAL``. ``StoredPushKeeper`` is the base
of the keepers whose channels have rows in the store (``push_channels``: Google and
Graph). It keeps the rows of the links it tends in memory (``_rows_for``) and reads the
store only for:

* a link it starts tending (its source was built, or it became this process's when the
  members changed): that link's rows, one indexed read (``Store.push_channels(provider,
  link_ids)``, in chunks of 500 links);
* a link whose rows changed. Every write of a row sends ``NOTIFY pbxcal_push,
  '<provider> <link>'`` in its transaction (``pbxcal.store.push_channels``); one
  ``ChannelChanges`` per process LISTENs for it and calls ``channels_changed(link)``,
  which marks the link stale and wakes the keeper if it tends that link (others are
  ignored: a set lookup). So a Graph lifecycle event that reached another process
  (``expire_push_channel``) is renewed by the owner within a round trip, and a channel
  taken over elsewhere is let go at once. Its own writes mark the link stale too (with
  SQLite, the only process, that is all there is);
* everything it tends, after the listener (re)connected (what was sent meanwhile is
  lost) and every ``BACKSTOP_SECONDS`` (the backstop for anything else lost).

Between those it looks again only when a channel falls due for renewal (the earliest of
``_renewal_times``), ``RETRY_SECONDS`` after the store failed, or
``CHANNEL_CHECK_INTERVAL`` after a provider refused to open or renew one (``retry``).

A row of another process means that process tends the link (or did until it died): a
keeper takes it over, or stops it, only when it *starts* tending the link (``started``:
the link just became its own, the backstop, or a retry) or has just opened its own,
never in a look woken by a notification. While two processes' views of the members
differ (up to one lease round) both may think a link is theirs; reacting to each other's
writes at once would make them replace each other's channels on every notification
(seen in ``test_cluster_push.py`` before this rule). Whichever is wrong lets go when its
view catches up; a channel left over by that is stopped at the backstop.

Cost, for N links of one provider over P processes (before: every process read all N
rows every 30 s). Without changes: no store read but one of N/P rows per process every
``BACKSTOP_SECONDS`` (600 s): at 1,000,000 links on 16 processes, 62,500 rows per process
per 10 minutes, ~104 rows/s per process, 1,667 rows/s for the group (was 33,333 rows/s
per process, 533,000 for the group). Per change: one NOTIFY heard by all P processes and
one indexed read of one link's rows by the process that tends it (and one by the writer,
which hears its own). Channel writes are rare: a Graph renewal is one write every ~36 h
per link, a Google replacement three (pending row, answered row, the old one deleted)
every ~6.75 days: at 1,000,000 links ~7.7 + ~5.1 ≈ 13 notifications/s for the group.
One more PostgreSQL connection per process (the LISTEN). Each look still walks the
process's built sources of its provider in memory (O(N/P), no I/O). Measured on the shared 2-core
development machine (PostgreSQL, 30,000 Graph rows): reading all of them took 5.0 s
(median of 5), so the old 30 s timer alone would have kept a sixth of a core busy per
process at 30,000 links; one link's rows take 11 ms, 1,875 links' (a sixteenth) 1.0 s.

Must not do: let a failing store call or provider call stop the loop, or use a cached
row of a link it did not tend since (a link that leaves is dropped from the cache).
Start reading at ``StoredPushKeeper._rows_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pbxcal.cluster.notify import Listener
from pbxcal.errors import StoreError
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.sync import CalendarSync
from pbxcal.store.push_channels import CHANGES_CHANNEL, PushChannelRecord

log = logging.getLogger(__name__)

#: Seconds between looks of a keeper without stored channels (EWS: a watch thread that
#: ended is started again).
CHANNEL_CHECK_INTERVAL = 30.0
#: Seconds between full re-reads of a stored keeper's rows when nothing said they changed.
BACKSTOP_SECONDS = 600.0
#: Seconds to the next look after the store failed.
RETRY_SECONDS = 5.0


class PushKeeper:
    """What every push keeper shares: the loop, the owner id, ``close`` on shutdown."""

    provider = ""

    def __init__(self, sync: CalendarSync, metrics: Metrics, clock: Clock) -> None:
        self.sync = sync
        self.store = sync.store
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()
        self._process_id = f"process-{uuid.uuid4()}"

    @property
    def owner(self) -> str:
        """The id stored as a channel's owner: the cluster member id, or one per process."""
        return self.sync.member_id or self._process_id

    @property
    def shared(self) -> bool:
        """Whether other processes share the store (and so the webhooks and links)."""
        return self.sync.is_mine is not None

    def _mine(self, link_id: int) -> bool:
        return self.sync.is_mine is None or self.sync.is_mine(link_id)

    def links_changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            await self._tend(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_look(now))

    def _next_look(self, now: datetime) -> float:
        """Seconds from ``now`` (the start of the last look) to the next look."""
        return CHANNEL_CHECK_INTERVAL

    async def close(self) -> None:
        if self.shared:  # the links' next owners take the channels over
            return
        for link_id in self._live_links():
            await self._stop(link_id)

    async def _tend(self, now: datetime) -> None:
        raise NotImplementedError

    async def _stop(self, link_id: int) -> None:
        raise NotImplementedError

    def _live_links(self) -> list[int]:
        raise NotImplementedError


class StoredPushKeeper(PushKeeper):
    """A keeper whose channels have store rows; see the module docstring."""

    def __init__(self, sync: CalendarSync, metrics: Metrics, clock: Clock) -> None:
        super().__init__(sync, metrics, clock)
        #: link id -> its stored rows, oldest first (the links this keeper tends)
        self._rows: dict[int, list[PushChannelRecord]] = {}
        self._stale: set[int] = set()
        self._everything = True
        self._backstop_at: datetime | None = None
        self._failed = False
        #: the links whose rows were read afresh in the last ``_rows_for``: just started
        #: tending, or the backstop (not those read again after a notification)
        self.started: set[int] = set()
        #: links whose channel could not be opened or renewed: tried again (as just
        #: started) after ``CHANNEL_CHECK_INTERVAL``
        self.retry: set[int] = set()
        #: (store reads, rows read) so far: what re-reading costs (tests, debugging)
        self.reads = 0
        self.rows_read = 0

    def channels_changed(self, link_id: int) -> None:
        """Some process wrote a row of ``link_id``: re-read it if this keeper tends it."""
        if link_id in self._rows:
            self._stale.add(link_id)
            self._wake.set()

    def resync(self) -> None:
        """Re-read every tended link's rows at the next look (notifications were lost)."""
        self._everything = True
        self._wake.set()

    async def _rows_for(
        self, wanted: set[int], now: datetime
    ) -> dict[int, list[PushChannelRecord]] | None:
        """The stored rows of the links in ``wanted`` (those this keeper tends now),
        reading only what is unknown or stale; None when the store fails."""
        for gone in set(self._rows) - wanted:
            del self._rows[gone]
        backstop = self._backstop_at is not None and now >= self._backstop_at
        everything = self._everything or backstop
        unknown_or_stale = (wanted - set(self._rows)) | (self._stale & wanted)
        to_read = set(wanted) if everything else unknown_or_stale
        self.started = set(wanted) if everything else (wanted - set(self._rows))
        self.started |= self.retry & wanted
        self.retry -= wanted
        self._stale -= to_read  # taken now: a notification meanwhile marks it again
        self._everything = False
        if to_read:
            try:
                records = await asyncio.to_thread(
                    self.store.push_channels, self.provider, sorted(to_read)
                )
            except StoreError as exc:
                log.warning("%s push: cannot read the stored channels: %s", self.provider, exc)
                self._stale |= to_read
                self._everything = everything
                self._failed = True
                self.started = set()
                return None
            self.reads += 1
            self.rows_read += len(records)
            for link_id in to_read:
                self._rows[link_id] = []
            for record in records:
                if record.link_id in to_read:
                    self._rows[record.link_id].append(record)
        self._failed = False
        if everything or self._backstop_at is None:
            self._backstop_at = now + timedelta(seconds=BACKSTOP_SECONDS)
        return {link_id: self._rows.get(link_id, []) for link_id in wanted}

    def _next_look(self, now: datetime) -> float:
        due = [self._backstop_at or now + timedelta(seconds=BACKSTOP_SECONDS)]
        due.extend(self._renewal_times())
        if self._failed:
            due.append(now + timedelta(seconds=RETRY_SECONDS))
        if self.retry:
            due.append(now + timedelta(seconds=CHANNEL_CHECK_INTERVAL))
        return max(0.0, (min(due) - now).total_seconds())

    def _renewal_times(self) -> Iterable[datetime]:
        """When each channel this keeper holds falls due for renewal."""
        return ()

    async def _save(self, record: PushChannelRecord) -> None:
        self._stale.add(record.link_id)
        await asyncio.to_thread(self.store.save_push_channel, record)

    async def _forget_stored(self, link_id: int, channel_id: str) -> None:
        self._stale.add(link_id)
        try:
            await asyncio.to_thread(self.store.delete_push_channel, self.provider, channel_id)
        except StoreError as exc:  # its link's owner or its expiry cleans it up
            log.info("%s push: cannot delete a stored channel: %s", self.provider, exc)


class ChannelChanges(Listener):
    """LISTENs for ``NOTIFY pbxcal_push`` until cancelled and tells the keeper of that
    provider (``channels_changed``); after every (re)connect every keeper re-reads all
    it tends (``resync``: notifications sent while away are lost)."""

    def __init__(
        self,
        conninfo: str,
        keepers: Sequence[StoredPushKeeper],
        *,
        backoff_first: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        super().__init__(conninfo, CHANGES_CHANNEL, self.deliver, self._listening,
                         what="push: channel change", backoff_first=backoff_first,
                         backoff_max=backoff_max)  # fmt: skip
        self._keepers = {keeper.provider: keeper for keeper in keepers}

    def _listening(self, again: bool) -> None:
        for keeper in self._keepers.values():
            keeper.resync()

    def deliver(self, payload: str) -> None:
        """One notification's payload, ``"<provider> <link id>"``."""
        provider, _, link = payload.partition(" ")
        keeper = self._keepers.get(provider)
        if keeper is not None and link.isdigit():
            keeper.channels_changed(int(link))
