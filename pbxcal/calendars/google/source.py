"""``GoogleCalendarSource``: one Google calendar read incrementally (sync tokens).

``changes(None)`` lists every event of the calendar (``singleEvents=false``: the core
expands recurrences, an open-ended series never ends when Google expands it;
``showDeleted=true``), page by page, and hands back the last page's ``nextSyncToken``
as the cursor. ``changes(token)`` lists only what changed since (``syncToken``, same
``singleEvents``, no time filters, which Google refuses with a sync token); ``None``
when nothing did. A token Google no longer accepts (``410 Gone``) becomes a full
resync (``full=True``). Each item is translated by ``events.translate``.

Every call to google-api-python-client (blocking: httplib2) runs through
``BlockingCalls`` with a timeout per page, and the ``httplib2.Http`` underneath has its
own socket timeout so a hung thread gives up too. Each link has its own ``Http`` (after
a timeout, a new one: the old may still be in use by the hung thread) whose connection
is closed after each sync, so idle links hold no sockets; the parsed discovery document
is shared by all links. Errors are mapped here and only here:

* 403 ``rateLimitExceeded``/``userRateLimitExceeded``/``quotaExceeded``, 429 →
  ``CalendarRateLimited`` (``retry_after`` from ``Retry-After`` when sent);
* 5xx, network errors, timeouts, a token endpoint that fails temporarily →
  ``CalendarUnavailable``;
* ``invalid_grant`` from the token endpoint (refresh token revoked or expired, or a
  service account no longer delegated) → ``CalendarNeedsRelink``;
* 401 after a fresh token, other 403s, another refused refresh → ``CalendarAuthFailed``;
* 404 (no such calendar) and other answers → ``CalendarError``.
No message carries a token, a key or Google's answer body.

Must not do: block the event loop, run two syncs of one source at once (a lock keeps
them in turn: httplib2 is not thread-safe), or retry by itself (the scheduler backs off).
Start reading at ``GoogleCalendarSource.changes``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google_auth_httplib2  # type: ignore[import-untyped]
import httplib2  # type: ignore[import-untyped]
from googleapiclient import discovery  # type: ignore[import-untyped]
from googleapiclient.errors import HttpError  # type: ignore[import-untyped]

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import ChangeSet, EventRow, retry_after_seconds
from pbxcal.calendars.google.events import translate
from pbxcal.calendars.google.push import GoogleChannel
from pbxcal.core.vevent import safe_zone
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
)

#: Events per page (Google allows up to 2500; 250 is its default).
DEFAULT_PAGE_SIZE = 250
#: Seconds one page (token refresh included) may take before the sync gives up.
DEFAULT_TIMEOUT = 30.0
#: Pages one sync may read: a calendar bigger than this is refused, not read forever.
DEFAULT_MAX_PAGES = 200

_log = logging.getLogger(__name__)

_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}
)


class GoogleCalendarSource:
    """One calendar (``calendar_id``, ``"primary"`` by default) of one Google account.

    ``credentials`` come from ``pbxcal.calendars.google.credentials`` (per user or a
    delegated service account). ``api_endpoint`` points the client elsewhere (the fake in
    tests: ``FakeGoogle.api_endpoint``); the token endpoint is the credentials'
    ``token_uri``.
    """

    provider = "google"

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        calendar_id: str = "primary",
        *,
        calls: BlockingCalls,
        api_endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        self.calendar_id = calendar_id
        self._credentials = credentials
        self._calls = calls
        self._api_endpoint = api_endpoint
        self._timeout = timeout
        self._page_size = page_size
        self._max_pages = max_pages
        self._http: Any = None
        self._lock = asyncio.Lock()

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        """What changed since ``cursor`` (a sync token); see the module docstring."""
        async with self._lock:
            if cursor is not None:
                try:
                    return await self._read(cursor)
                except _SyncTokenGone:
                    pass
            return await self._read(None)

    async def _read(self, sync_token: str | None) -> ChangeSet | None:
        items: list[Any] = []
        page_token: str | None = None
        time_zone: str | None = None
        for _ in range(self._max_pages):
            page = await self._run(
                self._list_page, sync_token, page_token,
                what=f"Google calendar {self.calendar_id!r}",
            )
            items.extend(page.get("items") or [])
            time_zone = time_zone or page.get("timeZone")
            page_token = page.get("nextPageToken")
            if not page_token:
                next_token = page.get("nextSyncToken")
                if not isinstance(next_token, str) or not next_token:
                    raise CalendarError(
                        f"Google calendar {self.calendar_id!r}: the last page has no sync token"
                    )
                break
        else:
            raise CalendarError(
                f"Google calendar {self.calendar_id!r}: more than {self._max_pages} pages"
            )
        if sync_token is not None and not items:
            return None
        return _change_set(items, next_token, full=sync_token is None, time_zone=time_zone)

    async def watch(
        self, address: str, *, channel_id: str | None = None, token: str | None = None,
        ttl: int | None = None,
    ) -> GoogleChannel:
        """Open an ``events.watch`` channel to ``address`` (see ``push``)."""
        channel_id = channel_id or f"pbxcal-{secrets.token_hex(16)}"
        token = token or secrets.token_urlsafe(32)
        body: dict[str, Any] = {
            "id": channel_id, "type": "web_hook", "address": address, "token": token,
        }
        if ttl is not None:
            body["params"] = {"ttl": str(int(ttl))}
        async with self._lock:
            answer = await self._run(
                self._call, "watch", body,
                what=f"Google calendar {self.calendar_id!r}: events.watch",
            )
        resource_id = answer.get("resourceId")
        expiration = answer.get("expiration")
        if not isinstance(resource_id, str) or not resource_id:
            raise CalendarError(f"Google calendar {self.calendar_id!r}: watch without resourceId")
        try:
            expires_at = datetime.fromtimestamp(int(str(expiration)) / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise CalendarError(
                f"Google calendar {self.calendar_id!r}: watch without a usable expiration"
            ) from None
        return GoogleChannel(channel_id, resource_id, token, expires_at, self.calendar_id)

    async def stop_channel(self, channel: GoogleChannel) -> None:
        """``channels.stop``; a channel Google no longer knows (404) counts as stopped."""
        body = {"id": channel.id, "resourceId": channel.resource_id}
        async with self._lock:
            await self._run(
                self._call, "stop", body,
                what=f"Google calendar {self.calendar_id!r}: channels.stop",
            )

    # --- in a worker thread ------------------------------------------------------------

    def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            events, channels = _service(self._api_endpoint)
            if method == "watch":
                request = events.watch(calendarId=self.calendar_id, body=body)
            else:
                request = channels.stop(body=body)
            http = self._authorized_http()
            try:
                answer = request.execute(http=http, num_retries=0)
            except HttpError as exc:
                if method == "stop" and int(exc.resp.status) == 404:
                    return {}  # already gone: stopped is stopped
                raise
            finally:
                http.close()
            return answer if isinstance(answer, dict) else {}

        return _mapped(run, self.calendar_id)

    def _list_page(self, sync_token: str | None, page_token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "calendarId": self.calendar_id,
            "singleEvents": False,
            "showDeleted": True,
            "maxResults": self._page_size,
        }
        if sync_token is not None:
            params["syncToken"] = sync_token
        if page_token is not None:
            params["pageToken"] = page_token
        events, _ = _service(self._api_endpoint)
        http = self._authorized_http()
        try:
            page = _mapped(
                lambda: events.list(**params).execute(http=http, num_retries=0),
                self.calendar_id,
            )
        except BaseException:
            http.close()
            raise
        if not page.get("nextPageToken"):
            # No socket stays open between syncs: thousands of links would otherwise
            # hold thousands of idle connections (and file descriptors).
            http.close()
        return page

    async def _run(self, function: Callable[..., dict[str, Any]], *args: Any, what: str) -> Any:
        try:
            return await self._calls.run(function, *args, timeout=self._timeout, what=what)
        except CalendarUnavailable:
            # The call may still hang in its thread with this link's Http (httplib2 is
            # not thread-safe): the next call gets a new one. The token is kept.
            self._http = None
            raise

    def _authorized_http(self) -> Any:
        """This link's own connection and credentials (httplib2 is not thread-safe)."""
        if self._http is None:
            self._http = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeout)
            )
        return self._http


