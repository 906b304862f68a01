"""Links shared by several ``pbxcal run`` processes: who reads which, and hearing of changes.

What it does, with a PostgreSQL store only (``pbxcal.cluster``):

* **Who reads a link on schedule.** ``LinkShare.is_mine(link_id)``: the live member that
  ranks the link highest by rendezvous hashing (``ownership.rendezvous_owner``) over the
  members the lease keeper saw in its last round. Every member computes the same answer
  from the same list, so each link is read by one process at a time; when a member
  joins or dies only its links move (``CalendarSync.owners_changed`` reads the links
  that became ours at once, and the push keepers, woken through
  ``on_sources_changed``, take their channels over: ``pbxcal.service.push``). A push
  notification is read wherever it lands (``CalendarSync.sync_soon``), so two processes
  may read one link at the same moment now and then; the store's transaction keeps the
  result right.
* **Hearing of a change.** After a change of link N is committed, ``link_saved(N)``
  sends ``NOTIFY pbxcal_link, 'N'``; every process's listener calls ``link_changed(N)``.
  The links named in a burst (coalesced: one round per burst, in a thread) are compared
  by their stored expansions' ``computed_at`` with the one this process holds, and only
  those that differ are loaded (expansion and sync state, ``load_expansions(ids)`` /
  ``load_sync_states(ids)``) and handed to the reconciler, so the owner of the link's
  PBX applies a change read elsewhere within one round trip. A process's own change
  costs it one small read of stamps: ``link_saved`` records the stamp it stored
  (``CalendarSync.stored_stamp``). A link this process starts following is re-read the
  same way (another process may have read it first). Once LISTEN is in place, after
  every reconnect (notifications sent while away are lost) and every ``backstop``
  seconds (the polling backstop: a lost notification costs no more), the stamps of all
  stored expansions are read (no instances) and the links whose stamp differs loaded.

Cost: a change costs every process one indexed read of a few stamps, and the process
that did not store it one load of that link; the backstop costs one read of N stamps.
Nothing per change reads every link.

What it must not do: decide who writes a PBX (the leases do), or treat a notification as
data (the store is the truth; a lost one costs the polling backstop).

Start reading at ``LinkShare``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from pbxcal.cluster.notify import LinkListener, LinkNotifier
from pbxcal.cluster.ownership import rendezvous_owner
from pbxcal.errors import StoreError
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Store

log = logging.getLogger(__name__)


class LinkShare:
    """See the module docstring. ``run()`` until cancelled, then ``close()``."""

    def __init__(
        self,
        conninfo: str,
        store: Store,
        sync: CalendarSync,
        member_id: str,
        *,
        backstop: float = 300.0,
    ) -> None:
        self.store = store
        self.sync = sync
        self.member_id = member_id
        self.backstop = backstop
        #: link id -> ``computed_at`` of the stored expansion last taken from the store
        self._taken: dict[int, datetime] = {}
        self._members: list[str] = []
        self.notifier = LinkNotifier(conninfo)
        self.listener = LinkListener(conninfo, self.link_changed, self.resync)
        self._pending: set[int] = set()
        self._everything = False
        self._reloader: asyncio.Task[None] | None = None
        sync.is_mine = self.is_mine
        sync.on_link_saved = self.link_saved
        sync.on_links_added = self.links_added
        sync.member_id = member_id

    def is_mine(self, link_id: int) -> bool:
        """Whether this process reads ``link_id`` on schedule (nobody before the first
        lease round: membership is not known yet)."""
        return rendezvous_owner(str(link_id), self._members) == self.member_id

    def members_changed(self, members: list[str]) -> None:
        """The lease keeper saw another set of live members."""
        self._members = list(members)
        self.sync.owners_changed()
        if self.sync.on_sources_changed is not None:  # push channels follow their links
            self.sync.on_sources_changed()

    async def link_saved(self, link_id: int) -> None:
        stamp = self.sync.stored_stamp(link_id)
        if stamp is not None:  # our own change: its notification loads nothing here
            self._taken[link_id] = stamp
        try:
            await self.notifier.link_changed(link_id)
        except StoreError as exc:  # the others' polling backstop covers it
            log.warning("cluster: could not tell the other processes of link %d: %s",
                        link_id, exc)  # fmt: skip

    def link_changed(self, link_id: int) -> None:
        self._pending.add(link_id)
        self._start_reload()

    def links_added(self, link_ids: list[int]) -> None:
        self._pending.update(link_ids)
        self._start_reload()

    def resync(self) -> None:
        self._everything = True
        self._start_reload()

    def _start_reload(self) -> None:
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload(), name="link-reload")

    async def _reload(self) -> None:
        while self._pending or self._everything:
            wanted, self._pending = self._pending, set()
            everything, self._everything = self._everything, False
            read_since = time.monotonic()
            try:
                stamps = await asyncio.to_thread(
                    self.store.expansion_computed_at, None if everything else wanted
                )
                changed = [
                    i
                    for i, stamp in stamps.items()
                    if self._taken.get(i) != stamp and self.sync.follows(i)
                ]
                if not changed:
                    continue
                expansions, states = await asyncio.gather(
                    asyncio.to_thread(self.store.load_expansions, changed),
                    asyncio.to_thread(self.store.load_sync_states, changed),
                )
            except StoreError as exc:
                log.warning("cluster: cannot re-read changed links: %s", exc)
                return  # the polling backstop and the next notification cover it
            settled = self.sync.adopt_stored(expansions, states, read_since)
            self._taken.update((i, expansions[i].computed_at) for i in settled)
            log.debug("cluster: %d link(s) re-read after a change elsewhere", len(settled))

    async def reloaded(self) -> None:
        """Wait until the re-reads asked for so far are done (a test's condition)."""
        while self._reloader is not None and not self._reloader.done():
            await asyncio.shield(self._reloader)

    async def run(self) -> None:
        listening = asyncio.create_task(self.listener.run(), name="link-listener")
        try:
            await self.listener.listening.wait()
            self.resync()  # what was stored between the start-up restore and LISTEN
            while not listening.done():
                await asyncio.wait([listening], timeout=self.backstop)  # the backstop period
                self.resync()
            await listening  # re-raises what ended it
        finally:
            listening.cancel()

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
        try:
            await self.notifier.close()
        except Exception:  # closing on shutdown: nothing is left to do with it
            log.debug("cluster: notifier not closed cleanly", exc_info=True)
