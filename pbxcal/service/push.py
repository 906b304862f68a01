"""Push notifications: Google channels and Microsoft Graph subscriptions, and their webhooks.

With ``[http] public_url`` set, ``GooglePush`` keeps one ``events.watch`` channel per
Google link whose calendar has been read once: it opens the channel, replaces it before
it expires (a new channel first, then ``channels.stop`` of the old one: Google has no
renewal) and stops it when the link goes. The webhook (``POST /webhooks/google``) checks
each notification (channel id, resource id, the per-channel secret token, message
numbers: see ``pbxcal.calendars.google.push``), answers at once, counts refusals in
``pbxcal_webhook_refused_total{provider, reason}`` and asks the sync to read that one
link now. Polling keeps running as the backstop.

``GraphPush`` does the same for Microsoft 365 links: a subscription per link
(``POST /webhooks/graph`` answers Graph's validation handshake with the token, then
checks ``clientState`` per notification), renewed before it expires and on
``reauthorizationRequired``, made again on ``subscriptionRemoved``; ``changed`` and
``missed`` read that link now. These calls use the link's token too: a refresh token
MSAL rotated meanwhile is stored at once (``CalendarSync.save_updated_secret``).

**Several processes** (one PostgreSQL, one load balancer in front of the webhooks).
Every channel has a row in the store (``pbxcal.store.push_channels``: its id, link,
resource id, expiry, a digest of its secret, and its owner), written before the provider
is asked. So the webhook of *any* process can check a notification: a channel it does
not know (or learned more than ``CACHE_SECONDS`` ago) is looked up in the store first,
and an accepted notification reads the link right there (``sync_soon``; the link's
scheduled reads may belong to another process: one more read is harmless, the store's
transaction keeps the result right and the NOTIFY brings it to the PBX's owner). Only
the process that reads the link on schedule (``CalendarSync.is_mine``: the rendezvous
owner) opens, renews, replaces and stops its channel; when the owner changes, the new
owner takes the stored channel over (Google: replaced; Graph: renewed, its client state
known only as a digest) and the old one forgets it without stopping it. A Graph
lifecycle event reaching another process marks the row due (``expire_push_channel``);
that write's NOTIFY wakes the owner, which renews at once. The keepers read stored rows
only when they changed (``pbxcal.service.push_keeper``: the NOTIFY, the cost, the
backstop), not on a timer. Replays: a Google message number must be above
the highest seen by any process (``take_push_message``, one conditional ``UPDATE``); a
process's own high-water mark refuses a replay without a store round trip. Per process
only: the cache of learned channels (a stopped channel may still be accepted by another
process for up to ``CACHE_SECONDS``: one extra read), the refusal counters. Graph's
notifications carry no sequence number, so Graph has no replay check anywhere. With
SQLite (one process) the store rows are written too but messages are numbered in
memory only, as before, and channels are stopped on shutdown (in a group they are left
for the link's next owner to take over).

Must not do: sync inside the request, log a channel token or client state, or let a
failing provider or store call stop the loop. Start reading at ``GooglePush.handle`` and
``GooglePush._tend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta

from aiohttp import web

from pbxcal.calendars.google.push import (
    RENEW_BEFORE,
    Accepted,
    ChannelBook,
    GoogleChannel,
    Refused,
    StoredChannel,
    open_channel,
    replace_channel,
    token_digest,
)
from pbxcal.calendars.google.source import GoogleCalendarSource
from pbxcal.calendars.graph import GraphCalendarSource, GraphSubscription
from pbxcal.calendars.graph import push as graph_push
from pbxcal.errors import CalendarError, StoreError
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.push_keeper import (
    CHANNEL_CHECK_INTERVAL,
    PushKeeper,
    StoredPushKeeper,
)
from pbxcal.service.sync import CalendarSync
from pbxcal.store.push_channels import PushChannelRecord

log = logging.getLogger(__name__)

#: Seconds a channel learned from the store is trusted before it is looked up again.
CACHE_SECONDS = 30.0
#: The webhook paths under ``public_url`` and on the listener.
GOOGLE_WEBHOOK = "/webhooks/google"
GRAPH_WEBHOOK = "/webhooks/graph"
#: How long a Graph subscription is asked to live (Graph's maximum for events is ~3-7 days).
GRAPH_LIFETIME = timedelta(days=2)
#: How long before it expires a Graph subscription is renewed.
GRAPH_RENEW_BEFORE = timedelta(hours=12)
#: A Graph row another process claimed while its view of the members lagged is claimed
#: back by the link's owner at most this often (two views differ for a round); a claim
#: held back is made when the interval is over, so the owner has the last word.
CLAIM_INTERVAL = timedelta(seconds=2)

__all__ = [
    "CACHE_SECONDS", "CHANNEL_CHECK_INTERVAL", "GOOGLE_WEBHOOK", "GRAPH_WEBHOOK",
    "GooglePush", "GraphPush", "PushKeeper",
]  # fmt: skip


class GooglePush(StoredPushKeeper):
    """Channels for Google links and their webhook. See the module docstring."""

    provider = "google"

    def __init__(self, sync: CalendarSync, public_url: str, metrics: Metrics, clock: Clock) -> None:
        super().__init__(sync, metrics, clock)
        self.address = public_url.rstrip("/") + GOOGLE_WEBHOOK
        self.book: ChannelBook[int] = ChannelBook()
        self._channels: dict[int, tuple[GoogleCalendarSource, GoogleChannel]] = {}

    def _live_links(self) -> list[int]:
        return list(self._channels)

    async def webhook(self, request: web.Request) -> web.Response:
        return web.Response(status=await self.handle(request.headers))

    async def handle(self, headers: Mapping[str, str]) -> int:
        """One notification: the HTTP status to answer (at once; the sync runs later)."""
        lowered = {name.lower(): value for name, value in headers.items()}
        channel_id = lowered.get("x-goog-channel-id", "")
        if channel_id and not self.book.fresh(channel_id, time.monotonic(), CACHE_SECONDS):
            await self._look_up(channel_id)
        verdict = self.book.check(lowered)
        if isinstance(verdict, Accepted) and self.shared:
            verdict = await self._first_anywhere(verdict)
        if isinstance(verdict, Accepted):
            self.metrics.webhook_notifications.labels("google").inc()
            self.sync.sync_soon(verdict.link)
            return 200
        self.metrics.webhook_refused.labels("google", verdict.reason).inc()
        log.info("refused a Google notification: %s", verdict.reason)
        return 403 if verdict.reason != "replayed" else 200

    async def _look_up(self, channel_id: str) -> None:
        """Learn a channel another process opened (or forget one that is gone)."""
        try:
            record = await asyncio.to_thread(self.store.push_channel, "google", channel_id)
        except StoreError as exc:  # what is cached stays: polling covers the rest
            log.warning("Google webhook: cannot look the channel up: %s", exc)
            return
        if record is None:
            self.book.remove(channel_id)
        else:
            stored = StoredChannel(record.channel_id, record.resource_id, record.token_digest)
            self.book.learn(stored, record.link_id, time.monotonic())

    async def _first_anywhere(self, verdict: Accepted[int]) -> Accepted[int] | Refused:
        """Refuse a message number some process has seen already."""
        note = verdict.notification
        try:
            taken = await asyncio.to_thread(
                self.store.take_push_message, "google", note.channel_id, note.message_number
            )
        except StoreError as exc:  # this process's own check passed: accept
            log.warning("Google webhook: cannot record the message number: %s", exc)
            return verdict
        if taken is False:
            self.book.refused["replayed"] += 1
            return Refused("replayed")
        return verdict

    def _registrar(self, link_id: int) -> Callable[[str, str], Awaitable[None]]:
        """Stores a channel before ``events.watch``, so every webhook knows it."""

        async def register(channel_id: str, token: str) -> None:
            record = PushChannelRecord(
                "google", channel_id, link_id, token_digest(token), "", None, self.owner
            )
            try:
                await self._save(record)
            except StoreError as exc:
                raise CalendarError(f"cannot store the channel: {exc}") from exc

        return register

    async def _opened(self, link_id: int, channel: GoogleChannel) -> None:
        record = PushChannelRecord(
            "google", channel.id, link_id, token_digest(channel.token), channel.resource_id,
            channel.expires_at, self.owner,
        )  # fmt: skip
        try:
            await self._save(record)
        except StoreError as exc:  # the pending row accepts any resource id meanwhile
            log.warning("link %d: cannot store its Google channel's expiry: %s", link_id, exc)

    def _renewal_times(self) -> Iterable[datetime]:
        return (channel.expires_at - RENEW_BEFORE for _, channel in self._channels.values())

    async def _tend(self, now: datetime) -> None:
        built = {
            link_id: source
            for link_id, source in self.sync.built_sources(self.provider)
            if isinstance(source, GoogleCalendarSource)
        }
        for link_id in set(self._channels) - set(built):  # unlinked, or source rebuilt
            await self._stop(link_id)
        for link_id in [i for i in self._channels if not self._mine(i)]:
            self._release(link_id)
        built = {link_id: source for link_id, source in built.items() if self._mine(link_id)}
        stored = await self._rows_for(set(built), now)
        if stored is None:
            return  # without the store no channel can be shared: try again soon
        for link_id, source in built.items():
            await self._tend_link(link_id, source, stored[link_id], now)

    def _release(self, link_id: int) -> None:
        """Another process reads this link now: it takes the channel over."""
        _, channel = self._channels.pop(link_id)
        self.book.remove(channel.id)  # still accepted through the store while it lives
        log.info("link %d: its Google channel is left to the process that reads it now", link_id)

    async def _tend_link(
        self, link_id: int, source: GoogleCalendarSource, stored: list[PushChannelRecord],
        now: datetime,
    ) -> None:
        current = self._channels.get(link_id)
        if current is not None and current[0] is not source:
            await self._stop(link_id)
            current = None
        if current is not None and current[1].id not in {r.channel_id for r in stored}:
            self._release(link_id)  # another process took it over meanwhile
            current = None
        tended_elsewhere = any(r.owner != self.owner for r in stored)
        if current is None and tended_elsewhere and link_id not in self.started:
            # Another process tends it, and this one did not just start to: while two
            # processes' views of the members differ (a round), taking it back at once
            # would make them replace each other's channels on every notification.
            # Taken over when the link becomes this process's again, or at the backstop.
            return
        others = [r for r in stored if current is None or r.channel_id != current[1].id]
        register = self._registrar(link_id)
        try:
            if current is None:
                channel = await open_channel(
                    source, self.book, link_id, self.address, before_watch=register
                )
                taken = " (taken over)" if others else ""
                log.info("link %d: Google push channel open%s", link_id, taken)
            elif current[1].needs_renewal(now):
                channel = await replace_channel(
                    source, self.book, current[1], link_id, self.address, before_watch=register
                )
                await self._forget_stored(link_id, current[1].id)
                log.info("link %d: Google push channel replaced before it expires", link_id)
            else:
                channel = current[1]
        except CalendarError as exc:  # polling covers the link meanwhile
            log.warning("link %d: no Google push channel (%s); polling only", link_id, exc)
            self.retry.add(link_id)
            return
        opened = current is None or channel is not current[1]
        if opened:
            await self._opened(link_id, channel)
            self._channels[link_id] = (source, channel)
        for record in others:  # an earlier owner's: stopped once ours is open
            if opened or record.owner == self.owner or link_id in self.started:
                await self._stop_stored(source, record, now)
            # else another process opened it since: it thinks the link is its own (the
            # members' views differ for a round); whoever is wrong lets go, and a channel
            # left over is stopped at the backstop

    async def _stop_stored(
        self, source: GoogleCalendarSource, record: PushChannelRecord, now: datetime
    ) -> None:
        self.book.remove(record.channel_id)
        if record.resource_id:  # a pending row's channel may never have been made
            old = GoogleChannel(
                record.channel_id, record.resource_id, "", record.expires_at or now,
                source.calendar_id,
            )  # fmt: skip
            try:
                await source.stop_channel(old)
            except CalendarError as exc:  # it expires on its own
                log.info("link %d: stopping an earlier Google channel failed (%s)",
                         record.link_id, exc)  # fmt: skip
        await self._forget_stored(record.link_id, record.channel_id)

    async def _stop(self, link_id: int) -> None:
        source, channel = self._channels.pop(link_id)
        self.book.remove(channel.id)
        try:
            await source.stop_channel(channel)
        except CalendarError as exc:  # it expires on its own
            log.info("link %d: stopping its Google channel failed (%s)", link_id, exc)
        await self._forget_stored(link_id, channel.id)


class GraphPush(StoredPushKeeper):
    """Subscriptions for Microsoft 365 links and their webhook. See the module docstring."""

    provider = "graph"

    def __init__(self, sync: CalendarSync, public_url: str, metrics: Metrics, clock: Clock) -> None:
        super().__init__(sync, metrics, clock)
        self.address = public_url.rstrip("/") + GRAPH_WEBHOOK
        self.book: graph_push.SubscriptionBook[int] = graph_push.SubscriptionBook()
        #: link id -> (source, subscription, digest of its client state)
        self._subscriptions: dict[int, tuple[GraphCalendarSource, GraphSubscription, bytes]] = {}
        self._renew: set[int] = set()
        self._claimed: dict[int, datetime] = {}  # link id -> when its row was last claimed
        self._recheck: dict[int, datetime] = {}  # link id -> when to look at its row again

    def _live_links(self) -> list[int]:
        return list(self._subscriptions)

    async def webhook(self, request: web.Request) -> web.Response:
        """Graph's validation handshake, or notifications: answered at once."""
        token = graph_push.validation_token(request.query)
        if token is not None:
            return web.Response(text=token, content_type="text/plain")
        body = await request.read()
        for subscription_id in self.book.subscription_ids(body):
            if not self.book.fresh(subscription_id, time.monotonic(), CACHE_SECONDS):
                await self._look_up(subscription_id)
        for verdict in self.book.check(body):
            if isinstance(verdict, graph_push.Refused):
                self.metrics.webhook_refused.labels("graph", verdict.reason).inc()
                continue
            self.metrics.webhook_notifications.labels("graph").inc()
            if verdict.kind in ("reauthorizationRequired", "subscriptionRemoved"):
                await self._renew_soon(verdict.link, verdict.subscription_id)
            if verdict.kind != "reauthorizationRequired":
                self.sync.sync_soon(verdict.link)
        return web.Response(status=202)

    async def _look_up(self, subscription_id: str) -> None:
        try:
            record = await asyncio.to_thread(self.store.push_channel, "graph", subscription_id)
        except StoreError as exc:
            log.warning("Graph webhook: cannot look the subscription up: %s", exc)
            return
        if record is None:
            self.book.remove(subscription_id)
        else:
            self.book.learn(record.channel_id, record.token_digest, record.link_id,
                            time.monotonic())  # fmt: skip

    async def _renew_soon(self, link_id: int, subscription_id: str) -> None:
        """Renewed (or made again if gone) by whoever tends the link: here, or the
        owner, told through the store (the row is due at once)."""
        if self._mine(link_id):
            self._renew.add(link_id)
            self._wake.set()
            return
        try:
            await asyncio.to_thread(self.store.expire_push_channel, "graph", subscription_id)
        except StoreError as exc:  # it is renewed before it expires anyway
            log.warning("link %d: cannot pass a Graph lifecycle event on: %s", link_id, exc)

    def _renewal_times(self) -> Iterable[datetime]:
        renewals = [
            sub.expires_at - GRAPH_RENEW_BEFORE for _, sub, _ in self._subscriptions.values()
        ]
        return renewals + list(self._recheck.values())

    def _due_rechecks(self, now: datetime) -> None:
        """Rows whose claim was held back (``_claim_back``) are read again now."""
        for link_id, due in list(self._recheck.items()):
            if due <= now:
                del self._recheck[link_id]
                self._stale.add(link_id)

    async def _tend(self, now: datetime) -> None:
        self._due_rechecks(now)
        built = {
            link_id: source
            for link_id, source in self.sync.built_sources(self.provider)
            if isinstance(source, GraphCalendarSource)
        }
        for link_id in set(self._subscriptions) - set(built):
            await self._stop(link_id)
        for link_id in [i for i in self._subscriptions if not self._mine(i)]:
            _, subscription, _ = self._subscriptions.pop(link_id)
            self.book.remove(subscription.id)  # the link's new owner renews it
        built = {link_id: source for link_id, source in built.items() if self._mine(link_id)}
        stored = await self._rows_for(set(built), now)
        if stored is None:
            return
        for link_id, source in built.items():
            await self._tend_link(link_id, source, stored[link_id], now)

    async def _tend_link(
        self, link_id: int, source: GraphCalendarSource, stored: list[PushChannelRecord],
        now: datetime,
    ) -> None:
        current = self._subscriptions.get(link_id)
        if current is not None and current[0] is not source:
            await self._stop(link_id)
            current = None
        rows = {r.channel_id: r for r in stored}
        renew = link_id in self._renew
        self._renew.discard(link_id)
        if current is not None:
            row = rows.get(current[1].id)
            if row is None:  # another process took it over meanwhile
                self._subscriptions.pop(link_id)
                self.book.remove(current[1].id)
                current = None
            elif row.expires_at is not None and row.expires_at <= now:
                renew = True  # a lifecycle event reached another process
            elif row.owner != self.owner and not renew:
                await self._claim_back(link_id, current, now)
        if current is None and stored:  # an earlier owner's: take the newest over
            if link_id not in self.started and any(r.owner != self.owner for r in stored):
                return  # tended elsewhere, and not just become ours (see push_keeper)
            newest = stored[-1]
            taken = GraphSubscription(
                newest.channel_id, newest.resource_id, "", newest.expires_at or now
            )
            current = (source, taken, newest.token_digest)
            renew = True
        if current is not None and not renew and not current[1].needs_renewal(
            now, GRAPH_RENEW_BEFORE
        ):
            return
        made = await self._renew_or_subscribe(link_id, source, current, now)
        if made is None:
            self.retry.add(link_id)
            return
        subscription, digest = made
        self.book.add(subscription, link_id, digest=digest)
        self._subscriptions[link_id] = (source, subscription, digest)
        try:
            await self._save(PushChannelRecord(
                "graph", subscription.id, link_id, digest, subscription.resource,
                subscription.expires_at, self.owner,
            ))  # fmt: skip
        except StoreError as exc:  # other processes refuse its notifications meanwhile
            log.warning("link %d: cannot store its Graph subscription: %s", link_id, exc)
        for row in stored:  # earlier or extra subscriptions of this link
            if row.channel_id != subscription.id:
                self.book.remove(row.channel_id)
                stale = GraphSubscription(row.channel_id, row.resource_id, "", now)
                with contextlib.suppress(CalendarError):  # it expires on its own
                    await source.unsubscribe(stale)
                await self._forget_stored(link_id, row.channel_id)

    async def _claim_back(
        self, link_id: int, current: tuple[GraphCalendarSource, GraphSubscription, bytes],
        now: datetime,
    ) -> None:
        """The row of our subscription names another process: it took the subscription
        over (by renewal, the same id) while its view of the members still made the link
        its own. The link is ours, so the row says so again; no call to Graph, and at
        most every ``CLAIM_INTERVAL`` while two views still differ (a claim held back is
        made once the interval is over: the owner has the last word)."""
        last = self._claimed.get(link_id)
        if last is not None and now - last < CLAIM_INTERVAL:
            self._recheck[link_id] = last + CLAIM_INTERVAL
            return
        self._claimed[link_id] = now
        _, subscription, digest = current
        try:
            await self._save(PushChannelRecord(
                "graph", subscription.id, link_id, digest, subscription.resource,
                subscription.expires_at, self.owner,
            ))  # fmt: skip
        except StoreError as exc:  # the next look tries again
            log.warning("link %d: cannot store its Graph subscription: %s", link_id, exc)

    async def _renew_or_subscribe(
        self, link_id: int, source: GraphCalendarSource,
        current: tuple[GraphCalendarSource, GraphSubscription, bytes] | None, now: datetime,
    ) -> tuple[GraphSubscription, bytes] | None:
        """Renew ``current`` (or subscribe anew when it is gone); None on failure."""
        result: tuple[GraphSubscription, bytes] | None = None
        try:
            if current is not None:
                try:
                    renewed = await source.renew(current[1], now + GRAPH_LIFETIME)
                    result = (renewed, current[2])
                    log.info("link %d: Graph subscription renewed", link_id)
                except CalendarError:  # gone (subscriptionRemoved): make a new one
                    self.book.remove(current[1].id)
            if result is None:
                made = await source.subscribe(self.address, self.address, now + GRAPH_LIFETIME)
                result = (made, token_digest(made.client_state))
                log.info("link %d: Graph change notifications on", link_id)
        except CalendarError as exc:  # polling covers the link meanwhile
            log.warning("link %d: no Graph subscription (%s); polling only", link_id, exc)
        await self.sync.save_updated_secret(link_id)  # the token may have rotated
        return result

    async def _stop(self, link_id: int) -> None:
        source, subscription, _ = self._subscriptions.pop(link_id)
        self.book.remove(subscription.id)
        try:
            await source.unsubscribe(subscription)
        except CalendarError as exc:  # it expires on its own
            log.info("link %d: deleting its Graph subscription failed (%s)", link_id, exc)
        await self._forget_stored(link_id, subscription.id)

