"""A protocol-level fake of Microsoft Graph's calendar endpoints and the Microsoft
identity platform's token endpoint, for the real MSAL and pbxcal's Graph client.

``FakeGraph`` is an HTTPS server (MSAL accepts only https authorities) on a free
loopback port with a certificate made at start; ``ca_file`` is the file to trust.

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and
  ``GET /common/discovery/instance`` – the documents MSAL fetches (``authority_host``;
  a tenant other than ``TENANT``, organizations, common, consumers → 400).
* ``POST /{tenant}/oauth2/v2.0/token`` – ``client_credentials`` (``add_app``; a wrong
  secret → 401 ``invalid_client``) and ``refresh_token`` (``add_user`` returns one;
  ``revoke_refresh_tokens()`` / ``expire_refresh_tokens()`` → 400 ``invalid_grant``).
  Delegated answers carry an ``id_token`` and ``client_info`` so MSAL files an account.
  ``expire_access_tokens()`` makes every issued token answer 401 at Graph.
* the authorization-code flow: ``consent(auth_url, user)`` plays the sign-in page (a
  redirect URL with a code, or ``access_denied``); the ``authorization_code`` grant
  checks the PKCE S256 verifier and the redirect URI; ``add_public_client`` for apps
  without a secret. ``sign_in(auth_url, user)`` is the whole browser: consent, then the
  redirect followed to the app's loopback listener (``links authorize microsoft``).
  A refresh rotates the refresh token (the old one answers ``invalid_grant``, as Entra
  ID may); ``refresh_token_works(client, token)`` asks without spending it.
* ``GET /v1.0/users/{mailbox}/calendarView/delta`` (and ``/v1.0/me/...`` for a delegated
  token) – ``startDateTime``/``endDateTime`` required, ``Prefer: odata.maxpagesize``
  paging through ``@odata.nextLink``, ``@odata.deltaLink`` with a ``$deltatoken`` (a
  version counter: a delta returns what changed since, deleted ones or ones that left
  the window as ``@removed``); ``expire_delta_tokens()`` → 410 ``syncStateNotFound``.
* ``GET /v1.0/users/{mailbox}/mailboxSettings`` – what ``set_mailbox_settings`` stored.
* the portal's web sign-in (``oauth_pages``): ``GET /{tenant}/oauth2/v2.0/authorize``
  shows a sign-in page in the browser (an account chooser of ``accounts``, Allow /
  Deny) whose form POSTs back to the same path and is answered like ``consent``: a 302
  to the redirect URI with a code and the state, or ``access_denied``.
  ``GET /v1.0/me/calendars`` lists the signed-in user's calendar (the default one).
* fault injection: ``fail_next(status, code, retry_after)`` answers the next Graph
  calls with Graph's JSON error shape (429, 503...); ``fail_token_next(status, error)``
  the next token request; ``hold_next()`` makes the next Graph request hang until
  released.
* ``POST /v1.0/subscriptions`` (the validation handshake to ``notificationUrl`` and
  ``lifecycleNotificationUrl``: 400 ``ValidationError`` unless each echoes the token),
  ``PATCH``/``DELETE /v1.0/subscriptions/{id}``; every edit of a mailbox POSTs a
  notification (``clientState``, ``changeType``, ``resource``) to each of its
  subscriptions, in order, from one thread; ``send_lifecycle(id, event)``;
  ``deliveries`` / ``wait_for_deliveries(n)``; ``subscriptions()`` and
  ``subscription_log`` (every create, renew and delete) show what was asked.
* writing events (``POST``/``PATCH``/``DELETE .../events``) with a delegated token whose
  scope lacks Calendars.ReadWrite → 403 ``ErrorAccessDenied``.
* ``requests`` counts requests per endpoint (``"token"``, ``"delta"``, ``"discovery"``,
  ``"mailboxSettings"``); ``prefer`` keeps the last ``Prefer`` header seen.

The mailbox is edited from the test with ``put_event`` (Graph's field names, stored as
given: the fake does not expand series, add occurrences as instances), ``cancel_event``,
``decline_event`` and ``delete_event``; each edit bumps the version.

Must not do: pretend to be complete, or be used outside tests (any bearer token the fake
issued reads every mailbox).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import itertools
import json
import os
import queue
import secrets
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pbxcal.testing import oauth_pages

TENANT = "contoso"
_BAD_SECRET = "AADSTS7000215: Invalid client secret provided."  # noqa: S105 - a message


@dataclass
class _Fault:
    status: int
    code: str
    retry_after: int | None


@dataclass
class _Subscription:
    id: str
    mailbox: str
    resource: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: str


@dataclass(frozen=True)
class Delivery:
    """One notification the fake POSTed: where, the JSON body, the webhook's status
    (0: no connection)."""

    url: str
    body: dict[str, Any]
    status: int
    #: ``time.monotonic()`` when the POST started (the benchmarks' baseline).
    sent_at: float = 0.0


@dataclass
class _Mailbox:
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)  # id -> version of deletion
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Round:
    mailbox: str
    start: dt.datetime
    end: dt.datetime
    since: int  # 0: a full round
    upto: int
    items: list[dict[str, Any]] = field(default_factory=list)


class FakeGraph:
    """The fake endpoints; use as a context manager (``start``/``stop``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._version = 0
        self._delta_epoch = 0
        self._apps: dict[str, str] = {}  # client id -> secret
        self._refresh: dict[str, tuple[str, str]] = {}  # refresh token -> (client, user)
        self._refresh_dead = ""  # "", "revoked", "expired"
        self._tokens: dict[str, str | None] = {}  # access token -> user (None: app)
        self._scopes: dict[str, str] = {}  # a delegated access token -> its scope
        self._token_epoch = 0
        self._token_epochs: dict[str, int] = {}
        self._pages: dict[str, tuple[_Round, int]] = {}  # skip token -> (round, offset)
        self._deltas: dict[str, tuple[str, dt.datetime, dt.datetime, int, int]] = {}
        self._faults: list[_Fault] = []
        self._token_faults: list[tuple[int, str]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._holds: list[threading.Event] = []
        self._public: set[str] = set()
        self._subscriptions: dict[str, _Subscription] = {}
        self._outbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._delivered = threading.Condition()
        self.deliveries: list[Delivery] = []
        #: every subscription call that succeeded, in order: (``"create"``, ``"renew"`` or
        #: ``"delete"``, subscription id, mailbox)
        self.subscription_log: list[tuple[str, str, str]] = []
        self._postman: threading.Thread | None = None
        self._ids = itertools.count(1)
        self.requests: Counter[str] = Counter()
        self.accounts: tuple[str, ...] = oauth_pages.DEFAULT_ACCOUNTS  # the sign-in page's
        self.prefer: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> FakeGraph:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._dir = tempfile.TemporaryDirectory(prefix="fake-graph-")
        cert, key = _certificate()
        cert_path = os.path.join(self._dir.name, "cert.pem")
        key_path = os.path.join(self._dir.name, "key.pem")
        with open(cert_path, "wb") as out:
            out.write(cert)
        with open(key_path, "wb") as out:
            out.write(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-graph", daemon=True
        )
        self._thread.start()
        self._postman = threading.Thread(target=self._deliver, name="fake-graph-push",
                                         daemon=True)
        self._postman.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._postman is not None:
            self._outbox.put(None)
            self._postman.join(10)
            self._postman = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeGraph is not started"
        host, port = self._server.server_address[:2]
        return f"https://{host!s}:{port}"

    @property
    def authority_host(self) -> str:
        return self.base_url

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    @property
    def ca_file(self) -> str:
        assert self._dir is not None, "FakeGraph is not started"
        return os.path.join(self._dir.name, "cert.pem")

    # --- accounts ----------------------------------------------------------------------

    def add_app(self, client_id: str, client_secret: str) -> None:
        """An app registration that may use client credentials (and refresh tokens)."""
        with self._lock:
            self._apps[client_id] = client_secret

    def add_user(self, client_id: str, user: str) -> str:
        """A user's grant for ``client_id``; returns its refresh token."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = (client_id, user)
        return token

    def consent(self, auth_url: str, user: str, *, approve: bool = True) -> str:
        """Play the sign-in page for ``auth_url`` (what MSAL's ``initiate_auth_code_flow``
        built): the redirect URL the browser would be sent to, with a code and the
        state, or ``error=access_denied``. Checks client, redirect URI and PKCE S256."""
        url = urllib.parse.urlsplit(auth_url)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.requests["authorize"] += 1
        assert url.path.endswith("/oauth2/v2.0/authorize"), url.path
        assert query.get("response_type") == "code"
        assert query.get("code_challenge_method") == "S256" and query.get("code_challenge")
        redirect = query["redirect_uri"]
        answer: dict[str, str] = {"state": query.get("state", "")}
        if not approve:
            answer.update(error="access_denied", error_description="AADSTS65004: declined")
        else:
            code = "code-" + secrets.token_urlsafe(16)
            with self._lock:
                assert query["client_id"] in self._apps or query["client_id"] in self._public
                self._codes[code] = {**query, "user": user}
            answer["code"] = code
        return redirect + ("&" if "?" in redirect else "?") + urllib.parse.urlencode(answer)

    def sign_in(self, auth_url: str, user: str, *, approve: bool = True) -> int:
        """The browser: ``consent``, then a GET of the redirect (the app's loopback
        listener on http://localhost:PORT/); the listener's HTTP status."""
        redirect = self.consent(auth_url, user, approve=approve)
        parts = urllib.parse.urlsplit(redirect)
        assert parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1"), parts
        # "localhost" as a browser would reach it: the loopback listener is IPv4
        url = parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def refresh_token_works(self, client_id: str, refresh_token: str) -> bool:
        """Whether the token endpoint would take ``refresh_token`` now (not spent)."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            return grant is not None and grant[0] == client_id and not self._refresh_dead

    def calendars(self, mailbox: str) -> list[dict[str, Any]]:
        """``GET /me/calendars``: the mailbox's default calendar (the fake has one)."""
        digest = hashlib.sha256(mailbox.lower().encode()).hexdigest()[:16]
        return [{"id": f"AAMk-{digest}", "name": "Calendar", "isDefaultCalendar": True,
                 "owner": {"address": mailbox}}]  # fmt: skip

    def add_public_client(self, client_id: str) -> None:
        """An app registration without a secret (the CLI's installed-app flow)."""
        with self._lock:
            self._public.add(client_id)

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh_dead = "revoked"

    def expire_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh_dead = "expired"

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._token_epoch += 1

    # --- the mailbox -------------------------------------------------------------------

    def add_mailbox(self, mailbox: str, settings: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._mailboxes[mailbox.lower()] = _Mailbox(settings=settings or {})

    def set_mailbox_settings(self, mailbox: str, settings: dict[str, Any]) -> None:
        with self._lock:
            self._mailboxes[mailbox.lower()].settings = settings

    def put_event(self, mailbox: str, event: dict[str, Any]) -> None:
        """Add or replace the instance ``event["id"]`` (Graph's JSON field names)."""
        with self._lock:
            box = self._mailboxes[mailbox.lower()]
            self._version += 1
            stored = {"type": "singleInstance", "isCancelled": False, **event}
            box.events[event["id"]] = stored
            box.versions[event["id"]] = self._version
            box.deleted.pop(event["id"], None)
            self._notify(mailbox.lower(), "updated", event["id"])

    def edit_event(self, mailbox: str, event_id: str, **fields: Any) -> None:
        with self._lock:
            event = dict(self._mailboxes[mailbox.lower()].events[event_id])
        self.put_event(mailbox, {**event, **fields})

    def cancel_event(self, mailbox: str, event_id: str) -> None:
        """The organiser cancelled the meeting: it stays, with ``isCancelled``."""
        self.edit_event(mailbox, event_id, isCancelled=True)

    def decline_event(self, mailbox: str, event_id: str) -> None:
        """The owner declined the meeting."""
        self.edit_event(mailbox, event_id, responseStatus={
            "response": "declined", "time": "2026-03-01T10:00:00Z"})

    def delete_event(self, mailbox: str, event_id: str) -> None:
        with self._lock:
            box = self._mailboxes[mailbox.lower()]
            self._version += 1
            del box.events[event_id]
            box.versions.pop(event_id, None)
            box.deleted[event_id] = self._version
            self._notify(mailbox.lower(), "deleted", event_id)

    # --- events written through the API (booking) -----------------------------------------

    def _create_event(self, mailbox: str, body: Any) -> tuple[int, dict[str, Any]]:
        """``POST .../events``: a repeated ``transactionId`` gives the event made first;
        ``isOnlineMeeting`` gets a Teams ``onlineMeeting.joinUrl``."""
        if not isinstance(body, dict) or "start" not in body or "end" not in body:
            return _graph_error(400, "ErrorInvalidRequest")
        with self._lock:
            box = self._mailboxes.get(mailbox)
            if box is None:
                return _graph_error(404, "ErrorItemNotFound")
            transaction = body.get("transactionId")
            for event in box.events.values():
                if transaction and event.get("transactionId") == transaction:
                    return 201, dict(event)
            event_id = f"AAMk-{next(self._ids)}"
        event = {**body, "id": event_id, "iCalUId": f"040000008200E00074C5B7101A82E008{event_id}"}
        if body.get("isOnlineMeeting") is True:
            join = f"https://teams.microsoft.com/l/meetup-join/{event_id}"
            event["onlineMeeting"] = {"joinUrl": join}
        self.requests["events (create)"] += 1
        self.put_event(mailbox, event)
        return 201, self.written_event(mailbox, event_id) or {}

    def _update_event(self, mailbox: str, event_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return _graph_error(400, "ErrorInvalidRequest")
        with self._lock:
            box = self._mailboxes.get(mailbox)
            if box is None or event_id not in box.events:
                return _graph_error(404, "ErrorItemNotFound")
        self.requests["events (update)"] += 1
        self.edit_event(mailbox, event_id, **{k: v for k, v in body.items() if k != "id"})
        return 200, self.written_event(mailbox, event_id) or {}

    def _remove_event(self, mailbox: str, event_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            box = self._mailboxes.get(mailbox)
            if box is None or event_id not in box.events:
                return _graph_error(404, "ErrorItemNotFound")
        self.requests["events (delete)"] += 1
        self.delete_event(mailbox, event_id)
        return 204, {}

    def written_event(self, mailbox: str, event_id: str) -> dict[str, Any] | None:
        """The stored event ``event_id`` of ``mailbox`` (a copy), or None."""
        with self._lock:
            event = self._mailboxes[mailbox.lower()].events.get(event_id)
            return None if event is None else dict(event)

    def _events_route(self, parts: list[str], user: str | None) -> tuple[str, list[str]] | None:
        """(mailbox, the path after it) of ``/v1.0/me/...`` or ``/v1.0/users/{m}/...``."""
        if len(parts) > 2 and parts[1] == "me" and user is not None:
            return user.lower(), parts[2:]
        if len(parts) > 3 and parts[1] == "users":
            mailbox = urllib.parse.unquote(parts[2]).lower()
            if user is None or mailbox == user.lower():
                return mailbox, parts[3:]
        return None

    # --- subscriptions -----------------------------------------------------------------

    def subscription_ids(self) -> list[str]:
        with self._lock:
            return list(self._subscriptions)

    def subscriptions(self) -> dict[str, str]:
        """The live subscriptions: id -> mailbox."""
        with self._lock:
            return {sub.id: sub.mailbox for sub in self._subscriptions.values()}

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """POST a lifecycle notification (``reauthorizationRequired``, ``missed``,
        ``subscriptionRemoved``; the last also forgets the subscription)."""
        with self._lock:
            sub = self._subscriptions[subscription_id]
            if event == "subscriptionRemoved":
                del self._subscriptions[subscription_id]
        item = {"subscriptionId": sub.id, "clientState": sub.client_state,
                "lifecycleEvent": event, "subscriptionExpirationDateTime": sub.expires,
                "tenantId": "tenant-id-" + TENANT, "resource": sub.resource}
        self._outbox.put((sub.lifecycle_url or sub.notification_url,
                          json.dumps({"value": [item]}).encode()))

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until ``count`` notifications were delivered (or ``timeout``)."""
        with self._delivered:
            self._delivered.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def _notify(self, mailbox: str, change: str, event_id: str) -> None:
        """Called with the lock held: one notification per subscription of ``mailbox``."""
        for sub in self._subscriptions.values():
            if sub.mailbox != mailbox:
                continue
            item = {"subscriptionId": sub.id, "clientState": sub.client_state,
                    "changeType": change, "resource": f"{sub.resource}/{event_id}",
                    "subscriptionExpirationDateTime": sub.expires,
                    "tenantId": "tenant-id-" + TENANT,
                    "resourceData": {"@odata.type": "#Microsoft.Graph.Event",
                                     "id": event_id}}
            self._outbox.put((sub.notification_url, json.dumps({"value": [item]}).encode()))

    def _deliver(self) -> None:
        while True:
            job = self._outbox.get()
            if job is None:
                return
            url, data = job
            sent_at = time.monotonic()
            status = _post(url, data)
            with self._delivered:
                self.deliveries.append(Delivery(url, json.loads(data), status, sent_at))
                self._delivered.notify_all()

    def _subscribe(self, user: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        self.requests["subscriptions"] += 1
        if not isinstance(body, dict):
            return _graph_error(400, "BadRequest")
        resource = str(body.get("resource", ""))
        parts = resource.split("/")
        if parts == ["me", "events"] and user is not None:
            mailbox = user.lower()
        elif len(parts) == 3 and parts[0] == "users" and parts[2] == "events":
            mailbox = urllib.parse.unquote(parts[1]).lower()
        else:
            return _graph_error(400, "ExtensionError")
        state = body.get("clientState")
        if state is not None and (not isinstance(state, str) or len(state) > 128):
            return _graph_error(400, "ValidationError")
        urls = [body.get("notificationUrl"), body.get("lifecycleNotificationUrl")]
        for url in urls:
            if url is not None and not _validates(str(url)):
                return _graph_error(400, "ValidationError")
        sub = _Subscription(
            "sub-" + secrets.token_hex(8), mailbox, resource, str(urls[0]),
            str(urls[1]) if urls[1] else None, state, str(body.get("expirationDateTime")),
        )
        with self._lock:
            if mailbox not in self._mailboxes:
                return _graph_error(404, "ErrorItemNotFound")
            self._subscriptions[sub.id] = sub
            self.subscription_log.append(("create", sub.id, mailbox))
        return 201, {"id": sub.id, "resource": resource, "changeType": body.get("changeType"),
                     "notificationUrl": sub.notification_url, "expirationDateTime": sub.expires,
                     "clientState": state}

    def _renew(self, subscription_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        self.requests["subscriptions"] += 1
        with self._lock:
            sub = self._subscriptions.get(subscription_id)
            if sub is None:
                return _graph_error(404, "ResourceNotFound")
            if isinstance(body, dict) and "expirationDateTime" in body:
                sub.expires = str(body["expirationDateTime"])
            self.subscription_log.append(("renew", sub.id, sub.mailbox))
            return 200, {"id": sub.id, "expirationDateTime": sub.expires}

    def _unsubscribe(self, subscription_id: str) -> tuple[int, dict[str, Any]]:
        self.requests["subscriptions"] += 1
        with self._lock:
            gone = self._subscriptions.pop(subscription_id, None)
            if gone is None:
                return _graph_error(404, "ResourceNotFound")
            self.subscription_log.append(("delete", gone.id, gone.mailbox))
        return 204, {}

    def expire_delta_tokens(self) -> None:
        """Every delta link given out so far answers 410 ``syncStateNotFound``."""
        with self._lock:
            self._delta_epoch += 1
            self._deltas.clear()

    def hold_next(self) -> threading.Event:
        """The next Graph request hangs until the returned event is set (at most 30 s)."""
        release = threading.Event()
        with self._lock:
            self._holds.append(release)
        return release

    def _hold(self) -> None:
        with self._lock:
            release = self._holds.pop(0) if self._holds else None
        if release is not None:
            release.wait(30)

    def fail_next(
        self, status: int, code: str = "", retry_after: int | None = None, times: int = 1
    ) -> None:
        with self._lock:
            self._faults.extend(_Fault(status, code, retry_after) for _ in range(times))

    # --- the endpoints (called by the handler) -----------------------------------------

    def fail_token_next(self, status: int, error: str = "temporarily_unavailable") -> None:
        """The next token request answers ``status`` with an OAuth ``error``."""
        with self._lock:
            self._token_faults.append((status, error))

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests["token"] += 1
        client = form.get("client_id", "")
        grant = form.get("grant_type")
        with self._lock:
            if self._token_faults:
                status, error = self._token_faults.pop(0)
                return status, _oauth_error(error, "AADSTS90033: fake failure")
            if grant == "client_credentials":
                if self._apps.get(client) != form.get("client_secret") or not client:
                    return 401, _oauth_error("invalid_client", _BAD_SECRET)
                return 200, self._issue(None)
            if grant == "refresh_token":
                if client in self._apps and self._apps[client] != form.get("client_secret"):
                    return 401, _oauth_error("invalid_client", _BAD_SECRET)
                grant_of = self._refresh.get(form.get("refresh_token", ""))
                if grant_of is None or grant_of[0] != client or self._refresh_dead:
                    text = ("AADSTS700082: The refresh token has expired."
                            if self._refresh_dead == "expired"
                            else "AADSTS50173: The provided grant has been revoked.")
                    return 400, _oauth_error("invalid_grant", text)
                user = grant_of[1]
                del self._refresh[form["refresh_token"]]
                new = "rt-" + secrets.token_urlsafe(24)  # rotated, like Entra ID
                self._refresh[new] = (client, user)
                answer = self._issue(user, form.get("scope", ""))
                answer.update(refresh_token=new, scope=form.get("scope", ""),
                              id_token=_id_token(user, client, self.base_url),
                              client_info=_client_info(user))
                return 200, answer
            if grant == "authorization_code":
                if client in self._apps and self._apps[client] != form.get("client_secret"):
                    return 401, _oauth_error("invalid_client", _BAD_SECRET)
                request = self._codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = _b64(hashlib.sha256(verifier.encode()).digest())
                if (request is None or request["client_id"] != client
                        or request["redirect_uri"] != form.get("redirect_uri")
                        or request["code_challenge"] != challenge):
                    return 400, _oauth_error("invalid_grant", "AADSTS70008: bad code")
                user = request["user"]
                refresh = "rt-" + secrets.token_urlsafe(24)
                self._refresh[refresh] = (client, user)
                answer = self._issue(user, request.get("scope", ""))
                answer.update(refresh_token=refresh, scope=request.get("scope", ""),
                              id_token=_id_token(user, client, self.base_url,
                                                 request.get("nonce")),
                              client_info=_client_info(user))
                return 200, answer
            return 400, _oauth_error("unsupported_grant_type", "AADSTS70003")

    def _issue(self, user: str | None, scope: str = "") -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(24)
        self._tokens[token] = user
        if user is not None:
            self._scopes[token] = scope
        self._token_epochs[token] = self._token_epoch
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                "access_token": token}

    def _user_of(self, authorization: str | None) -> tuple[bool, str | None]:
        token = (authorization or "").removeprefix("Bearer ")
        with self._lock:
            if token not in self._tokens or self._token_epochs[token] != self._token_epoch:
                return False, None
            return True, self._tokens[token]

    def _may_write(self, authorization: str | None) -> bool:
        """Writing events: a delegated token needs Calendars.ReadWrite (else Graph's 403
        ``ErrorAccessDenied``); the fake's app tokens may write (as with the permission)."""
        token = (authorization or "").removeprefix("Bearer ")
        with self._lock:
            scope = self._scopes.get(token)
        return scope is None or "calendars.readwrite" in scope.lower()

    def _fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _delta(
        self, mailbox: str, query: dict[str, str], page_size: int, route: str
    ) -> tuple[int, dict[str, Any]]:
        self.requests["delta"] += 1
        with self._lock:
            if "$skiptoken" in query:
                state = self._pages.pop(query["$skiptoken"], None)
                if state is None:
                    return _graph_error(410, "syncStateNotFound")
                round_, offset = state
            elif "$deltatoken" in query:
                delta = self._deltas.get(query["$deltatoken"])
                if delta is None:
                    return _graph_error(410, "syncStateNotFound")
                box_name, start, end, since, _epoch = delta
                if box_name != mailbox:
                    return _graph_error(400, "badRequest")
                round_ = self._new_round(mailbox, start, end, since)
                offset = 0
            else:
                try:
                    start = _moment(query["startDateTime"])
                    end = _moment(query["endDateTime"])
                except (KeyError, ValueError):
                    return _graph_error(400, "ErrorInvalidParameter")
                if mailbox not in self._mailboxes:
                    return _graph_error(404, "ErrorItemNotFound")
                round_ = self._new_round(mailbox, start, end, 0)
                offset = 0
            page = round_.items[offset:offset + page_size]
            body: dict[str, Any] = {"value": page}
            path = f"{self.graph_url}/{route}/calendarView/delta"
            if offset + page_size < len(round_.items):
                skip = secrets.token_urlsafe(12)
                self._pages[skip] = (round_, offset + page_size)
                body["@odata.nextLink"] = f"{path}?$skiptoken={skip}"
            else:
                token = secrets.token_urlsafe(12)
                self._deltas[token] = (round_.mailbox, round_.start, round_.end, round_.upto,
                                       self._delta_epoch)
                body["@odata.deltaLink"] = f"{path}?$deltatoken={token}"
            return 200, body

    def _new_round(
        self, mailbox: str, start: dt.datetime, end: dt.datetime, since: int
    ) -> _Round:
        box = self._mailboxes[mailbox]
        round_ = _Round(mailbox, start, end, since, self._version)
        for event_id, event in box.events.items():
            inside = _overlaps(event, start, end)
            if box.versions[event_id] <= since:
                continue
            if inside:
                round_.items.append(_as_graph(event))
            elif since:
                round_.items.append({"id": event_id, "@removed": {"reason": "deleted"}})
        if since:
            for event_id, version in box.deleted.items():
                if version > since:
                    round_.items.append({"id": event_id, "@removed": {"reason": "deleted"}})
        return round_


def _validates(url: str) -> bool:
    """Graph's validation handshake: POST ?validationToken=..., expect the token back."""
    token = "Validation: Testing client application reachability " + secrets.token_hex(4)
    sep = "&" if "?" in url else "?"
    request = urllib.request.Request(  # noqa: S310 - a test webhook URL
        url + sep + urllib.parse.urlencode({"validationToken": token}), data=b"",
        method="POST", headers={"Content-Type": "text/plain"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return bool(answer.status == 200 and answer.read().decode() == token)
    except (OSError, ValueError):
        return False


def _post(url: str, data: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - a test webhook URL
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def _overlaps(event: dict[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
    try:
        begin = _moment(event["start"]["dateTime"])
        finish = _moment(event["end"]["dateTime"])
    except (KeyError, ValueError, TypeError):
        return True
    return begin < end and finish > start


def _as_graph(event: dict[str, Any]) -> dict[str, Any]:
    """The instance as Graph shows it with ``Prefer: outlook.timezone="UTC"``."""
    shown = dict(event)
    for key in ("start", "end"):
        value = event.get(key)
        if isinstance(value, dict) and "dateTime" in value and not event.get("isAllDay"):
            moment = _moment(value["dateTime"]).astimezone(dt.UTC)
            shown[key] = {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                          "timeZone": "UTC"}
    return shown


def _moment(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.split(".")[0].replace("Z", "+00:00")
                                       if "." in text else text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _oauth_error(code: str, description: str) -> dict[str, Any]:
    return {"error": code, "error_description": description, "error_codes": [],
            "trace_id": "fake", "correlation_id": "fake"}


def _graph_error(status: int, code: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": f"fake Graph: {code}"}}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _client_info(user: str) -> str:
    return _b64(json.dumps({"uid": _oid(user), "utid": "tenant-id-" + TENANT}).encode())


def _oid(user: str) -> str:
    return "oid-" + _b64(user.encode())


def _id_token(user: str, client: str, issuer: str, nonce: str | None = None) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"iss": f"{issuer}/{TENANT}/v2.0", "aud": client, "sub": _oid(user),
              "oid": _oid(user), "tid": "tenant-id-" + TENANT, "preferred_username": user,
              "iat": now, "nbf": now, "exp": now + 3600}
    if nonce is not None:
        claims["nonce"] = nonce
    return ".".join([_b64(b'{"alg":"none","typ":"JWT"}'),
                     _b64(json.dumps(claims).encode()), ""])


def _certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 (PEM cert, PEM key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-graph")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGraph
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake = self.owner
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [p for p in url.path.split("/") if p]
        if url.path.endswith("/v2.0/.well-known/openid-configuration") and len(parts) == 4:
            fake.requests["discovery"] += 1
            tenant = parts[0]
            if tenant not in (TENANT, "organizations", "common", "consumers"):
                return self._json(400, _oauth_error("invalid_tenant", "AADSTS90002"))
            base = f"{fake.base_url}/{tenant}"
            return self._json(200, {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            })
        if url.path.endswith("/oauth2/v2.0/authorize") and len(parts) == 4:  # the sign-in page
            page = oauth_pages.sign_in_page(query, fake.accounts, action=url.path,
                                            provider="Microsoft")  # fmt: skip
            return self._page(page)
        if url.path == "/common/discovery/instance":
            fake.requests["discovery"] += 1
            host = urllib.parse.urlsplit(fake.base_url).netloc
            return self._json(200, {
                "tenant_discovery_endpoint":
                    f"{fake.base_url}/{TENANT}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host,
                              "aliases": [host]}],
            })
        if not parts or parts[0] != "v1.0":
            return self._json(*_graph_error(404, "notFound"))
        valid, user = fake._user_of(self.headers.get("Authorization"))
        if not valid:
            return self._json(*_graph_error(401, "InvalidAuthenticationToken"))
        if parts[1] == "me" and user is not None:
            mailbox, rest = user.lower(), parts[2:]
        elif parts[1] == "users" and len(parts) > 2:
            mailbox, rest = urllib.parse.unquote(parts[2]).lower(), parts[3:]
            if user is not None and mailbox != user.lower():
                return self._json(*_graph_error(403, "ErrorAccessDenied"))
        else:
            return self._json(*_graph_error(400, "BadRequest"))
        fake._hold()
        fault = fake._fault()
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            status, body = _graph_error(fault.status, fault.code or "TooManyRequests")
            return self._json(status, body, headers)
        if rest == ["calendars"]:
            fake.requests["calendars"] += 1
            return self._json(200, {"value": fake.calendars(mailbox)})
        if rest == ["mailboxSettings"]:
            fake.requests["mailboxSettings"] += 1
            with fake._lock:
                box = fake._mailboxes.get(mailbox)
            if box is None:
                return self._json(*_graph_error(404, "ErrorItemNotFound"))
            return self._json(200, box.settings)
        if rest == ["calendarView", "delta"]:
            fake.prefer = self.headers.get("Prefer")
            size = 100
            for part in (fake.prefer or "").split(","):
                name, _, value = part.strip().partition("=")
                if name == "odata.maxpagesize" and value.isdigit():
                    size = max(1, int(value))
            route = "me" if parts[1] == "me" else "users/" + parts[2]
            return self._json(*fake._delta(mailbox, query, size, route))
        return self._json(*_graph_error(404, "notFound"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        if parts[1:] == ["oauth2", "v2.0", "authorize"]:  # the sign-in page's form
            signed = oauth_pages.read_sign_in_form(body)
            query = urllib.parse.urlencode(signed.request)
            target = self.owner.consent(f"{self.owner.base_url}{self.path}?{query}",
                                        signed.account, approve=signed.allowed)  # fmt: skip
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if parts[1:] == ["oauth2", "v2.0", "token"]:
            form = dict(urllib.parse.parse_qsl(body))
            return self._json(*self.owner._token(form))
        if parts == ["v1.0", "subscriptions"]:
            valid, user = self.owner._user_of(self.headers.get("Authorization"))
            if not valid:
                return self._json(*_graph_error(401, "InvalidAuthenticationToken"))
            return self._json(*self.owner._subscribe(user, _loads(body)))
        if parts[:1] == ["v1.0"] and parts[-1:] == ["events"]:
            valid, user = self.owner._user_of(self.headers.get("Authorization"))
            if not valid:
                return self._json(*_graph_error(401, "InvalidAuthenticationToken"))
            route = self.owner._events_route(parts, user)
            if route is None or route[1] != ["events"]:
                return self._json(*_graph_error(403, "ErrorAccessDenied"))
            if not self.owner._may_write(self.headers.get("Authorization")):
                return self._json(*_graph_error(403, "ErrorAccessDenied"))
            return self._json(*self.owner._create_event(route[0], _loads(body)))
        return self._json(404, {"error": "not_found"})

    def do_PATCH(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        valid, user = self.owner._user_of(self.headers.get("Authorization"))
        if not valid:
            return self._json(*_graph_error(401, "InvalidAuthenticationToken"))
        if len(parts) == 3 and parts[:2] == ["v1.0", "subscriptions"]:
            return self._json(*self.owner._renew(parts[2], _loads(body)))
        route = self.owner._events_route(parts, user)
        if route is not None and not self.owner._may_write(self.headers.get("Authorization")):
            return self._json(*_graph_error(403, "ErrorAccessDenied"))
        if route is not None and len(route[1]) == 2 and route[1][0] == "events":
            event_id = urllib.parse.unquote(route[1][1])
            return self._json(*self.owner._update_event(route[0], event_id, _loads(body)))
        return self._json(*_graph_error(404, "notFound"))

    def do_DELETE(self) -> None:
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        valid, user = self.owner._user_of(self.headers.get("Authorization"))
        if not valid:
            return self._json(*_graph_error(401, "InvalidAuthenticationToken"))
        if len(parts) == 3 and parts[:2] == ["v1.0", "subscriptions"]:
            return self._json(*self.owner._unsubscribe(parts[2]))
        route = self.owner._events_route(parts, user)
        if route is not None and not self.owner._may_write(self.headers.get("Authorization")):
            return self._json(*_graph_error(403, "ErrorAccessDenied"))
        if route is not None and len(route[1]) == 2 and route[1][0] == "events":
            event_id = urllib.parse.unquote(route[1][1])
            return self._json(*self.owner._remove_event(route[0], event_id))
        return self._json(*_graph_error(404, "notFound"))

    def _page(self, page: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = b"" if status == 204 else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
