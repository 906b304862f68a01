"""Push notifications: Google channels and Microsoft Graph subscriptions, and their webhooks.

With ``[http] public_url`` set, ``GooglePush`` keeps one ``events.watch`` channel per
Google link whose calendar has been read once: it opens the channel, replaces it before
it expires (a new channel first, then ``channels.stop`` of the old one: Google has no
renewal) and stops it when the link goes. The webhook (``POST /webhooks/google``) checks
each notification against the channel book (channel id, resource id, the per-channel
secret token, message numbers: see ``pbxcal.calendars.google.push``), answers at once,
counts refusals in ``pbxcal_webhook_refused_total{provider, reason}`` and asks the sync
to read that one link now. Polling keeps running as the backstop.

``GraphPush`` does the same for Microsoft 365 links: a subscription per link
(``POST /webhooks/graph`` answers Graph's validation handshake with the token, then
checks ``clientState`` per notification), renewed before it expires and on
``reauthorizationRequired``, made again on ``subscriptionRemoved``; ``changed`` and
``missed`` read that link now. These calls use the link's token too: a refresh token
MSAL rotated meanwhile is stored at once (``CalendarSync.save_updated_secret``).

Must not do: sync inside the request, log a channel token or client state, or let a
failing provider call stop the loop. Start reading at ``GooglePush.handle`` and
``GooglePush.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from aiohttp import web

from pbxcal.calendars.google.push import (
    Accepted,
    ChannelBook,
    GoogleChannel,
    open_channel,
    replace_channel,
)
from pbxcal.calendars.google.source import GoogleCalendarSource
from pbxcal.calendars.graph import GraphCalendarSource, GraphSubscription
from pbxcal.calendars.graph import push as graph_push
from pbxcal.errors import CalendarError
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.sync import CalendarSync

log = logging.getLogger(__name__)

#: Seconds between looks at which channels to open, replace or stop.
CHANNEL_CHECK_INTERVAL = 30.0
#: The webhook paths under ``public_url`` and on the listener.
GOOGLE_WEBHOOK = "/webhooks/google"
GRAPH_WEBHOOK = "/webhooks/graph"
#: How long a Graph subscription is asked to live (Graph's maximum for events is ~3-7 days).
GRAPH_LIFETIME = timedelta(days=2)


class _Keeper:
    """What both kinds of push share: a loop that opens, renews and stops the links'
    channels or subscriptions every ``CHANNEL_CHECK_INTERVAL`` and whenever the set of
    built sources changed (``links_changed``), and ``close`` on shutdown."""

    def __init__(self, sync: CalendarSync, metrics: Metrics, clock: Clock) -> None:
        self.sync = sync
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()

    def links_changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self._tend(self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CHANNEL_CHECK_INTERVAL)

    async def close(self) -> None:
        for link_id in self._live_links():
            await self._stop(link_id)

    async def _tend(self, now: datetime) -> None:
        raise NotImplementedError

    async def _stop(self, link_id: int) -> None:
        raise NotImplementedError

    def _live_links(self) -> list[int]:
        raise NotImplementedError


class GooglePush(_Keeper):
    """Channels for Google links and their webhook. See the module docstring."""

    def __init__(self, sync: CalendarSync, public_url: str, metrics: Metrics, clock: Clock) -> None:
        super().__init__(sync, metrics, clock)
        self.address = public_url.rstrip("/") + GOOGLE_WEBHOOK
        self.book: ChannelBook[int] = ChannelBook()
        self._channels: dict[int, tuple[GoogleCalendarSource, GoogleChannel]] = {}

    def _live_links(self) -> list[int]:
        return list(self._channels)

    async def webhook(self, request: web.Request) -> web.Response:
        return web.Response(status=self.handle(request.headers))

    def handle(self, headers: Mapping[str, str]) -> int:
        """One notification: the HTTP status to answer (at once; the sync runs later)."""
        verdict = self.book.check(headers)
        if isinstance(verdict, Accepted):
            self.metrics.webhook_notifications.labels("google").inc()
            self.sync.sync_soon(verdict.link)
            return 200
        self.metrics.webhook_refused.labels("google", verdict.reason).inc()
        log.info("refused a Google notification: %s", verdict.reason)
        return 403 if verdict.reason != "replayed" else 200

    async def _tend(self, now: datetime) -> None:
        sources = {
            link_id: source
            for link_id, source in self.sync.built_sources()
            if isinstance(source, GoogleCalendarSource)
        }
        for link_id in set(self._channels) - set(sources):  # unlinked, or source rebuilt
            await self._stop(link_id)
        for link_id, source in sources.items():
            current = self._channels.get(link_id)
            if current is not None and current[0] is not source:
                await self._stop(link_id)
                current = None
            try:
                if current is None:
                    channel = await open_channel(source, self.book, link_id, self.address)
                    log.info("link %d: Google push channel open", link_id)
                elif current[1].needs_renewal(now):
                    channel = await replace_channel(
                        source, self.book, current[1], link_id, self.address
                    )
                    log.info("link %d: Google push channel replaced before it expires", link_id)
                else:
                    continue
            except CalendarError as exc:  # polling covers the link meanwhile
                log.warning("link %d: no Google push channel (%s); polling only", link_id, exc)
                continue
            self._channels[link_id] = (source, channel)

    async def _stop(self, link_id: int) -> None:
        source, channel = self._channels.pop(link_id)
        self.book.remove(channel.id)
        try:
            await source.stop_channel(channel)
        except CalendarError as exc:  # it expires on its own
            log.info("link %d: stopping its Google channel failed (%s)", link_id, exc)



class GraphPush(_Keeper):
    """Subscriptions for Microsoft 365 links and their webhook. See the module docstring."""

    def __init__(self, sync: CalendarSync, public_url: str, metrics: Metrics, clock: Clock) -> None:
        super().__init__(sync, metrics, clock)
        self.address = public_url.rstrip("/") + GRAPH_WEBHOOK
        self.book: graph_push.SubscriptionBook[int] = graph_push.SubscriptionBook()
        self._subscriptions: dict[int, tuple[GraphCalendarSource, GraphSubscription]] = {}
        self._renew: set[int] = set()

    def _live_links(self) -> list[int]:
        return list(self._subscriptions)

    async def webhook(self, request: web.Request) -> web.Response:
        """Graph's validation handshake, or notifications: answered at once."""
        token = graph_push.validation_token(request.query)
        if token is not None:
            return web.Response(text=token, content_type="text/plain")
        for verdict in self.book.check(await request.read()):
            if isinstance(verdict, graph_push.Refused):
                self.metrics.webhook_refused.labels("graph", verdict.reason).inc()
                continue
            self.metrics.webhook_notifications.labels("graph").inc()
            if verdict.kind in ("reauthorizationRequired", "subscriptionRemoved"):
                self._renew.add(verdict.link)  # renewed, or made again if gone
                self._wake.set()
            if verdict.kind != "reauthorizationRequired":
                self.sync.sync_soon(verdict.link)
        return web.Response(status=202)

    async def _tend(self, now: datetime) -> None:
        sources = {
            link_id: source
            for link_id, source in self.sync.built_sources()
            if isinstance(source, GraphCalendarSource)
        }
        for link_id in set(self._subscriptions) - set(sources):
            await self._stop(link_id)
        for link_id, source in sources.items():
            current = self._subscriptions.get(link_id)
            if current is not None and current[0] is not source:
                await self._stop(link_id)
                current = None
            renew = link_id in self._renew
            self._renew.discard(link_id)
            if current is not None and not renew and not current[1].needs_renewal(now):
                continue
            subscription: GraphSubscription | None = None
            try:
                if current is not None:
                    try:
                        subscription = await source.renew(current[1], now + GRAPH_LIFETIME)
                        log.info("link %d: Graph subscription renewed", link_id)
                    except CalendarError:  # gone (subscriptionRemoved): make a new one
                        self.book.remove(current[1].id)
                if subscription is None:
                    subscription = await source.subscribe(
                        self.address, self.address, now + GRAPH_LIFETIME
                    )
                    log.info("link %d: Graph change notifications on", link_id)
            except CalendarError as exc:  # polling covers the link meanwhile
                log.warning("link %d: no Graph subscription (%s); polling only", link_id, exc)
                await self.sync.save_updated_secret(link_id)  # the token may have rotated
                continue
            self.book.add(subscription, link_id)
            self._subscriptions[link_id] = (source, subscription)
            await self.sync.save_updated_secret(link_id)  # the token may have rotated

    async def _stop(self, link_id: int) -> None:
        source, subscription = self._subscriptions.pop(link_id)
        self.book.remove(subscription.id)
        try:
            await source.unsubscribe(subscription)
        except CalendarError as exc:  # it expires on its own
            log.info("link %d: deleting its Graph subscription failed (%s)", link_id, exc)

