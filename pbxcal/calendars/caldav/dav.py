"""The blocking CalDAV requests pbxcal makes, with the ``caldav`` library's errors mapped.

``DavConnection(url, username, password, timeout)`` wraps one ``caldav.DAVClient`` (HTTP
over niquests, basic/digest as the server asks, TLS verified, ``timeout`` seconds per
request) and offers exactly the requests the source needs, each one REPORT or PROPFIND:

* ``collection(url)``: the calendar collection's own properties (sync token, CTag,
  supported reports, calendar time zone);
* ``sync_collection(url, token)``: RFC 6578 changes since ``token`` (``""``: all
  members), following a truncated reply (RFC 6578 §3.6) to its end; a token the server
  refuses raises ``SyncTokenRefused``, a server without the report ``SyncUnsupported``;
* ``members(url)``: every member's ETag (the fallback when there is no sync token);
* ``multiget(url, hrefs)``: the raw VCALENDAR text of chosen members (never expanded by
  the server: no ``<C:expand>``, pbxcal expands recurrences itself);
* ``discover(server_url)``: principal → calendar-home-set → the calendars in it.

With ``guard`` (a link a customer made) the niquests session connects only to addresses
``pbxcal.net`` accepted, redirects included; a refused one surfaces as a connection error.

Every method maps errors at this one boundary: 401/403 → ``CalendarAuthFailed``,
refused connection, DNS, TLS, timeouts, 429 and 5xx → ``CalendarUnavailable`` (or
``CalendarRateLimited``), anything unreadable → ``CalendarError``. Messages name the
request and the URL without user info or query (``redact_url``), never the password or
a response body.

Must not be called on the event loop (``CaldavSource`` runs it through
``BlockingCalls``). Start reading at ``DavConnection``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit
from xml.sax.saxutils import escape

from caldav.davclient import DAVClient
from caldav.lib import error as dav_error
from caldav.lib.http_sync import requests as http
from caldav.response import DAVResponse

from pbxcal.core.redact import redact_url
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)
from pbxcal.net.guard import AddressGuard
from pbxcal.net.urllib3_guard import guard_niquests_session

__all__ = [
    "CalendarInfo",
    "CollectionInfo",
    "DavConnection",
    "Fetched",
    "SyncReply",
    "SyncTokenRefused",
    "SyncUnsupported",
    "strip_user_info",
]

log = logging.getLogger(__name__)

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CALSERVER = "{http://calendarserver.org/ns/}"

#: Members per calendar-multiget REPORT.
MULTIGET_BATCH = 100
#: Truncated sync-collection replies followed before giving up (RFC 6578 §3.6).
MAX_SYNC_PAGES = 1000

_HEAD = '<?xml version="1.0" encoding="utf-8"?>'
_NAMESPACES = (
    'xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav" '
    'xmlns:CS="http://calendarserver.org/ns/"'
)
_COLLECTION_PROPS = (
    f"{_HEAD}<D:propfind {_NAMESPACES}><D:prop>"
    "<D:resourcetype/><D:displayname/><D:sync-token/><D:supported-report-set/>"
    "<CS:getctag/><C:calendar-timezone/>"
    "</D:prop></D:propfind>"
)
_MEMBER_PROPS = (
    f"{_HEAD}<D:propfind {_NAMESPACES}><D:prop><D:resourcetype/><D:getetag/></D:prop></D:propfind>"
)
_PRINCIPAL_PROPS = (
    f"{_HEAD}<D:propfind {_NAMESPACES}><D:prop><D:current-user-principal/></D:prop></D:propfind>"
)
_HOME_PROPS = (
    f"{_HEAD}<D:propfind {_NAMESPACES}><D:prop><C:calendar-home-set/></D:prop></D:propfind>"
)
_CALENDAR_LIST_PROPS = (
    f"{_HEAD}<D:propfind {_NAMESPACES}><D:prop>"
    "<D:resourcetype/><D:displayname/><C:supported-calendar-component-set/>"
    "</D:prop></D:propfind>"
)


class SyncTokenRefused(Exception):
    """The server no longer accepts the sync token (RFC 6578 ``DAV:valid-sync-token``)."""


class SyncUnsupported(Exception):
    """The server does not offer the sync-collection report on this collection."""


@dataclass(frozen=True)
class CollectionInfo:
    """The properties of a calendar collection the source looks at."""

    sync_token: str | None
    ctag: str | None
    supports_sync: bool | None  # None: the server does not say
    timezone: str | None  # the CALDAV:calendar-timezone VTIMEZONE text


@dataclass(frozen=True)
class Fetched:
    """One member as a REPORT delivered it; ``data`` is ``None`` when it was not sent."""

    href: str
    etag: str | None
    data: str | None


@dataclass(frozen=True)
class SyncReply:
    token: str
    changed: tuple[Fetched, ...]
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class CalendarInfo:
    """A calendar found by discovery: its URL (no user info) and display name."""

    url: str
    name: str


def quote_href(path: str) -> str:
    """A decoded href path, percent-encoded again for a request (and XML-escaped)."""
    return escape(quote(path, safe="/:@!$&'()*+,;=~"))


class DavConnection:
    """Blocking CalDAV requests against one account; see the module docstring."""

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        *,
        timeout: float,
        verify: bool | str = True,
        guard: AddressGuard | None = None,
    ) -> None:
        self.url = url
        self._where = redact_url(url)
        with self.boundary("connect", url):
            self._client = DAVClient(
                url=url,
                username=username,
                password=password,
                timeout=timeout,  # type: ignore[arg-type] # niquests takes a float
                ssl_verify_cert=verify,
                enable_rfc6764=False,
            )
            if guard is not None:  # a customer's URL: connect only to checked addresses
                guard_niquests_session(self._client.session, guard)
        self.timeout = timeout

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    # -- the requests ----------------------------------------------------------------

    def collection(self, url: str) -> CollectionInfo:
        """The calendar collection's properties; ``CalendarError`` if it is no calendar."""
        with self.boundary("reading the calendar", url):
            response = self._request(url, "PROPFIND", _COLLECTION_PROPS, depth=0)
            self._check(response, url)
            results = response.parse_propfind()
            if not results:
                raise CalendarError(f"CalDAV: no calendar at {redact_url(url)}")
            props = results[0].properties
            kinds = props.get(f"{DAV}resourcetype") or []
            if f"{CALDAV}calendar" not in _as_list(kinds):
                raise CalendarError(f"CalDAV: {redact_url(url)} is not a calendar collection")
            reports = props.get(f"{DAV}supported-report-set")
            supports_sync = (
                f"{DAV}sync-collection" in _as_list(reports) if reports is not None else None
            )
            return CollectionInfo(
                sync_token=_text(props.get(f"{DAV}sync-token")),
                ctag=_text(props.get(f"{CALSERVER}getctag")),
                supports_sync=supports_sync,
                timezone=_text(props.get(f"{CALDAV}calendar-timezone")),
            )

    def sync_collection(self, url: str, token: str) -> SyncReply:
        """Changes since ``token`` (``""``: every member), with their data where sent."""
        changed: dict[str, Fetched] = {}
        deleted: dict[str, None] = {}
        with self.boundary("sync-collection", url):
            for _ in range(MAX_SYNC_PAGES):
                body = (
                    f"{_HEAD}<D:sync-collection {_NAMESPACES}>"
                    f"<D:sync-token>{escape(token)}</D:sync-token>"
                    "<D:sync-level>1</D:sync-level>"
                    "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
                    "</D:sync-collection>"
                )
                try:
                    response = self._request(url, "REPORT", body, depth=0)
                except dav_error.AuthorizationError as exc:
                    # 401 is the login. A 403 here is about the report, not the account:
                    # the token (RFC 6578 §3.2 DAV:valid-sync-token), or no such report
                    # (DAV:supported-report); real permission problems show in a PROPFIND.
                    if exc.status != 403:
                        raise
                    if token:
                        raise SyncTokenRefused from None
                    raise SyncUnsupported from None
                if response.status in (409, 412) and token:
                    raise SyncTokenRefused
                if response.status in (400, 403, 405, 415, 501) or (
                    response.status == 404 and not token
                ):
                    raise SyncUnsupported
                self._check(response, url)
                result = response.parse_sync_collection()
                for item in result.changed:
                    deleted.pop(item.href, None)
                    changed[item.href] = Fetched(item.href, item.etag, item.calendar_data)
                for href in result.deleted:
                    changed.pop(href, None)
                    deleted[href] = None
                if not result.sync_token:
                    raise CalendarError(
                        f"CalDAV: sync-collection at {redact_url(url)} answered without a "
                        "sync token"
                    )
                new_token = result.sync_token
                if not result.truncated or new_token == token:
                    return SyncReply(new_token, tuple(changed.values()), tuple(deleted))
                token = new_token
            raise CalendarError(
                f"CalDAV: sync-collection at {redact_url(url)} did not end after "
                f"{MAX_SYNC_PAGES} truncated replies"
            )

    def members(self, url: str) -> dict[str, str | None]:
        """href → ETag of every calendar object in the collection (PROPFIND depth 1)."""
        with self.boundary("listing the calendar", url):
            response = self._request(url, "PROPFIND", _MEMBER_PROPS, depth=1)
            self._check(response, url)
            own = _path(url)
            found: dict[str, str | None] = {}
            for result in response.parse_propfind():
                if result.href.rstrip("/") == own.rstrip("/") or result.status == 404:
                    continue
                kinds = _as_list(result.properties.get(f"{DAV}resourcetype") or [])
                if f"{DAV}collection" in kinds:
                    continue
                found[result.href] = _text(result.properties.get(f"{DAV}getetag"))
            return found

    def multiget(self, url: str, hrefs: Sequence[str]) -> dict[str, Fetched]:
        """The raw data of ``hrefs`` (members gone in the meantime are left out)."""
        fetched: dict[str, Fetched] = {}
        with self.boundary("calendar-multiget", url):
            for start in range(0, len(hrefs), MULTIGET_BATCH):
                batch = hrefs[start : start + MULTIGET_BATCH]
                body = (
                    f"{_HEAD}<C:calendar-multiget {_NAMESPACES}>"
                    "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
                    + "".join(f"<D:href>{quote_href(h)}</D:href>" for h in batch)
                    + "</C:calendar-multiget>"
                )
                response = self._request(url, "REPORT", body, depth=None)
                self._check(response, url)
                for item in response.parse_calendar_query():
                    if item.status == 404 or item.calendar_data is None:
                        continue
                    fetched[item.href] = Fetched(item.href, item.etag, item.calendar_data)
        return fetched

    def discover(self, server_url: str) -> list[CalendarInfo]:
        """The user's calendars that can hold events: principal → home set → calendars."""
        with self.boundary("discovery", server_url):
            principal = self._principal(server_url)
            response = self._request(principal, "PROPFIND", _HOME_PROPS, depth=0)
            self._check(response, principal)
            homes: list[str] = []
            for result in response.parse_propfind():
                value = result.properties.get(f"{CALDAV}calendar-home-set")
                homes.extend(_as_list(value) if value else [])
            if not homes:
                raise CalendarError(
                    f"CalDAV: {redact_url(principal)} names no calendar home (not a CalDAV "
                    "account?)"
                )
            calendars: dict[str, CalendarInfo] = {}
            for home in homes:
                home_url = urljoin(principal, home)
                if _downgrades(server_url, home_url):
                    raise CalendarError(
                        f"CalDAV: {redact_url(server_url)} points to a calendar home over "
                        "plain http; refusing to send the password there"
                    )
                response = self._request(home_url, "PROPFIND", _CALENDAR_LIST_PROPS, depth=1)
                self._check(response, home_url)
                for result in response.parse_propfind():
                    props = result.properties
                    if f"{CALDAV}calendar" not in _as_list(props.get(f"{DAV}resourcetype") or []):
                        continue
                    components = props.get(f"{CALDAV}supported-calendar-component-set")
                    if components and "VEVENT" not in _as_list(components):
                        continue
                    url = strip_user_info(urljoin(home_url, quote(result.href, safe="/:@~")))
                    name = _text(props.get(f"{DAV}displayname")) or unquote(
                        result.href.rstrip("/").rpartition("/")[2]
                    )
                    calendars[url] = CalendarInfo(url, name)
            return list(calendars.values())

    def _principal(self, server_url: str) -> str:
        """The current user's principal URL, from the server URL or its well-known URI."""
        candidates = [server_url, urljoin(server_url, "/.well-known/caldav")]
        for candidate in candidates:
            response = self._request(candidate, "PROPFIND", _PRINCIPAL_PROPS, depth=0)
            if response.status == 404:
                continue
            self._check(response, candidate)
            for result in response.parse_propfind():
                href = result.properties.get(f"{DAV}current-user-principal")
                if isinstance(href, str) and href:
                    return urljoin(candidate, href)
        raise CalendarError(
            f"CalDAV: {redact_url(server_url)} names no current-user-principal (not a CalDAV "
            "server, or give the calendar URL instead)"
        )

    # -- plumbing --------------------------------------------------------------------

    def _request(self, url: str, method: str, body: str, *, depth: int | None) -> DAVResponse:
        headers = {"Content-Type": 'application/xml; charset="utf-8"'}
        if depth is not None:
            headers["Depth"] = str(depth)
        return self._client.request(url, method, body, headers)

    def _check(self, response: DAVResponse, url: str) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        where = redact_url(url)
        if status >= 500:
            raise CalendarUnavailable(f"CalDAV: {where} answered HTTP {status} (server error)")
        if status == 404:
            raise CalendarError(f"CalDAV: {where} not found (HTTP 404)")
        raise CalendarError(f"CalDAV: {where} answered HTTP {status}")

    @contextlib.contextmanager
    def boundary(self, what: str, url: str) -> Iterator[None]:
        """Map every error of the ``caldav`` library and its HTTP client to pbxcal's."""
        where = redact_url(url)
        try:
            yield
        except (CalendarError, SyncTokenRefused, SyncUnsupported):
            raise
        except dav_error.RateLimitError as exc:
            wait = exc.retry_after_seconds
            if exc.status == 429 or wait is not None:
                raise CalendarRateLimited(
                    f"CalDAV {what}: {where} asks to slow down (HTTP {exc.status})", wait
                ) from None
            raise CalendarUnavailable(f"CalDAV {what}: {where} is unavailable (HTTP 503)") from None
        except dav_error.AuthorizationError as exc:
            if exc.status == 403:
                raise CalendarAuthFailed(
                    f"CalDAV {what}: {where} refused access (HTTP 403): wrong user name or "
                    "password, or no access to this calendar"
                ) from None
            raise CalendarAuthFailed(
                f"CalDAV {what}: {where} refused the login: wrong user name or password"
            ) from None
        except dav_error.DAVError as exc:
            if exc.status is not None and exc.status >= 500:
                raise CalendarUnavailable(
                    f"CalDAV {what}: {where} answered HTTP {exc.status} (server error)"
                ) from None
            raise CalendarError(f"CalDAV {what}: {where} answered an unusable reply") from None
        except http.exceptions.Timeout:
            raise CalendarUnavailable(
                f"CalDAV {what}: {where} did not answer within {self._timeout_text()}"
            ) from None
        except http.exceptions.SSLError:
            raise CalendarUnavailable(
                f"CalDAV {what}: {where}: TLS handshake failed or certificate not trusted"
            ) from None
        except http.exceptions.ConnectionError:
            raise CalendarUnavailable(
                f"CalDAV {what}: cannot connect to {where} (refused, unreachable or unknown host)"
            ) from None
        except http.exceptions.RequestException:
            raise CalendarUnavailable(f"CalDAV {what}: request to {where} failed") from None
        except OSError:
            raise CalendarUnavailable(f"CalDAV {what}: cannot connect to {where}") from None
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing of the library leaks
            log.debug("CalDAV %s at %s: %s", what, where, type(exc).__name__)
            raise CalendarError(
                f"CalDAV {what}: {where} answered something that is not CalDAV"
            ) from None

    def _timeout_text(self) -> str:
        timeout = getattr(self, "timeout", None)
        return f"{timeout:g}s" if isinstance(timeout, int | float) else "the timeout"


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if value is not None else []


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _path(url: str) -> str:
    return unquote(urlsplit(url).path) or "/"


def _downgrades(origin: str, target: str) -> bool:
    return urlsplit(origin).scheme == "https" and urlsplit(target).scheme != "https"


def strip_user_info(url: str) -> str:
    """``url`` without ``user:password@`` (credentials travel as arguments only)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()
