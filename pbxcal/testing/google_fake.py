"""A protocol-level fake of the Google Calendar v3 API and Google's OAuth token endpoint.

``FakeGoogle`` is an HTTP server on a free loopback port (``http.server`` in a thread)
that speaks just enough of the real wire protocol for the real google-api-python-client
and google-auth to work against it unchanged:

* ``POST /token`` – the OAuth token endpoint: the ``refresh_token`` grant (per-user
  links; ``revoke_refresh_tokens()`` makes it answer ``invalid_grant``) and the JWT
  bearer grant of service accounts (domain-wide delegation). A JWT assertion is checked
  against the public key registered with ``add_service_account``; its claims (``sub``
  is the delegated user) are kept in ``assertions``.
* ``GET /calendar/v3/calendars/{id}/events`` – ``events.list`` with paging
  (``maxResults``, ``pageToken``), ``nextSyncToken`` on the last page, ``syncToken``
  (a version counter: an incremental list returns every event changed since that
  version, deletions as ``status: cancelled`` tombstones), ``410 Gone`` for a token
  older than ``expire_sync_tokens()`` made it, and ``showDeleted``.
* the installed-app flow: ``add_client`` gives a Desktop-app client config; ``consent(url)``
  plays Google's consent page (a redirect URL with a code, or ``access_denied``); the
  ``authorization_code`` grant checks the PKCE S256 verifier and the redirect URI.
* fault injection: ``fail_next(status, reason, retry_after)`` answers the next
  ``events.list`` calls with an error in Google's JSON error shape (403
  ``rateLimitExceeded``, 429, 5xx...); ``hold_next()`` makes the next one hang until
  released.
* the web sign-in of the customer portal (``oauth_pages``): ``GET /auth`` shows a sign-in
  page in the browser (an account chooser, Allow / Deny) that sends the browser back to
  the redirect URI with a code and the state (or ``access_denied``); each code remembers
  its account, and so do the tokens it is redeemed for. ``POST /revoke`` (``token=``)
  revokes a refresh token (and the access tokens issued from it) or an access token;
  ``revoked`` lists them, and a revoked refresh token gets ``invalid_grant``.
  ``GET /calendar/v3/users/me/calendarList`` lists the calendars ``add_calendar(...,
  owner=account)`` gave the token's account (the primary one's id is the e-mail).
* writing (pbxcal's bookings): ``events.insert`` (``POST .../events``; a
  ``conferenceData.createRequest`` gets a fake Meet link), ``events.update`` (``PUT
  .../events/{id}``) and ``events.delete`` (``DELETE``: a tombstone, as above).
* scopes: a grant remembers its scopes (a code's: the consent request's ``scope``;
  ``add_user(..., scopes=...)``; without: any), a refresh asking for more answers 400
  ``invalid_scope``, and each access token remembers what it was issued for (the refresh's
  ``scope``, else the grant's; a JWT's ``scope`` claim). ``add_service_account(...,
  delegated_scopes=...)`` is the Admin console's domain-wide delegation: an assertion
  with a ``sub`` asking for another scope gets 401 ``unauthorized_client``. A token
  issued for known scopes none of which writes events (``calendar.events``,
  ``calendar``) gets Google's 403 ``insufficientPermissions`` on insert/update/delete.
* ``requests`` counts requests per endpoint (``"token"``, ``"events.list"``), for
  tests and benchmarks.

The calendar is edited from the test with ``put_event``, ``delete_event`` and
``cancel_instance``; each edit bumps the version. Event JSON is stored as given
(Google's field names), plus ``id``, ``iCalUID``, ``etag``, ``updated``, ``status``.

* push: ``POST .../events/watch`` opens a channel (id ≤ 64 chars, ``web_hook``, token ≤
  256 chars, ``params.ttl``), answers with ``resourceId`` and ``expiration``, then sends
  a ``sync`` message; every edit of the calendar POSTs an ``exists`` notification with
  Google's ``X-Goog-*`` headers to each of its channels, in order, from one thread;
  ``POST /calendar/v3/channels/stop`` ends one (404 when unknown). ``deliveries`` lists
  what was sent (with ``time.monotonic()`` for benchmarks); ``wait_for_deliveries(n)``.

Must not do: pretend to be complete (only the endpoints above), or be used outside
tests (plain HTTP, anything signed by a registered key is trusted). Start reading at ``FakeGoogle``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pbxcal.testing import oauth_pages

_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_EVENTS_PREFIX = "/calendar/v3/calendars/"
_CALENDAR_LIST = "/calendar/v3/users/me/calendarList"
_ACCOUNT = "fake_account"  # the account a code was given for (kept with its request)
_WRITING_SCOPES = frozenset({"https://www.googleapis.com/auth/calendar.events",
                             "https://www.googleapis.com/auth/calendar"})


@dataclass
class _Fault:
    status: int
    reason: str
    retry_after: int | None


@dataclass
class _Channel:
    id: str
    calendar_id: str
    address: str
    token: str | None
    resource_id: str
    resource_uri: str
    expiration_ms: int
    message_number: int = 0


@dataclass(frozen=True)
class Delivery:
    """One notification the fake POSTed: its headers, when (``time.monotonic()``), and
    the webhook's HTTP status (0: no connection)."""

    channel_id: str
    message_number: int
    state: str
    headers: dict[str, str]
    sent_at: float
    status: int


