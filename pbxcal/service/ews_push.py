"""Push for on-premises Exchange links: EWS streaming (or pull) subscriptions.

``EwsPush`` keeps one ``_Watch`` per EWS link whose source has been built (read once),
looking at ``CalendarSync.built_sources()`` every ``CHANNEL_CHECK_INTERVAL`` and whenever
``links_changed()`` is called (a link's source built, a link gone). No public URL is
needed: the connection goes out from pbxcal, so EwsPush runs whenever there are EWS links.

A ``_Watch`` is one dedicated daemon thread per link (never the shared ``BlockingCalls``
pool, which must stay free for syncs), on its own exchangelib connections
(``EwsCalendarSource.notifications``). It subscribes (streaming; pull where the server has
no streaming), then holds one GetStreamingEvents connection of ``STREAM_MINUTES`` after
another; each notification with calendar events is counted in
``pbxcal_webhook_notifications_total{provider="ews"}`` and asks the sync to read that
link (``sync_soon``, handed to the event loop with ``call_soon_threadsafe``). A pull
subscription is asked every ``PULL_INTERVAL`` seconds. After every (re)subscription the
link is read once too (changes may have happened unseen). A subscription the server
forgot is made again; a refused or failing connection is retried with exponential
back-off up to ``MAX_BACK_OFF``; after ErrorServerBusy the mailbox's BackOffMilliseconds
holds the stream and the syncs alike (``held_for``). A server with neither streaming nor
pull leaves the link to polling (the sync interval, which stays the backstop anyway). An
autodiscover link is watched once its first read has found the EWS URL (looked for every
``PENDING_RECHECK`` seconds until then), and again from the start when it moved.

Unlink or a rebuilt source stops the watch (its stream is cut at once; the thread
unsubscribes on its way out); ``close()`` stops them all.

Must not do: block the event loop, touch asyncio objects from the watch thread other than
through ``call_soon_threadsafe``, or let a provider failure end the thread. Start reading
at ``_Watch.run``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from pbxcal.calendars.ews import EwsCalendarSource
from pbxcal.calendars.ews.connection import held_for
from pbxcal.calendars.ews.push import EwsNotifications, EwsSubscription, SubscriptionGone
from pbxcal.errors import CalendarError, CalendarRateLimited
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.service.push import PushKeeper
from pbxcal.service.sync import CalendarSync

log = logging.getLogger(__name__)

#: Minutes one GetStreamingEvents connection lasts (Exchange allows 1 to 30).
STREAM_MINUTES = 10
#: Seconds between GetEvents of a pull subscription.
PULL_INTERVAL = 15.0
#: The first and the longest wait after a failed subscription or connection.
FIRST_BACK_OFF = 1.0
MAX_BACK_OFF = 600.0
#: Seconds to the next look while an autodiscover link's EWS URL is not known yet.
PENDING_RECHECK = 1.0
#: Seconds ``close`` waits for the stream threads to unsubscribe and end.
CLOSE_WAIT = 4.0
#: A stream that ends sooner than this counts as a failure (no tight reconnect loop).
SHORT_STREAM = 1.0


class EwsPush(PushKeeper):
    """Streaming subscriptions for Exchange links. See the module docstring."""

    def __init__(
        self,
        sync: CalendarSync,
        metrics: Metrics,
        clock: Clock,
        *,
        minutes: int = STREAM_MINUTES,
        pull_interval: float = PULL_INTERVAL,
    ) -> None:
        super().__init__(sync, metrics, clock)
        self.minutes = minutes
        self.pull_interval = pull_interval
        self._watches: dict[int, _Watch] = {}

    def _live_links(self) -> list[int]:
        return list(self._watches)

    def watching(self, link_id: int) -> EwsSubscription | None:
        """The link's current subscription (None: none yet, or not watched)."""
        watch = self._watches.get(link_id)
        return watch.subscription if watch is not None else None

    async def _tend(self, now: datetime) -> None:
        loop = asyncio.get_running_loop()
        sources = {
            link_id: source
            for link_id, source in self.sync.built_sources("ews")
            if isinstance(source, EwsCalendarSource)
        }
        for link_id in set(self._watches) - set(sources):  # unlinked
            await self._stop(link_id)
        pending = False
        for link_id, source in sources.items():
            current = self._watches.get(link_id)
            if (
                current is not None
                and current.source is source
                and current.endpoint == source.settings.service_endpoint  # not moved
                and current.is_alive()
            ):
                continue
            if current is not None:  # source rebuilt (settings or secret changed)
                await self._stop(link_id)
            notifications = source.notifications()
            if notifications is None:  # autodiscover has not found the URL yet
                pending = True
                continue

            def changed(count: int, link_id: int = link_id) -> None:
                loop.call_soon_threadsafe(self._changed, link_id, count)

            watch = _Watch(link_id, source, notifications, changed, self)
            self._watches[link_id] = watch
            watch.start()
        if pending:  # look again soon: the link's first read is finding the URL
            loop.call_later(PENDING_RECHECK, self._wake.set)

    def _changed(self, link_id: int, count: int) -> None:
        if link_id not in self._watches:
            return  # stopped meanwhile
        if count:
            self.metrics.webhook_notifications.labels("ews").inc()
        self.sync.sync_soon(link_id)

    async def _stop(self, link_id: int) -> None:
        self._watches.pop(link_id).stop()

    async def close(self) -> None:
        """Stop every stream and wait (bounded) until their threads have unsubscribed, so
        nothing of them runs on after the service stopped."""
        watches = list(self._watches.values())
        await super().close()
        deadline = time.monotonic() + CLOSE_WAIT
        for watch in watches:
            await asyncio.to_thread(watch.join, max(0.0, deadline - time.monotonic()))


