"""``GraphCalendarSource``: one Microsoft 365 / Outlook.com calendar read incrementally
through Microsoft Graph's ``calendarView/delta``.

A delta round covers a fixed window [``now - past``, ``now + ahead``) (Graph requires
``startDateTime``/``endDateTime`` and keeps them for the round). ``changes(None)`` reads
the whole window page by page (``Prefer: odata.maxpagesize``, following
``@odata.nextLink``) and hands back a cursor holding the window and the final
``@odata.deltaLink``; ``changes(cursor)`` follows the delta link and answers only what
changed (``None`` when nothing did). When the window's end comes closer than
``renew_before``, or Graph no longer accepts the delta link (``410``,
``syncStateNotFound``, ``resyncRequired``), a fresh round with a new window starts and
its answer is a full change set (``full=True``): no gap, the full set replaces what was
stored. Items are translated by ``events.translate`` (one row per occurrence, see there).

The cursor is JSON, opaque to pbxcal: ``{"v": 1, "start": ISO, "end": ISO, "delta":
deltaLink}``. The delta link carries no credential (the token goes in a header).

Writing (booked meetings, ``pbxcal.booking.writeback``): ``create_event`` /
``update_event`` / ``delete_event`` (``POST``/``PATCH``/``DELETE .../events``); they
need the permission Calendars.ReadWrite (application permission for app-only links, a
delegated grant that includes it for delegated links).

Calls: a small client on ``httpx`` (sync) plus MSAL, both blocking, run through
``BlockingCalls`` with a timeout per page; a new connection per request, so idle links
hold no socket. Why not msgraph-sdk: 130 MB installed, seconds to import, for three GET
requests. Errors are mapped in ``errors`` (HTTP answers), here (network errors) and in
``tokens``:

* 429, 503 with ``Retry-After`` → ``CalendarRateLimited(retry_after)``;
* other 5xx, network errors, timeouts → ``CalendarUnavailable``;
* 401 (after one more try with a fresh token), 403 → ``CalendarAuthFailed`` (token
  refused; the app may not read that mailbox);
* 404 (no such mailbox) and other answers → ``CalendarError``.
No message carries a token, a secret or Graph's answer body.

Beside it, and importable from here too: ``delta`` (the cursor and a round's change
set, pure), ``errors`` (Graph's HTTP answers mapped to pbxcal errors, the one place),
``mailbox`` (time zone and working hours as plain data).

Must not do: block the event loop, run two syncs of one source at once (a lock keeps
them in turn), or retry by itself (the scheduler backs off).
Start reading at ``GraphCalendarSource.changes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import ChangeSet
from pbxcal.calendars.graph.delta import DeltaCursor, change_set, iso, parse_cursor
from pbxcal.calendars.graph.errors import DeltaGone, GraphNotFound, graph_error
from pbxcal.calendars.graph.mailbox import (
    MailboxSettings,
    WorkingHours,
    iana_zone,
    parse_mailbox_settings,
    working_profile,
)
from pbxcal.calendars.graph.tokens import GraphTokens
from pbxcal.errors import CalendarError, CalendarRateLimited, CalendarUnavailable

__all__ = [
    "DEFAULT_AHEAD",
    "DEFAULT_GRAPH_URL",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PAST",
    "DEFAULT_RENEW_BEFORE",
    "DEFAULT_TIMEOUT",
    "GraphCalendarSource",
    "GraphNotFound",
    "GraphSubscription",
    "MailboxSettings",
    "WorkingHours",
    "iana_zone",
]

#: Microsoft Graph v1.0 in the public cloud.
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 100
DEFAULT_MAX_PAGES = 200
#: The window of one delta round, relative to when the round starts.
DEFAULT_PAST = timedelta(days=1)
DEFAULT_AHEAD = timedelta(days=60)
#: A new round starts when the window ends sooner than this.
DEFAULT_RENEW_BEFORE = timedelta(days=30)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSubscription:
    """One change-notification subscription. ``client_state`` is a secret: never log it."""

    id: str
    resource: str
    client_state: str
    expires_at: datetime

    def needs_renewal(self, now: datetime, before: timedelta = timedelta(hours=12)) -> bool:
        return now >= self.expires_at - before


class GraphCalendarSource:
    """The default calendar of ``mailbox`` (``/users/{mailbox}``; ``None``: ``/me``, the
    signed-in user of a delegated grant). See the module docstring.

    ``tokens`` is a ``tokens.AppOnlyTokens`` or ``tokens.DelegatedTokens``;
    ``graph_url`` points elsewhere in tests (``FakeGraph.graph_url``), ``ca_file``
    trusts that server's certificate; ``clock`` gives the aware "now" the window is
    planned from; ``token_secret`` is the secret kind under which ``updated_secret``
    hands back a changed token cache (delegated links; ``None``: never).
    """

    provider = "graph"

    def __init__(
        self,
        tokens: GraphTokens,
        mailbox: str | None = None,
        *,
        calls: BlockingCalls,
        graph_url: str = DEFAULT_GRAPH_URL,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
        past: timedelta = DEFAULT_PAST,
        ahead: timedelta = DEFAULT_AHEAD,
        renew_before: timedelta = DEFAULT_RENEW_BEFORE,
        clock: Callable[[], datetime] | None = None,
        token_secret: str | None = None,
    ) -> None:
        if renew_before >= ahead:
            raise ValueError("renew_before must be shorter than ahead")
        self.mailbox = mailbox
        self._tokens = tokens
        self._calls = calls
        self._base = graph_url.rstrip("/")
        self._ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None
        self._timeout = timeout
        self._page_size = page_size
        self._max_pages = max_pages
        self._past = past
        self._ahead = ahead
        self._renew_before = renew_before
        self._clock = clock or (lambda: datetime.now(UTC))
        self._token_secret = token_secret
        self._lock = asyncio.Lock()
        root = "/me" if mailbox is None else "/users/" + urllib.parse.quote(mailbox, safe="@.")
        self._root = self._base + root
        self._where = f"Microsoft 365 mailbox {mailbox or 'me'!r}"

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        """What changed since ``cursor``; see the module docstring."""
        async with self._lock:
            state = parse_cursor(cursor) if cursor is not None else None
            now = self._clock()
            if (
                state is not None
                and state.end - now >= self._renew_before
                # A delta link of another Graph endpoint (the config changed) would
                # carry this link's token there: start a new round instead.
                and state.delta.startswith(self._base + "/")
            ):
                try:
                    return await self._round(state.start, state.end, state.delta)
                except DeltaGone:
                    _log.info("%s: delta link no longer accepted, full resync", self._where)
            start = (now - self._past).replace(microsecond=0)
            try:
                return await self._round(
                    start, (now + self._ahead).replace(microsecond=0), None
                )
            except DeltaGone:
                raise CalendarUnavailable(
                    f"{self._where}: Graph lost the new delta round while paging"
                ) from None

    @property
    def throttle_key(self) -> str | None:
        """Links with the same key share Graph's quota (per app and mailbox): a 429 of
        one holds back the others (``CalendarSync``). ``None`` for unknown tokens."""
        identity = getattr(self._tokens, "identity", None)
        if not isinstance(identity, str):
            return None
        return f"graph:{identity}:{(self.mailbox or 'me').lower()}"

    def updated_secret(self) -> tuple[str, bytes] | None:
        """``(kind, value)`` to store when the token cache changed (MSAL refreshed, maybe
        rotating the refresh token), else ``None``. Blocking: call from a worker thread
        (it waits for a token request in progress)."""
        changed = getattr(self._tokens, "changed", None)
        serialize = getattr(self._tokens, "serialize", None)
        if self._token_secret is None or changed is None or serialize is None:
            return None
        if not changed():
            return None
        return self._token_secret, str(serialize()).encode()

    async def mailbox_settings(self) -> MailboxSettings:
        """The mailbox's time zone and working hours (``GET .../mailboxSettings``)."""
        async with self._lock:
            answer = await self._get(f"{self._root}/mailboxSettings", "mailboxSettings")
        return parse_mailbox_settings(answer)

    async def _round(
        self, start: datetime, end: datetime, delta: str | None
    ) -> ChangeSet | None:
        if delta is None:
            query = urllib.parse.urlencode({
                "startDateTime": iso(start), "endDateTime": iso(end),
            })
            url = f"{self._root}/calendarView/delta?{query}"
        else:
            url = delta
        items: list[Any] = []
        for _ in range(self._max_pages):
            page = await self._get(url, "calendarView/delta")
            value = page.get("value")
            if not isinstance(value, list):
                raise CalendarError(f"{self._where}: a delta page without a value list")
            items.extend(value)
            next_link = page.get("@odata.nextLink")
            if isinstance(next_link, str) and next_link:
                url = self._own(next_link)
                continue
            delta_link = page.get("@odata.deltaLink")
            if not isinstance(delta_link, str) or not delta_link:
                raise CalendarError(f"{self._where}: the last page has no delta link")
            break
        else:
            raise CalendarError(f"{self._where}: more than {self._max_pages} pages")
        cursor = DeltaCursor(start, end, self._own(delta_link)).text()
        full = delta is None
        if not full and not items:
            return None
        change = change_set(items, cursor, full=full, where=self._where)
        if full:  # a full read also refreshes the owner's zone and working hours
            change = replace(change, **await self._profile())
        return change

    async def _profile(self) -> dict[str, Any]:
        """``calendar_tz`` and ``working_hours`` of a ChangeSet from mailboxSettings;
        empty when Graph does not give them (they are a nicety: never fail the sync)."""
        try:
            answer = await self._get(f"{self._root}/mailboxSettings", "mailboxSettings")
        except CalendarRateLimited:
            raise
        except CalendarError as exc:
            _log.info("%s: no mailbox settings (%s)", self._where, exc)
            return {}
        return working_profile(parse_mailbox_settings(answer))

    def _own(self, link: str) -> str:
        """A link Graph gave us must point at Graph, never at another host."""
        if not link.startswith(self._base + "/"):
            raise CalendarError(f"{self._where}: a paging link points outside Graph")
        return link

    async def subscribe(
        self, notification_url: str, lifecycle_url: str, expires_at: datetime,
        *, client_state: str | None = None,
    ) -> GraphSubscription:
        """A change-notification subscription for this calendar's events (``POST
        /subscriptions``); Graph checks both URLs with its validation handshake before it
        answers. ``client_state`` (a secret, ≤ 128 characters) comes back in every
        notification; a random one when not given. See ``push``."""
        client_state = client_state or secrets.token_urlsafe(48)
        resource = "me/events" if self.mailbox is None else (
            "users/" + urllib.parse.quote(self.mailbox, safe="@.") + "/events"
        )
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": iso(expires_at),
            "clientState": client_state,
        }
        async with self._lock:
            answer = await self._send("POST", f"{self._base}/subscriptions", body,
                                      "subscriptions (create)")
        subscription_id = answer.get("id")
        if not isinstance(subscription_id, str) or not subscription_id:
            raise CalendarError(f"{self._where}: a subscription without an id")
        return GraphSubscription(
            subscription_id, resource, client_state, _expiry(answer, expires_at)
        )

    async def renew(
        self, subscription: GraphSubscription, expires_at: datetime
    ) -> GraphSubscription:
        """Move the subscription's expiry (``PATCH``); also the answer to
        ``reauthorizationRequired``. ``GraphNotFound``: it is gone, subscribe again."""
        body = {"expirationDateTime": iso(expires_at)}
        url = f"{self._base}/subscriptions/{urllib.parse.quote(subscription.id, safe='')}"
        async with self._lock:
            answer = await self._send("PATCH", url, body, "subscriptions (renew)")
        return GraphSubscription(
            subscription.id, subscription.resource, subscription.client_state,
            _expiry(answer, expires_at),
        )

    async def unsubscribe(self, subscription: GraphSubscription) -> None:
        """``DELETE`` the subscription; one Graph no longer knows counts as deleted."""
        url = f"{self._base}/subscriptions/{urllib.parse.quote(subscription.id, safe='')}"
        async with self._lock:
            with contextlib.suppress(GraphNotFound):
                await self._send("DELETE", url, None, "subscriptions (delete)")

    # --- writing events (booked meetings; needs Calendars.ReadWrite) -------------------

    async def create_event(self, event: dict[str, Any], transaction_id: str) -> dict[str, Any]:
        """``POST .../events``: Graph's answer (``id``, ``onlineMeeting``...).
        ``transaction_id`` makes a repeated POST give the same event, never a second."""
        body = {**event, "transactionId": transaction_id}
        answer = await self._send("POST", f"{self._root}/events", body, "events (create)")
        if not isinstance(answer.get("id"), str) or not answer["id"]:
            raise CalendarError(f"{self._where}: a created event without an id")
        return answer

    async def update_event(self, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """``PATCH .../events/{id}`` with ``changes``; ``GraphNotFound`` when it is gone."""
        return await self._send("PATCH", self._event_url(event_id), changes, "events (update)")

    async def delete_event(self, event_id: str) -> None:
        """``DELETE .../events/{id}``; an event Graph no longer knows counts as deleted."""
        with contextlib.suppress(GraphNotFound):
            await self._send("DELETE", self._event_url(event_id), None, "events (delete)")

    def _event_url(self, event_id: str) -> str:
        return f"{self._root}/events/{urllib.parse.quote(event_id, safe='')}"

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        return await self._send("GET", url, None, what)

    async def _send(
        self, method: str, url: str, body: dict[str, Any] | None, what: str
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._calls.run(
            self._fetch, method, url, body, timeout=self._timeout,
            what=f"{self._where}: {what}",
        )
        return answer

    # --- in a worker thread ------------------------------------------------------------

    def _fetch(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        response = self._request(method, url, body, fresh=False)
        if response.status_code == 401:
            # The token in memory was refused (revoked early, or the tenant changed its
            # policy): one more try with a new one before "auth failed".
            response = self._request(method, url, body, fresh=True)
        if response.status_code == 204:
            return {}
        if response.status_code not in (200, 201):
            raise graph_error(response, self._where)
        try:
            body = response.json()
        except ValueError:
            raise CalendarError(f"{self._where}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise CalendarError(f"{self._where}: the answer is not a JSON object")
        return body

    def _request(
        self, method: str, url: str, body: dict[str, Any] | None, *, fresh: bool
    ) -> httpx.Response:
        token = self._tokens.access_token(fresh)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Prefer": f'outlook.timezone="UTC", odata.maxpagesize={self._page_size}',
        }
        try:
            with httpx.Client(verify=self._context(), timeout=self._timeout) as client:
                response = client.request(method, url, headers=headers, json=body)
        except httpx.TimeoutException as exc:
            raise CalendarUnavailable(f"{self._where}: timed out") from exc
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(
                f"{self._where}: network error ({type(exc).__name__})"
            ) from exc
        return response

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self._ca_file)
        return self._ssl


def _expiry(answer: dict[str, Any], asked: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(
            str(answer["expirationDateTime"]).replace("Z", "+00:00").split(".")[0]
        )
    except (KeyError, ValueError):
        return asked
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
