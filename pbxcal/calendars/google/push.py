"""Google push: ``events.watch`` channels and checking the notifications they bring.

A channel (``GoogleChannel``) is made by ``GoogleCalendarSource.watch(address)``: Google
then POSTs an empty notification to ``address`` (HTTPS with a valid certificate in real
life) whenever the calendar changes, with the headers ``X-Goog-Channel-ID``,
``X-Goog-Resource-ID``, ``X-Goog-Channel-Token`` (our per-channel secret),
``X-Goog-Message-Number`` and ``X-Goog-Resource-State`` (``sync`` right after creation,
then ``exists``/``not_exists``). A notification says only *that* something changed: the
answer is an incremental sync of that link, so a repeated, late or out-of-order one
costs at most one cheap sync. Channels are not 100 % reliable: a polling backstop runs
anyway.

* ``ChannelBook`` (one per process) knows the live channels: ``add(channel, link)``,
  ``remove(channel_id)``, and ``check(headers)`` → ``Accepted(link, notification)`` or
  ``Refused(reason)`` for a notification that is spoofed (unknown channel, wrong
  resource, wrong token: compared in constant time), malformed, or replayed (a message
  number not above the highest seen on that channel). ``refused`` counts the reasons
  (for a metric). The webhook answers at once (200 for accepted *and* for a ``sync``
  message, 4xx for refused) and triggers the sync outside the request.
* ``open_channel(source, book, link, address)`` registers the channel's id and token
  in the book *before* ``events.watch``, so the first message is not refused.
* There is no renewal: ``replace_channel(source, book, old, link, address)`` opens a
  new channel first and then stops the old one (``channels.stop``), so no change falls
  between two channels; ``GoogleChannel.needs_renewal(now)`` says when to do it.
* Unlink: ``source.stop_channel(channel)`` and ``book.remove(channel.id)``.

Must not do: trust a notification's body or headers beyond the checks above, log a
channel token, or sync inside the webhook request. Start reading at ``ChannelBook``.
"""

from __future__ import annotations

import hmac
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Generic, TypeVar

from pbxcal.errors import CalendarError

if TYPE_CHECKING:
    from pbxcal.calendars.google.source import GoogleCalendarSource

L = TypeVar("L")

#: Renew a channel this long before it expires.
RENEW_BEFORE = timedelta(hours=6)
_STATES = frozenset({"sync", "exists", "not_exists"})


@dataclass(frozen=True)
class GoogleChannel:
    """One ``events.watch`` channel. ``token`` is a secret: never log it."""

    id: str
    resource_id: str
    token: str
    expires_at: datetime
    calendar_id: str

    def needs_renewal(self, now: datetime, before: timedelta = RENEW_BEFORE) -> bool:
        """True from ``before`` ahead of the expiry on."""
        return now >= self.expires_at - before

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (
            f"GoogleChannel(id={self.id!r}, resource_id={self.resource_id!r}, "
            f"expires_at={self.expires_at.isoformat()}, calendar_id={self.calendar_id!r})"
        )


@dataclass(frozen=True)
class Notification:
    """A checked notification: which channel, which message, what state."""

    channel_id: str
    message_number: int
    state: str  # "sync" (channel created), "exists", "not_exists"


@dataclass(frozen=True)
class Accepted(Generic[L]):
    link: L
    notification: Notification

    @property
    def wants_sync(self) -> bool:
        """A ``sync`` message only confirms the channel; anything else means: sync now."""
        return self.notification.state != "sync"


@dataclass(frozen=True)
class Refused:
    reason: str  # "malformed", "unknown-channel", "wrong-resource", "bad-token", "replayed"


class ChannelBook(Generic[L]):
    """The live channels of this process and the highest message number seen on each.

    Not thread-safe: use it from the event loop only (the webhook handler runs there).
    """

    def __init__(self) -> None:
        self._channels: dict[str, tuple[GoogleChannel, L]] = {}
        self._last_message: dict[str, int] = {}
        self.refused: Counter[str] = Counter()

    def add(self, channel: GoogleChannel, link: L) -> None:
        self._channels[channel.id] = (channel, link)

    def expect(self, link: L) -> tuple[str, str]:
        """A fresh channel id and token for ``link``, accepted before ``add`` (any
        resource id) so the first ``sync`` message is not lost. See ``open_channel``."""
        channel_id = f"pbxcal-{secrets.token_hex(16)}"
        token = secrets.token_urlsafe(32)
        pending = GoogleChannel(channel_id, "", token, datetime.max.replace(tzinfo=UTC), "")
        self._channels[channel_id] = (pending, link)
        return channel_id, token

    def remove(self, channel_id: str) -> None:
        self._channels.pop(channel_id, None)
        self._last_message.pop(channel_id, None)

    def channels(self) -> list[tuple[GoogleChannel, L]]:
        return list(self._channels.values())

    def check(self, headers: Mapping[str, str]) -> Accepted[L] | Refused:
        """Is this a genuine, new notification of one of our channels?"""
        verdict = self._check({name.lower(): value for name, value in headers.items()})
        if isinstance(verdict, Refused):
            self.refused[verdict.reason] += 1
        return verdict

    def _check(self, headers: Mapping[str, str]) -> Accepted[L] | Refused:
        channel_id = headers.get("x-goog-channel-id", "")
        state = headers.get("x-goog-resource-state", "")
        number_text = headers.get("x-goog-message-number", "")
        if not channel_id or state not in _STATES or not number_text.isdigit():
            return Refused("malformed")
        known = self._channels.get(channel_id)
        if known is None:
            return Refused("unknown-channel")
        channel, link = known
        if channel.resource_id and not hmac.compare_digest(
            headers.get("x-goog-resource-id", "").encode(), channel.resource_id.encode()
        ):
            return Refused("wrong-resource")
        if not hmac.compare_digest(
            headers.get("x-goog-channel-token", "").encode(), channel.token.encode()
        ):
            return Refused("bad-token")
        number = int(number_text)
        if number <= self._last_message.get(channel_id, 0):
            return Refused("replayed")
        self._last_message[channel_id] = number
        return Accepted(link, Notification(channel_id, number, state))


async def open_channel(
    source: GoogleCalendarSource, book: ChannelBook[L], link: L, address: str,
    *, ttl: int | None = None,
) -> GoogleChannel:
    """A new channel for ``link``, known to ``book`` before Google can use it.

    The channel id and token are registered first, so the ``sync`` message Google sends
    right after ``events.watch`` (often before its answer arrives) is not refused.
    """
    channel_id, token = book.expect(link)
    try:
        channel = await source.watch(address, channel_id=channel_id, token=token, ttl=ttl)
    except BaseException:
        book.remove(channel_id)
        raise
    book.add(channel, link)
    return channel


async def replace_channel(
    source: GoogleCalendarSource, book: ChannelBook[L], old: GoogleChannel, link: L,
    address: str, *, ttl: int | None = None,
) -> GoogleChannel:
    """A new channel first, then ``channels.stop`` of ``old`` (Google has no renewal).

    Both channels are live in between, so no change falls through the gap (a change
    seen twice costs one extra cheap sync). A failing stop of the old channel is
    ignored (it expires by itself); it is forgotten by ``book`` either way.
    """
    new = await open_channel(source, book, link, address, ttl=ttl)
    try:
        await source.stop_channel(old)
    except CalendarError:
        pass  # it expires on its own; notifications on it are refused from now on
    finally:
        book.remove(old.id)
    return new