@dataclass
class _Calendar:
    time_zone: str
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    owner: str | None = None  # the account whose calendarList shows it
    summary: str = ""


class FakeGoogle:
    """The fake Google endpoints; use as a context manager (``start``/``stop``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delivered = threading.Condition()
        self._connections_changed = threading.Condition(self._lock)
        self._calendars: dict[str, _Calendar] = {}
        self._version = 0
        self._token_epoch = 0
        self._connections: set[socket.socket] = set()
        self._faults: list[_Fault] = []
        self._holds: list[threading.Event] = []
        self._refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (client id, secret)
        self._revoked = False
        self._public_keys: dict[str, rsa.RSAPublicKey] = {}  # client_email -> key
        self._access_tokens: set[str] = set()
        self._token_ids = itertools.count(1)
        self.assertions: list[dict[str, Any]] = []
        self.authorizations: list[dict[str, str]] = []  # consent requests seen
        self._codes: dict[str, dict[str, str]] = {}  # authorization code -> its request
        self._clients: dict[str, str] = {}  # client id -> secret (installed-app flow)
        self.requests: Counter[str] = Counter()
        # web sign-in (see the module docstring)
        self.accounts: tuple[str, ...] = oauth_pages.DEFAULT_ACCOUNTS
        self._token_accounts: dict[str, str] = {}  # refresh or access token -> account
        self._issued_from: dict[str, str] = {}  # access token -> its refresh token
        self.revoked: list[str] = []  # tokens revoked at POST /revoke
        self._grant_scopes: dict[str, frozenset[str] | None] = {}  # refresh token -> scopes
        self._token_scopes: dict[str, frozenset[str]] = {}  # access token -> its scopes
        self._delegation: dict[str, frozenset[str]] = {}  # client_email -> allowed scopes
        self._channels: dict[str, _Channel] = {}
        self._outbox: queue.Queue[tuple[_Channel, int, str] | None] = queue.Queue()
        self.deliveries: list[Delivery] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._postman: threading.Thread | None = None

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> FakeGoogle:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-google", daemon=True
        )
        self._thread.start()
        self._postman = threading.Thread(target=self._deliver, name="fake-google-push", daemon=True)
        self._postman.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection, like a dead server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._postman is not None:
            self._outbox.put(None)
            self._postman.join(10)
            self._postman = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeGoogle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeGoogle is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def api_endpoint(self) -> str:
        """The ``api_endpoint`` client option for ``googleapiclient.discovery.build``."""
        return f"{self.base_url}/calendar/v3/"

    # --- accounts ----------------------------------------------------------------------

    def add_user(
        self, client_id: str, client_secret: str, refresh_token: str,
        scopes: tuple[str, ...] | None = None,
    ) -> dict[str, str]:
        """Register an OAuth client + refresh token granted ``scopes`` (None: any);
        returns authorized-user info (recording no scopes, like an older grant)."""
        with self._lock:
            self._refresh_tokens[refresh_token] = (client_id, client_secret)
            self._grant_scopes[refresh_token] = frozenset(scopes) if scopes else None
        return {
            "type": "authorized_user",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "token_uri": self.token_uri,
        }

    def add_service_account(
        self, client_email: str, delegated_scopes: tuple[str, ...] | None = None
    ) -> dict[str, str]:
        """A new service account key; returns its service-account info (JSON key file).
        ``delegated_scopes``: what its domain-wide delegation allows (None: any)."""
        if delegated_scopes is not None:
            with self._lock:
                self._delegation[client_email] = frozenset(delegated_scopes)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        with self._lock:
            self._public_keys[client_email] = key.public_key()
        return {
            "type": "service_account",
            "project_id": "fake-project",
            "private_key_id": "fake-key-1",
            "private_key": pem,
            "client_email": client_email,
            "client_id": "1234567890",
            "token_uri": self.token_uri,
        }

    @property
    def auth_uri(self) -> str:
        """The ``auth_uri`` of an OAuth client config; open it with ``consent``."""
        return f"{self.base_url}/auth"

    def add_client(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """Register a Desktop-app OAuth client; returns its client JSON (``installed``)."""
        with self._lock:
            self._clients[client_id] = client_secret
        return {"installed": {
            "client_id": client_id,
            "client_secret": client_secret,
            "auth_uri": self.auth_uri,
            "token_uri": self.token_uri,
            "redirect_uris": ["http://localhost"],
        }}

    def add_web_client(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """Register a "Web application" OAuth client (the portal's); its client JSON."""
        with self._lock:
            self._clients[client_id] = client_secret
        return {"web": {
            "client_id": client_id,
            "client_secret": client_secret,
            "auth_uri": self.auth_uri,
            "token_uri": self.token_uri,
        }}

    def consent(
        self, url: str, *, refuse: bool = False, account: str = "",
        granted: tuple[str, ...] | None = None,
    ) -> str:
        """What Google's consent page does for ``url``: the redirect URL it sends the
        browser to, with a one-time code for ``account`` (or ``error=access_denied``).
        ``granted``: the scopes the code grants when not the ones asked for (a box the
        user unticked, or earlier grants added by ``include_granted_scopes``)."""
        parsed = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        return self._consent(query, refuse=refuse, account=account, granted=granted)

    def _consent(
        self, query: dict[str, str], *, refuse: bool, account: str,
        granted: tuple[str, ...] | None = None,
    ) -> str:
        with self._lock:
            self.authorizations.append(query)
            if refuse:
                answer = {"error": "access_denied", "state": query.get("state", "")}
            else:
                code = f"code-{next(self._token_ids)}"
                scope = query["scope"] if granted is None else " ".join(granted)
                self._codes[code] = {**query, "scope": scope, _ACCOUNT: account}
                answer = {"code": code, "state": query.get("state", ""), "scope": scope}
        return oauth_pages.redirect_target(query, answer)

    def revoke_refresh_tokens(self) -> None:
        """From now on the token endpoint answers ``invalid_grant`` for refresh tokens."""
        with self._lock:
            self._revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is refused (401) from now on."""
        with self._lock:
            self._access_tokens.clear()

    # --- the calendar ------------------------------------------------------------------

    def add_calendar(
        self, calendar_id: str, time_zone: str = "Europe/Amsterdam", *,
        owner: str | None = None, summary: str = "",
    ) -> None:
        """A calendar; with ``owner`` it is in that account's calendarList (primary when
        its id is the owner's address)."""
        with self._lock:
            self._calendars[calendar_id] = _Calendar(
                time_zone, owner=owner, summary=summary or calendar_id
            )

    def put_event(self, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace an event (by ``id``); returns it as the API would."""
        with self._lock:
            calendar = self._calendars[calendar_id]
            self._version += 1
            stored = dict(event)
            stored.setdefault("id", f"ev{self._version}")
            master = stored.get("recurringEventId")
            if master is not None and master in calendar.events:
                stored.setdefault("iCalUID", calendar.events[master].get("iCalUID"))
            stored.setdefault("iCalUID", f"{stored['id']}@google.com")
            stored.setdefault("status", "confirmed")
            stored.setdefault("kind", "calendar#event")
            stored["etag"] = f'"{self._version}"'
            stored["updated"] = _now_text()
            calendar.events[stored["id"]] = stored
            calendar.versions[stored["id"]] = self._version
            self._notify_locked(calendar_id, "exists")
            return dict(stored)

    def delete_event(self, calendar_id: str, event_id: str) -> None:
        """Delete an event: it stays as a ``cancelled`` tombstone with only its id."""
        with self._lock:
            calendar = self._calendars[calendar_id]
            self._version += 1
            old = calendar.events[event_id]
            tombstone: dict[str, Any] = {"kind": "calendar#event", "id": event_id}
            for key in ("recurringEventId", "originalStartTime"):
                if key in old:
                    tombstone[key] = old[key]
            tombstone["status"] = "cancelled"
            tombstone["etag"] = f'"{self._version}"'
            calendar.events[event_id] = tombstone
            calendar.versions[event_id] = self._version
            self._notify_locked(calendar_id, "exists")

    def cancel_instance(
        self, calendar_id: str, master_id: str, original_start: dict[str, str]
    ) -> str:
        """Delete one instance of a series (``originalStartTime`` JSON); returns its id."""
        start = original_start.get("dateTime") or original_start["date"]
        stamp = "".join(ch for ch in start[:19] if ch.isalnum())
        instance_id = f"{master_id}_{stamp}"
        with self._lock:
            calendar = self._calendars[calendar_id]
            self._version += 1
            calendar.events[instance_id] = {
                "kind": "calendar#event",
                "id": instance_id,
                "status": "cancelled",
                "recurringEventId": master_id,
                "originalStartTime": dict(original_start),
                "etag": f'"{self._version}"',
            }
            calendar.versions[instance_id] = self._version
            self._notify_locked(calendar_id, "exists")
        return instance_id

    def expire_sync_tokens(self) -> None:
        """Every sync token handed out so far gets ``410 Gone`` from now on."""
        with self._lock:
            self._token_epoch += 1

    def hold_next(self) -> threading.Event:
        """The next events.list call hangs until the returned event is set (or 60 s):
        a provider that does not answer. Set it at the end of the test."""
        release = threading.Event()
        with self._lock:
            self._holds.append(release)
        return release

    def fail_next(
        self, status: int, reason: str = "backendError", *, retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` events.list calls with this error."""
        with self._lock:
            self._faults.extend(_Fault(status, reason, retry_after) for _ in range(times))

    # --- push channels -----------------------------------------------------------------

    def channels(self) -> list[str]:
        """Ids of the live channels."""
        with self._lock:
            return sorted(self._channels)

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until ``count`` notifications were delivered (or attempted)."""
        deadline = time.monotonic() + timeout
        with self._delivered:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.deliveries)} of {count} notifications")
                self._delivered.wait(left)
            return list(self.deliveries)

    def wait_until_no_connections(self, timeout: float = 10.0) -> bool:
        """True once no client holds a connection open (False after ``timeout``)."""
        with self._connections_changed:
            return self._connections_changed.wait_for(lambda: not self._connections, timeout)

    def _notify_locked(self, calendar_id: str, state: str) -> None:
        for channel in self._channels.values():
            if channel.calendar_id == calendar_id:
                channel.message_number += 1
                self._outbox.put((channel, channel.message_number, state))

    def _deliver(self) -> None:
        while (item := self._outbox.get()) is not None:
            channel, number, state = item
            headers = {
                "X-Goog-Channel-ID": channel.id,
                "X-Goog-Channel-Expiration": "Tue, 01 Dec 2026 00:00:00 GMT",
                "X-Goog-Resource-ID": channel.resource_id,
                "X-Goog-Resource-URI": channel.resource_uri,
                "X-Goog-Resource-State": state,
                "X-Goog-Message-Number": str(number),
                "Content-Length": "0",
            }
            if channel.token is not None:
                headers["X-Goog-Channel-Token"] = channel.token
            sent = time.monotonic()
            try:
                request = urllib.request.Request(  # noqa: S310 - http(s) checked by _watch
                    channel.address, data=b"", headers=headers, method="POST"
                )
                with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            with self._delivered:
                self.deliveries.append(Delivery(channel.id, number, state, headers, sent, status))
                self._delivered.notify_all()

    def _watch(self, calendar_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        self.requests["events.watch"] += 1
        if calendar_id not in self._calendars:
            return 404, _error(404, "notFound", "Not Found")
        if not isinstance(body, dict):
            return 400, _error(400, "invalid", "Invalid body")
        channel_id = body.get("id")
        address = body.get("address")
        token = body.get("token")
        if not isinstance(channel_id, str) or not 0 < len(channel_id) <= 64:
            return 400, _error(400, "invalid", "Invalid channel id")
        if body.get("type") not in ("web_hook", "webhook") or not isinstance(address, str) or (
            not address.startswith(("http://", "https://"))
        ):
            return 400, _error(400, "invalid", "Invalid channel type or address")
        if token is not None and (not isinstance(token, str) or len(token) > 256):
            return 400, _error(400, "invalid", "Invalid token")
        if channel_id in self._channels:
            return 400, _error(400, "channelIdNotUnique", "Channel id not unique")
        ttl = int((body.get("params") or {}).get("ttl", 604800))
        expiration = int(time.time() * 1000) + ttl * 1000
        digest = hashlib.sha256(calendar_id.encode()).hexdigest()[:20]
        channel = _Channel(
            channel_id, calendar_id, address, token, f"res-{digest}",
            f"{self.api_endpoint}calendars/{calendar_id}/events?alt=json", expiration,
        )
        self._channels[channel_id] = channel
        channel.message_number = 1
        self._outbox.put((channel, 1, "sync"))
        return 200, {
            "kind": "api#channel", "id": channel_id, "resourceId": channel.resource_id,
            "resourceUri": channel.resource_uri, "token": token,
            "expiration": str(expiration),
        }

    def _write_event(
        self, method: str, path: str, body: Any
    ) -> tuple[int, dict[str, Any] | None]:
        """``events.insert`` (POST .../events), ``update`` (PUT .../events/{id}) and
        ``delete`` (DELETE .../events/{id}); the caller holds the lock. Insert asks for
        a Meet link through ``conferenceData.createRequest`` and gets one."""
        rest = path[len(_EVENTS_PREFIX):]
        calendar_id = urllib.parse.unquote(rest.split("/events", 1)[0])
        event_id = urllib.parse.unquote(rest.rsplit("/", 1)[-1]) if method != "POST" else None
        if calendar_id not in self._calendars:
            return 404, _error(404, "notFound", "Not Found")
        events = self._calendars[calendar_id].events
        call = {"POST": "insert", "PUT": "update"}.get(method, "delete")
        self.requests[f"events.{call}"] += 1
        gone = event_id is not None and (
            event_id not in events or events[event_id].get("status") == "cancelled"
        )
        if gone:
            return 404, _error(404, "notFound", "Not Found")
        if method == "DELETE":
            assert event_id is not None
            self._lock.release()
            try:
                self.delete_event(calendar_id, event_id)
            finally:
                self._lock.acquire()
            return 204, None
        if not isinstance(body, dict) or "start" not in body or "end" not in body:
            return 400, _error(400, "required", "Missing start or end")
        event = dict(body)
        request = (event.pop("conferenceData", None) or {}).get("createRequest")
        if request is not None:
            digest = hashlib.sha256(str(request).encode()).hexdigest()[:10]
            link = f"https://meet.google.com/fake-{digest}"
            event["hangoutLink"] = link
            event["conferenceData"] = {"entryPoints": [{"entryPointType": "video", "uri": link}]}
        if event_id is not None:
            event["id"] = event_id
        self._lock.release()
        try:
            return 200, self.put_event(calendar_id, event)
        finally:
            self._lock.acquire()

    def _stop(self, body: Any) -> tuple[int, dict[str, Any] | None]:
        self.requests["channels.stop"] += 1
        if not isinstance(body, dict):
            return 400, _error(400, "invalid", "Invalid body")
        channel = self._channels.get(str(body.get("id")))
        if channel is None or channel.resource_id != body.get("resourceId"):
            return 404, _error(404, "notFound", "Channel not found")
        del self._channels[channel.id]
        return 204, None

    # --- the web sign-in: revocation and the calendar list (see the module docstring) ---

    def _revoke(self, form: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        self.requests["revoke"] += 1
        token = form.get("token", "")
        with self._lock:
            if token in self._refresh_tokens:
                del self._refresh_tokens[token]
                for access, source in list(self._issued_from.items()):
                    if source == token:
                        self._access_tokens.discard(access)
            elif token in self._access_tokens:
                self._access_tokens.discard(token)
            else:
                return 400, {"error": "invalid_token", "error_description": "Bad Request"}
            self.revoked.append(token)
        return 200, None

    def _calendar_list(self, authorization: str) -> tuple[int, dict[str, Any]]:
        self.requests["calendarList.list"] += 1
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            if token not in self._access_tokens:
                return 401, _error(401, "authError", "Invalid Credentials")
            account = self._token_accounts.get(token)
            items = [
                {"kind": "calendar#calendarListEntry", "id": calendar_id,
                 "summary": calendar.summary, "timeZone": calendar.time_zone,
                 "accessRole": "owner", "primary": calendar_id == account}
                for calendar_id, calendar in self._calendars.items()
                if account is not None and calendar.owner == account
            ]  # fmt: skip
        return 200, {"kind": "calendar#calendarList", "items": items}

    # --- request handling (called from the server's threads) -----------------------------

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests["token"] += 1
        grant = form.get("grant_type", "")
        with self._lock:
            if grant == "authorization_code":
                return self._exchange_code(form)
            if grant == "refresh_token":
                known = self._refresh_tokens.get(form.get("refresh_token", ""))
                client = (form.get("client_id", ""), form.get("client_secret", ""))
                if known is None or self._revoked:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "Token has been expired or revoked."}
                if known != client:
                    return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
                refresh_token = form.get("refresh_token", "")
                asked = frozenset(form.get("scope", "").split())
                granted = self._grant_scopes.get(refresh_token)
                if granted is not None and not asked <= granted:
                    return 400, {"error": "invalid_scope", "error_description": "Bad Request"}
                token = f"fake-access-{next(self._token_ids)}"
                self._access_tokens.add(token)
                self._issued_from[token] = refresh_token
                if refresh_token in self._token_accounts:
                    self._token_accounts[token] = self._token_accounts[refresh_token]
                return 200, self._issued(token, asked or granted)
            elif grant == _JWT_BEARER:
                claims = self._check_assertion(form.get("assertion", ""))
                if claims is None:
                    return 400, {"error": "invalid_grant", "error_description": "Invalid JWT"}
                asked = frozenset(str(claims.get("scope", "")).split())
                allowed = self._delegation.get(str(claims.get("iss")))
                if claims.get("sub") and allowed is not None and not asked <= allowed:
                    return 401, {"error": "unauthorized_client", "error_description": (
                        "Client is unauthorized to retrieve access tokens using this method, "
                        "or client not authorized for any of the scopes requested.")}
                self.assertions.append(claims)
            else:
                return 400, {"error": "unsupported_grant_type"}
            token = f"fake-access-{next(self._token_ids)}"
            self._access_tokens.add(token)
        return 200, self._issued(token, asked)

    def _issued(self, token: str, scopes: frozenset[str] | None) -> dict[str, Any]:
        """The token answer; the token remembers its scopes (unknown: never refused)."""
        answer: dict[str, Any] = {"access_token": token, "expires_in": 3600,
                                  "token_type": "Bearer"}  # fmt: skip
        if scopes:
            self._token_scopes[token] = scopes
            answer["scope"] = " ".join(sorted(scopes))
        return answer

    def _may_write(self, authorization: str) -> bool:
        """False for a token issued for known scopes none of which writes events."""
        with self._lock:
            scopes = self._token_scopes.get(authorization.removeprefix("Bearer "))
        return scopes is None or not scopes.isdisjoint(_WRITING_SCOPES)

    def _exchange_code(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = self._codes.pop(form.get("code", ""), None)  # a code works once
        if request is None:
            return 400, {"error": "invalid_grant", "error_description": "Bad code."}
        client_id = form.get("client_id", "")
        if self._clients.get(client_id) != form.get("client_secret") or (
            client_id != request.get("client_id")
        ):
            return 401, {"error": "invalid_client"}
        if form.get("redirect_uri") != request.get("redirect_uri"):
            return 400, {"error": "redirect_uri_mismatch"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()
        ).decode().rstrip("=")
        if request.get("code_challenge_method") != "S256" or (
            challenge != request.get("code_challenge")
        ):
            return 400, {"error": "invalid_grant", "error_description": "Bad code verifier."}
        refresh_token = f"refresh-{next(self._token_ids)}"
        self._refresh_tokens[refresh_token] = (client_id, self._clients[client_id])
        self._grant_scopes[refresh_token] = frozenset(request.get("scope", "").split()) or None
        access = f"fake-access-{next(self._token_ids)}"
        self._access_tokens.add(access)
        self._issued_from[access] = refresh_token
        self._token_accounts[refresh_token] = self._token_accounts[access] = request[_ACCOUNT]
        granted = self._grant_scopes[refresh_token]
        if granted:
            self._token_scopes[access] = granted
        return 200, {"access_token": access, "expires_in": 3600, "token_type": "Bearer",
                     "refresh_token": refresh_token, "scope": request.get("scope", "")}

    def _authorized(self, authorization: str) -> bool:
        with self._lock:
            return authorization.removeprefix("Bearer ") in self._access_tokens

    def _check_assertion(self, assertion: str) -> dict[str, Any] | None:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            claims: dict[str, Any] = json.loads(_unb64(claims_b64))
            header = json.loads(_unb64(header_b64))
            key = self._public_keys.get(str(claims.get("iss")))
            if key is None or header.get("alg") != "RS256":
                return None
            key.verify(
                _unb64(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return None
        return claims

    def _events_list(
        self, calendar_id: str, query: dict[str, str], authorization: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.requests["events.list"] += 1
        with self._lock:
            hold = self._holds.pop(0) if self._holds else None
        if hold is not None:
            hold.wait(60)
        if not self._authorized(authorization):
            return 401, _error(401, "authError", "Invalid Credentials"), {}
        with self._lock:
            if self._faults:
                fault = self._faults.pop(0)
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                return fault.status, _error(fault.status, fault.reason, "injected"), headers
            calendar = self._calendars.get(calendar_id)
            if calendar is None:
                return 404, _error(404, "notFound", "Not Found"), {}
            sync_token = query.get("syncToken")
            page_token = query.get("pageToken")
            if page_token:
                since, snapshot, offset = (int(p) for p in page_token.split(":"))
            else:
                since, snapshot, offset = 0, self._version, 0
                if sync_token:
                    if any(k in query for k in ("timeMin", "timeMax", "q", "orderBy")):
                        return 400, _error(400, "invalid", "syncToken with a filter"), {}
                    try:
                        epoch_text, since_text = sync_token.split("-v")
                        epoch, since = int(epoch_text.removeprefix("e")), int(since_text)
                    except ValueError:
                        return 400, _error(400, "invalid", "Invalid sync token value."), {}
                    if epoch != self._token_epoch:
                        return 410, _error(
                            410, "fullSyncRequired",
                            "Sync token is no longer valid, a full sync is required.",
                        ), {}
            show_deleted = query.get("showDeleted") == "true" or sync_token is not None
            wanted = sorted(
                event_id for event_id, version in calendar.versions.items()
                if since < version <= snapshot
                and (show_deleted or calendar.events[event_id]["status"] != "cancelled")
            )
            size = max(1, min(int(query.get("maxResults", "250")), 2500))
            page = wanted[offset:offset + size]
            body: dict[str, Any] = {
                "kind": "calendar#events",
                "summary": calendar_id,
                "timeZone": calendar.time_zone,
                "items": [dict(calendar.events[event_id]) for event_id in page],
            }
            if offset + size < len(wanted):
                body["nextPageToken"] = f"{since}:{snapshot}:{offset + size}"
            else:
                body["nextSyncToken"] = f"e{self._token_epoch}-v{snapshot}"
            return 200, body, {}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGoogle
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        super().finish()
        with self.owner._connections_changed:
            self.owner._connections.discard(self.connection)
            self.owner._connections_changed.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read ``requests`` instead

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(_EVENTS_PREFIX) or path == "/calendar/v3/channels/stop":
            self._channel_call(path, body)
            return
        if path == "/auth":  # the sign-in page's form
            signed = oauth_pages.read_sign_in_form(body)
            target = self.owner._consent(
                signed.request, refuse=not signed.allowed, account=signed.account
            )
            self._redirect(target)
            return
        if path == "/revoke":
            self._answer(*self.owner._revoke(dict(urllib.parse.parse_qsl(body))))
            return
        if path != "/token":
            self._answer(404, _error(404, "notFound", "Not Found"))
            return
        form = dict(urllib.parse.parse_qsl(body))
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):  # client credentials as HTTP basic auth
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            form.setdefault("client_id", urllib.parse.unquote_plus(user))
            form.setdefault("client_secret", urllib.parse.unquote_plus(password))
        status, answer = self.owner._token(form)
        self._answer(status, answer)

    def _channel_call(self, path: str, text: str) -> None:
        owner = self.owner
        if not owner._authorized(self.headers.get("Authorization", "")):
            self._answer(401, _error(401, "authError", "Invalid Credentials"))
            return
        writes = self.command in ("PUT", "DELETE") or (
            self.command == "POST" and path.startswith(_EVENTS_PREFIX) and path.endswith("/events")
        )
        if writes and not owner._may_write(self.headers.get("Authorization", "")):
            owner.requests["insufficientPermissions"] += 1
            self._answer(403, _insufficient_scopes(), {"WWW-Authenticate": (
                'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
                'scope="https://www.googleapis.com/auth/calendar.events"')})
            return
        try:
            body = json.loads(text or "null")
        except ValueError:
            body = None
        with owner._lock:
            answer: dict[str, Any] | None
            if path.endswith("/events/watch"):
                calendar_id = urllib.parse.unquote(path[len(_EVENTS_PREFIX):-len("/events/watch")])
                status, answer = owner._watch(calendar_id, body)
            elif path == "/calendar/v3/channels/stop":
                status, answer = owner._stop(body)
            elif path.startswith(_EVENTS_PREFIX) and (
                path.endswith("/events") or self.command in ("PUT", "DELETE")
            ):
                status, answer = owner._write_event(self.command, path, body)
            else:
                status, answer = 404, _error(404, "notFound", "Not Found")
        self._answer(status, answer)

    def do_PUT(self) -> None:
        self._write_call()

    def do_DELETE(self) -> None:
        self._write_call()

    def _write_call(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith(_EVENTS_PREFIX) or "/events/" not in path:
            self._answer(404, _error(404, "notFound", "Not Found"))
            return
        self._channel_call(path, body)

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        if path == "/auth":  # Google's sign-in page, for a browser
            query = dict(urllib.parse.parse_qsl(parsed.query))
            page = oauth_pages.sign_in_page(
                query, self.owner.accounts, action="/auth", provider="Google"
            )
            self._page(page)
            return
        if path == _CALENDAR_LIST:
            self._answer(*self.owner._calendar_list(self.headers.get("Authorization", "")))
            return
        if not (path.startswith(_EVENTS_PREFIX) and path.endswith("/events")):
            self._answer(404, _error(404, "notFound", "Not Found"))
            return
        calendar_id = urllib.parse.unquote(path[len(_EVENTS_PREFIX):-len("/events")])
        query = dict(urllib.parse.parse_qsl(parsed.query))
        status, answer, headers = self.owner._events_list(
            calendar_id, query, self.headers.get("Authorization", "")
        )
        self._answer(status, answer, headers)

    def _page(self, page: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def _redirect(self, target: str) -> None:
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(
        self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _error(code: int, reason: str, message: str) -> dict[str, Any]:
    domain = "usageLimits" if "RateLimit" in reason or code == 429 else "global"
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"domain": domain, "reason": reason, "message": message}],
        }
    }


def _insufficient_scopes() -> dict[str, Any]:
    """Google's answer to a call whose token lacks the method's scope."""
    return {"error": {
        "code": 403, "message": "Request had insufficient authentication scopes.",
        "errors": [{"message": "Insufficient Permission", "domain": "global",
                    "reason": "insufficientPermissions"}],
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com",
                     "metadata": {"service": "calendar-json.googleapis.com"}}],
    }}  # fmt: skip


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