class _Watch:
    """One link's subscription in its own thread (see the module docstring)."""

    def __init__(
        self,
        link_id: int,
        source: EwsCalendarSource,
        notifications: EwsNotifications,
        changed: Callable[[int], None],
        push: EwsPush,
    ) -> None:
        self.link_id = link_id
        self.source = source
        self.subscription: EwsSubscription | None = None
        self.endpoint = notifications.settings.service_endpoint
        self._notifications = notifications
        self._changed = changed
        self._push = push
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self.run, name=f"ews-push-{link_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        """Stop (no waiting): the stream is cut now, the thread unsubscribes and ends."""
        self._stopped.set()
        self._notifications.interrupt()

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopped first; True when stopped."""
        return self._stopped.wait(seconds)

    def run(self) -> None:
        back_off = FIRST_BACK_OFF
        refused_logged = False
        while not self._stopped.is_set():
            held = held_for(self._notifications.settings, "notifications")
            if held > 0 and self._wait(held):
                break
            started = time.monotonic()
            try:
                if self.subscription is None:
                    self.subscription = self._notifications.subscribe()
                    log.info("link %d: Exchange %s notifications on", self.link_id,
                             self.subscription.kind)  # fmt: skip
                    refused_logged = False
                    self._changed(0)  # read once: what changed while not subscribed
                if self.subscription.kind == "pull":
                    self.subscription = self._notifications.listen(
                        self.subscription, self._changed, minutes=self._push.minutes
                    )
                    back_off = FIRST_BACK_OFF
                    self._wait(self._push.pull_interval)
                    continue
                self._notifications.listen(
                    self.subscription, self._changed, minutes=self._push.minutes
                )
                if time.monotonic() - started >= SHORT_STREAM:
                    back_off = FIRST_BACK_OFF
                    continue  # Closed at the connection timeout: the next connection
                log.info("link %d: the Exchange stream ended at once", self.link_id)
            except SubscriptionGone:
                log.info("link %d: the Exchange subscription is gone; subscribing again",
                         self.link_id)  # fmt: skip
                self.subscription = None
            except CalendarRateLimited as exc:
                log.info("link %d: Exchange notifications wait %.0fs (%s)", self.link_id,
                         exc.retry_after or back_off, exc)  # fmt: skip
                if self._wait(exc.retry_after or back_off):
                    break
                continue
            except CalendarError as exc:
                if self._stopped.is_set():
                    break
                if self.subscription is None and not refused_logged:
                    log.warning("link %d: no Exchange notifications (%s); polling only "
                                "until they work", self.link_id, exc)  # fmt: skip
                    refused_logged = True
                else:
                    log.info("link %d: Exchange notifications failed (%s); again in %.0fs",
                             self.link_id, exc, back_off)  # fmt: skip
            except Exception:  # a bug must not end the thread quietly
                log.exception("link %d: Exchange notifications failed", self.link_id)
            if self._wait(back_off):
                break
            back_off = min(back_off * 2, MAX_BACK_OFF)
        self._unsubscribe()

    def _unsubscribe(self) -> None:
        if self.subscription is None:
            return
        try:
            self._notifications.unsubscribe(self.subscription)
        except CalendarError as exc:  # it expires on its own
            log.info("link %d: unsubscribing failed (%s)", self.link_id, exc)
        except Exception:
            log.exception("link %d: unsubscribing failed", self.link_id)
        self.subscription = None
