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
  ``remove(channel_id)``, ``learn(stored, link, at)`` for a channel another process
  opened (read from the store; a cache entry that ``fresh`` ages out), and
  ``check(headers)`` → ``Accepted(link, notification)`` or ``Refused(reason)`` for a
  notification that is spoofed (unknown channel, wrong resource, wrong token: digests
  compared in constant time), malformed, or replayed (a message number not above the
  highest this process saw on that channel; across processes see
  ``pbxcal.service.push``). ``refused`` counts the reasons (for a metric). The webhook
  answers at once (200 for accepted *and* for a ``sync`` message, 4xx for refused) and
  triggers the sync outside the request.
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

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
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


def token_digest(token: str) -> bytes:
    """What is kept of a channel token or Graph client state to compare with (SHA-256,
    labelled): all the store keeps of it (``pbxcal.store.push_channels``)."""
    return hashlib.sha256(b"pbxcal push token\x00" + token.encode()).digest()


@dataclass(frozen=True)
class StoredChannel:
    """A channel as the store knows it (opened by any process): the token only as its
    digest; ``resource_id`` is ``""`` while ``events.watch`` has not answered."""

    id: str
    resource_id: str
    token_digest: bytes


class ChannelBook(Generic[L]):
    """The channels this process knows and the highest message number it saw on each.

    Two kinds of entry: the channels this process opened (``expect``/``add``: kept until
    ``remove``) and channels learned from the store (``learn``: another process opened
    them; kept ``max_age`` seconds, then ``fresh`` says to look again). Not thread-safe:
    use it from the event loop only (the webhook handler runs there).
    """

    def __init__(self) -> None:
        #: channel id -> (resource id, token digest, link, learned at (monotonic) or None)
        self._entries: dict[str, tuple[str, bytes, L, float | None]] = {}
        self._own: dict[str, tuple[GoogleChannel, L]] = {}
        self._last_message: dict[str, int] = {}
        self.refused: Counter[str] = Counter()

    def add(self, channel: GoogleChannel, link: L) -> None:
        self._own[channel.id] = (channel, link)
        self._entries[channel.id] = (channel.resource_id, token_digest(channel.token), link, None)

    def expect(self, link: L) -> tuple[str, str]:
        """A fresh channel id and token for ``link``, accepted before ``add`` (any
        resource id) so the first ``sync`` message is not lost. See ``open_channel``."""
        channel_id = f"pbxcal-{secrets.token_hex(16)}"
        token = secrets.token_urlsafe(32)
        pending = GoogleChannel(channel_id, "", token, datetime.max.replace(tzinfo=UTC), "")
        self.add(pending, link)
        return channel_id, token

    def learn(self, channel: StoredChannel, link: L, at: float) -> None:
        """A channel read from the store at ``at`` (monotonic); own entries stay own."""
        known = self._entries.get(channel.id)
        if known is None or known[3] is not None:
            self._entries[channel.id] = (channel.resource_id, channel.token_digest, link, at)

    def fresh(self, channel_id: str, now: float, max_age: float) -> bool:
        """Whether the entry can be used without asking the store again: an own channel,
        or one learned less than ``max_age`` seconds before ``now``."""
        known = self._entries.get(channel_id)
        return known is not None and (known[3] is None or now - known[3] < max_age)

    def remove(self, channel_id: str) -> None:
        self._entries.pop(channel_id, None)
        self._own.pop(channel_id, None)
        self._last_message.pop(channel_id, None)

    def channels(self) -> list[tuple[GoogleChannel, L]]:
        """The channels this process opened (not the learned ones)."""
        return list(self._own.values())

    def check(self, headers: Mapping[str, str]) -> Accepted[L] | Refused:
        """Is this a genuine, new notification of a known channel?"""
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
        known = self._entries.get(channel_id)
        if known is None:
            return Refused("unknown-channel")
        resource_id, digest, link, _ = known
        if resource_id and not hmac.compare_digest(
            headers.get("x-goog-resource-id", "").encode(), resource_id.encode()
        ):
            return Refused("wrong-resource")
        if not hmac.compare_digest(
            token_digest(headers.get("x-goog-channel-token", "")), digest
        ):
            return Refused("bad-token")
        number = int(number_text)
        if number <= self._last_message.get(channel_id, 0):
            return Refused("replayed")
        self._last_message[channel_id] = number
        return Accepted(link, Notification(channel_id, number, state))


async def open_channel(
    source: GoogleCalendarSource, book: ChannelBook[L], link: L, address: str,
    *, ttl: int | None = None, before_watch: Callable[[str, str], Awaitable[None]] | None = None,
) -> GoogleChannel:
    """A new channel for ``link``, known to ``book`` before Google can use it.

    The channel id and token are registered first, so the ``sync`` message Google sends
    right after ``events.watch`` (often before its answer arrives) is not refused;
    ``before_watch(channel_id, token)`` registers them elsewhere too (the store, for the
    other processes' webhooks) before Google is asked.
    """
    channel_id, token = book.expect(link)
    try:
        if before_watch is not None:
            await before_watch(channel_id, token)
        channel = await source.watch(address, channel_id=channel_id, token=token, ttl=ttl)
    except BaseException:
        book.remove(channel_id)
        raise
    book.add(channel, link)
    return channel


async def replace_channel(
    source: GoogleCalendarSource, book: ChannelBook[L], old: GoogleChannel, link: L,
    address: str, *, ttl: int | None = None,
    before_watch: Callable[[str, str], Awaitable[None]] | None = None,
) -> GoogleChannel:
    """A new channel first, then ``channels.stop`` of ``old`` (Google has no renewal).

    Both channels are live in between, so no change falls through the gap (a change
    seen twice costs one extra cheap sync). A failing stop of the old channel is
    ignored (it expires by itself); it is forgotten by ``book`` either way.
    """
    new = await open_channel(source, book, link, address, ttl=ttl, before_watch=before_watch)
    try:
        await source.stop_channel(old)
    except CalendarError:
        pass  # it expires on its own; notifications on it are refused from now on
    finally:
        book.remove(old.id)
    return new