_services: dict[str | None, tuple[Any, Any]] = {}
_services_lock = threading.Lock()


def _service(api_endpoint: str | None) -> tuple[Any, Any]:
    """The ``events`` and ``channels`` resources, built once per endpoint and shared by
    every link (about 0.6 MB each, so never per link): requests are built from them and
    executed with each link's own ``http``."""
    with _services_lock:
        built = _services.get(api_endpoint)
        if built is None:
            options = {"api_endpoint": api_endpoint} if api_endpoint else None
            service = discovery.build(
                "calendar", "v3", http=httplib2.Http(timeout=1), client_options=options,
                static_discovery=True, cache_discovery=False,
            )
            built = _services[api_endpoint] = (service.events(), service.channels())
        return built


class _SyncTokenGone(Exception):
    """Google answered 410: the sync token is no longer valid."""


def _mapped(call: Callable[[], dict[str, Any]], calendar_id: str) -> dict[str, Any]:
    """``call()`` with Google's and the transport's errors mapped into pbxcal's tree."""
    where = f"Google calendar {calendar_id!r}"
    try:
        answer = call()
    except HttpError as exc:
        raise _http_error(exc, where) from exc
    except google.auth.exceptions.RefreshError as exc:
        raise _refresh_error(exc, where) from exc
    except google.auth.exceptions.TransportError as exc:
        raise CalendarUnavailable(f"{where}: the token endpoint cannot be reached") from exc
    except TimeoutError as exc:
        raise CalendarUnavailable(f"{where}: timed out") from exc
    except (OSError, httplib2.HttpLib2Error) as exc:
        raise CalendarUnavailable(f"{where}: network error ({type(exc).__name__})") from exc
    if not isinstance(answer, dict):
        raise CalendarError(f"{where}: the answer is not a JSON object")
    return answer


