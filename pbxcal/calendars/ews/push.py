"""Notifications of one Exchange mailbox's calendar: EWS streaming subscriptions, pull
subscriptions where the server has no streaming (Exchange 2010 RTM).

``EwsNotifications`` is blocking, for one dedicated thread per link (never the shared
``BlockingCalls`` pool: a stream holds its thread for minutes). It uses an exchangelib
account of its own (``make_account(channel=...)``), so its long-lived connection is not
one of the syncs' sessions.

* ``subscribe()``: a streaming subscription on the calendar folder for the item events
  that change a calendar (Created, Modified, Deleted, Moved, Copied); when the server
  refuses streaming (a schema fault, an unknown request or server version), a pull
  subscription; ``EwsSubscription`` says which.
* ``listen(subscription, on_events)``: streaming — one GetStreamingEvents connection of
  ``minutes`` (exchangelib's ``connection_timeout``), calling ``on_events(n)`` for every
  notification carrying calendar events, returning when the server ends the connection
  (``ConnectionStatus`` ``Closed``) or it drops; pull — one GetEvents round from the
  subscription's watermark, returning the subscription with the new watermark.
* ``interrupt()`` (from any thread): ends the stream being read now (its socket is shut
  down) or about to be opened, so a stop does not wait for the connection timeout; the
  object is done after it.
* ``unsubscribe(subscription)``.

Errors are pbxcal's (``ews_errors``): ``CalendarRateLimited`` after ErrorServerBusy (the
back-off is also held for the mailbox's syncs, and ``held_for`` tells the caller how long
to wait before it connects again); ``SubscriptionGone`` (a ``CalendarError``) when the
server no longer knows the subscription or its watermark: subscribe again.

Must not do: run on the event loop, call back into asyncio itself (``on_events`` is the
caller's bridge), or retry on its own. Start reading at ``EwsNotifications.listen``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from exchangelib import errors as ews

from pbxcal.calendars.ews.connection import (
    EwsSettings,
    ews_errors,
    forget_stream,
    interrupt_stream,
    make_account,
    once_more_on_expiry,
)
from pbxcal.errors import CalendarError, CalendarUnavailable

__all__ = ["CALENDAR_EVENTS", "EwsNotifications", "EwsSubscription", "SubscriptionGone"]

T = TypeVar("T")

#: The events that change a calendar (what pbxcal subscribes to and counts).
CALENDAR_EVENTS = ("CreatedEvent", "ModifiedEvent", "DeletedEvent", "MovedEvent", "CopiedEvent")
_EVENT_CLASSES = frozenset(CALENDAR_EVENTS)
#: Minutes a pull subscription lives without a GetEvents.
PULL_TIMEOUT = 10

_NO_STREAMING = (
    ews.ErrorSchemaValidation,
    ews.ErrorInvalidServerVersion,
    ews.ErrorInvalidSubscriptionRequest,
    ews.ErrorInvalidRequest,
)
_GONE = (
    ews.ErrorSubscriptionNotFound,
    ews.ErrorExpiredSubscription,
    ews.ErrorInvalidSubscription,
    ews.ErrorInvalidWatermark,
    ews.ErrorInvalidPullSubscriptionId,
    ews.ErrorSubscriptionUnsubsribed,
)


class SubscriptionGone(CalendarError):
    """The server no longer knows the subscription (or its watermark): subscribe again."""


@dataclass(frozen=True)
class EwsSubscription:
    id: str
    kind: Literal["streaming", "pull"]
    watermark: str | None = None

    def __repr__(self) -> str:
        return f"EwsSubscription({self.kind}, …{self.id[-8:]})"


class EwsNotifications:
    """See the module docstring."""

    def __init__(self, settings: EwsSettings, password: str, *, timeout: float) -> None:
        self.settings = settings
        self._password = password
        self._timeout = timeout
        self._account: Any = None
        self._where = f"EWS {settings.mailbox} notifications"
        self._reader: int | None = None  # the thread reading a stream now
        self._stopped = False
        self._lock = threading.Lock()

    def _once_more(self, function: Callable[..., T], *args: Any) -> T:
        bearer = self.settings.auth == "oauth"
        return once_more_on_expiry(self._where, function, *args, bearer=bearer)

    def _folder(self) -> Any:
        if self._account is None:
            self._account = make_account(
                self.settings,
                self._password,
                timeout=self._timeout,
                channel=f"notifications:{self.settings.mailbox.lower()}",
            )
        return self._account.calendar

    def subscribe(self) -> EwsSubscription:
        """A streaming subscription, or a pull one where the server has no streaming."""
        with ews_errors(self._where, self.settings, "notifications"):
            folder = self._once_more(self._folder)
            try:
                sub_id = self._once_more(
                    folder.subscribe_to_streaming, list(CALENDAR_EVENTS)
                )
                return EwsSubscription(str(sub_id), "streaming")
            except _NO_STREAMING:
                pass
            sub_id, watermark = self._once_more(
                lambda: folder.subscribe_to_pull(
                    event_types=list(CALENDAR_EVENTS), timeout=PULL_TIMEOUT
                ),
            )
            return EwsSubscription(str(sub_id), "pull", str(watermark))

    def listen(
        self, subscription: EwsSubscription, on_events: Callable[[int], None], *, minutes: int
    ) -> EwsSubscription:
        """One streaming connection (until Closed, a drop or ``interrupt``) or one pull
        round; ``on_events(n)`` for each notification with ``n`` calendar events."""
        try:
            with ews_errors(self._where, self.settings, "notifications"):
                try:
                    folder = self._once_more(self._folder)
                    if subscription.kind == "pull":
                        return self._once_more(self._pull, folder, subscription, on_events)
                    self._once_more(self._stream, folder, subscription, on_events, minutes)
                    return subscription
                except _GONE:
                    raise SubscriptionGone(f"{self._where}: the subscription is gone") from None
        except CalendarUnavailable:
            if self._stopped:  # interrupted: the cut connection is ours
                return subscription
            raise

    def _stream(
        self,
        folder: Any,
        subscription: EwsSubscription,
        on_events: Callable[[int], None],
        minutes: int,
    ) -> None:
        with self._lock:
            if self._stopped:
                return
            self._reader = threading.get_ident()
        try:
            for notification in folder.get_streaming_events(
                subscription.id, connection_timeout=minutes
            ):
                count = _calendar_events(notification)
                if count:
                    on_events(count)
        finally:
            with self._lock:
                self._reader = None
            forget_stream()

    def _pull(
        self, folder: Any, subscription: EwsSubscription, on_events: Callable[[int], None]
    ) -> EwsSubscription:
        watermark = subscription.watermark
        for notification in folder.get_events(subscription.id, watermark):
            count = _calendar_events(notification)
            if count:
                on_events(count)
            for event in notification.events or ():
                watermark = getattr(event, "watermark", None) or watermark
        return replace(subscription, watermark=watermark)

    def interrupt(self) -> None:
        """End the stream being read now (from any thread)."""
        with self._lock:
            self._stopped = True
            reader = self._reader
        if reader is not None:
            interrupt_stream(reader)

    def unsubscribe(self, subscription: EwsSubscription) -> None:
        with ews_errors(self._where, self.settings, "notifications"):
            try:
                folder = self._once_more(self._folder)
                self._once_more(folder.unsubscribe, subscription.id)
            except _GONE:
                pass  # gone already


def _calendar_events(notification: Any) -> int:
    return sum(
        1 for event in notification.events or () if type(event).__name__ in _EVENT_CLASSES
    )