def _http_error(exc: HttpError, where: str) -> Exception:
    status = int(exc.resp.status)
    reason = _reason(exc)
    if status == 410:
        return _SyncTokenGone()
    if status == 429 or (status == 403 and reason in _RATE_LIMIT_REASONS):
        return CalendarRateLimited(
            f"{where}: rate limited ({status} {reason or 'too many requests'})",
            retry_after_seconds(exc.resp.get("retry-after")),
        )
    if status >= 500:
        return CalendarUnavailable(f"{where}: Google answered {status}")
    if status == 401:
        return CalendarAuthFailed(f"{where}: Google refused the access token (401)")
    if status == 403:
        return CalendarAuthFailed(f"{where}: access denied (403 {reason or 'forbidden'})")
    if status == 404:
        return CalendarError(f"{where}: no such calendar (404)")
    return CalendarError(f"{where}: Google answered {status} {reason}".rstrip())


def _refresh_error(exc: google.auth.exceptions.RefreshError, where: str) -> Exception:
    data = exc.args[1] if len(exc.args) > 1 else None
    code = data.get("error") if isinstance(data, dict) else None
    if code is None and exc.args and isinstance(exc.args[0], str):
        code = exc.args[0].split(":", 1)[0].strip()
    if code == "invalid_grant":
        return CalendarNeedsRelink(f"{where}: the grant was revoked or has expired")
    if getattr(exc, "retryable", False):
        return CalendarUnavailable(f"{where}: the token endpoint failed for now")
    return CalendarAuthFailed(f"{where}: the token endpoint refused the credentials ({code})")


def _reason(exc: HttpError) -> str:
    try:
        body = json.loads(exc.content)
        errors = body["error"].get("errors") or []
        reason = errors[0].get("reason") if errors else body["error"].get("status")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return ""
    text = str(reason or "")
    return text if text.isidentifier() and len(text) <= 60 else ""


def _change_set(
    items: list[Any], cursor: str, *, full: bool, time_zone: Any
) -> ChangeSet:
    rows: dict[tuple[str, str | None], EventRow] = {}
    removed: list[str] = []
    for item in items:
        translation = translate(item)
        if translation.row is not None:
            row = translation.row
            rows[(row.uid, row.recurrence_id)] = row
        elif translation.removed is not None:
            removed.append(translation.removed)
        elif translation.problem is not None:
            _log.warning("Google calendar: event left out: %s", translation.problem)
    gone = set(removed)
    # Overrides of a series that is gone in this same answer go with it.
    upserted = tuple(row for key, row in rows.items() if key[0] not in gone)
    zone = time_zone if isinstance(time_zone, str) and safe_zone(time_zone) else None
    return ChangeSet(
        cursor=cursor,
        full=full,
        upserted=upserted,
        removed=() if full else tuple(dict.fromkeys(removed)),
        calendar_tz=zone,
    )
