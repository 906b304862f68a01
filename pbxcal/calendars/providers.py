"""Which adapter reads a link: the one place where a link's provider becomes a source.

A ``Link`` names its provider and a ``source`` string; provider options that are not
secret live in ``link.settings``, credentials in the store's encrypted secrets:

* ``ics``: ``source`` is a file path or http(s)/webcal URL; settings ``timezone``,
  ``owner_emails``; no secret.
* ``caldav``: ``source`` is the calendar's URL, or the server's with
  ``settings["calendar_name"]`` (discovery); settings ``username``, ``timezone``;
  secret ``caldav-password``.
* ``google``: ``source`` is the calendar id (``primary`` or an address); settings
  ``auth`` (``user`` | ``service_account``), ``subject`` (the agent a service account
  acts for), ``api_endpoint`` (tests only); secret ``google-credentials`` (JSON: the
  authorized-user info, or the service-account key).
* ``graph`` (Microsoft 365), app-only: ``source`` is the mailbox address; settings
  ``tenant``, ``client_id`` (the Entra ID app registration), ``authority_host``,
  ``graph_url`` and ``ca_file`` (tests only); secret ``graph-client-secret``.
  Delegated (``settings["auth"] == "delegated"``, a grant of ``links authorize
  microsoft``): ``source`` is ``me`` (the signed-in user's mailbox); settings
  ``client_id``, ``tenant`` and the test-only ones; secret ``graph-token-cache`` (MSAL's
  serialized cache, stored again whenever the refresh token rotated: the source's
  ``updated_secret``).
* ``ews`` (on-premises Exchange): ``source`` is the EWS URL (``.../EWS/Exchange.asmx``),
  or the mailbox address with ``autodiscover`` (the URL found is kept in the cursor);
  settings ``mailbox``, ``username`` (``DOMAIN\\user`` for NTLM), ``auth`` (``ntlm`` |
  ``basic`` | ``oauth`` with ``tenant``, ``client_id``, ``authority_host``), ``access``
  (``delegate`` | ``impersonation``), ``ca_bundle``, ``autodiscover``, ``dns_server``
  (tests only); secret ``ews-password``, or ``ews-client-secret`` with ``oauth``.

A link a customer made through the portal has ``settings["guarded"] = true``: its URL
(ICS, CalDAV, EWS) must pass ``pbxcal.net.check_url`` with ``allow_networks`` (``[portal]
allow_networks``) whenever its source is built, ICS and CalDAV connections reach only
addresses the guard checked (redirects included); EWS is checked when built only (see
``pbxcal.net``). Admin links (``links add``) are not guarded: admins link intranet servers.

``SourceFactory(link)`` builds the adapter (no I/O except reading the link's secret from
the store and a customer's link's DNS check, so call it in a worker thread). Blocking
provider libraries share one ``BlockingCalls`` pool. Start reading at ``SourceFactory.__call__``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import httpx

from pbxcal.calendars import CalendarSource
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import IncrementalSource
from pbxcal.calendars.ics import source_for
from pbxcal.errors import CalendarAuthFailed, CalendarError, CalendarUnavailable
from pbxcal.net.guard import AddressGuard, HostNotFound, UrlRefused, check_url
from pbxcal.store import Link

#: Provider names a link may have.
PROVIDERS = ("ics", "caldav", "google", "graph", "ews")
SECRET_CALDAV_PASSWORD = "caldav-password"  # noqa: S105 - a name, not a secret
SECRET_GOOGLE = "google-credentials"  # noqa: S105 - a name, not a secret
SECRET_GRAPH_CLIENT = "graph-client-secret"  # noqa: S105 - a name, not a secret
SECRET_GRAPH_TOKEN_CACHE = "graph-token-cache"  # noqa: S105 - a name, not a secret
SECRET_EWS_PASSWORD = "ews-password"  # noqa: S105 - a name, not a secret
SECRET_EWS_CLIENT = "ews-client-secret"  # noqa: S105 - a name, not a secret

#: (link id, kind) -> the decrypted secret, or None when the link has none.
SecretReader = Callable[[int, str], bytes | None]


class SourceFactory:
    """Builds the source of a link. See the module docstring."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        max_bytes: int,
        calls: BlockingCalls,
        secrets: SecretReader,
        *,
        timeout: float = 30.0,
        allow_networks: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.calls = calls
        self.secrets = secrets
        self.timeout = timeout
        self.guard = AddressGuard(allow_networks)
        self._guarded_client: httpx.AsyncClient | None = None
        self._guarded_client_lock = threading.Lock()

    async def aclose(self) -> None:
        """Close the guarded HTTP client of customers' ICS links, if one was made."""
        if self._guarded_client is not None:
            await self._guarded_client.aclose()

    def __call__(self, link: Link) -> CalendarSource | IncrementalSource:
        guarded = link.settings.get("guarded") is True
        if guarded:
            self._check_customer_url(link)
        if link.provider == "ics":
            client = self._guarded_http() if guarded else self.client
            return source_for(link.source, client, self.max_bytes)
        if link.provider == "caldav":
            return self._caldav(link, guard=self.guard if guarded else None)
        if link.provider == "google":
            return self._google(link)
        if link.provider == "graph":
            return self._graph(link)
        if link.provider == "ews":
            return self._ews(link)
        raise CalendarError(f"unknown calendar provider {link.provider[:32]!r}")

    def _secret(self, link: Link, kind: str) -> bytes:
        value = self.secrets(link.id, kind)
        if value is None:
            raise CalendarAuthFailed(f"no stored credentials ({kind}); link the calendar again")
        return value

    def _check_customer_url(self, link: Link) -> None:
        """A customer's ICS/CalDAV/EWS URL must pass the guard (Google and Graph links
        name no URL of the customer's: their endpoints are fixed or the admin's)."""
        if link.provider not in ("ics", "caldav", "ews"):
            return
        try:
            check_url(link.source, guard=self.guard)
        except HostNotFound as exc:
            raise CalendarUnavailable(str(exc)) from None
        except UrlRefused as exc:
            raise CalendarError(f"refused: {exc}") from None

    def _guarded_http(self) -> httpx.AsyncClient:
        from pbxcal.net.httpx_guard import guarded_async_client

        with self._guarded_client_lock:
            if self._guarded_client is None:
                self._guarded_client = guarded_async_client(
                    self.guard,
                    timeout=self.client.timeout,
                    follow_redirects=self.client.follow_redirects,
                )
            return self._guarded_client

    def _caldav(self, link: Link, guard: AddressGuard | None = None) -> IncrementalSource:
        from pbxcal.calendars.caldav import CaldavSource

        settings = link.settings
        password = self._secret(link, SECRET_CALDAV_PASSWORD).decode()
        username = str(settings.get("username", ""))
        name = settings.get("calendar_name")
        if name:
            return CaldavSource(
                self.calls,
                username=username,
                password=password,
                server_url=link.source,
                calendar_name=str(name),
                timeout=self.timeout,
                guard=guard,
            )
        return CaldavSource(
            self.calls, username=username, password=password, url=link.source, timeout=self.timeout,
            guard=guard,
        )  # fmt: skip

    def _google(self, link: Link) -> IncrementalSource:
        from pbxcal.calendars.google import (
            GoogleCalendarSource,
            delegated_credentials,
            user_credentials,
        )

        try:
            info: Any = json.loads(self._secret(link, SECRET_GOOGLE))
        except ValueError as exc:
            raise CalendarAuthFailed("stored Google credentials cannot be read") from exc
        settings = link.settings
        if settings.get("auth") == "service_account":
            credentials = delegated_credentials(info, str(settings.get("subject", "")))
        else:
            credentials = user_credentials(info)
        endpoint = settings.get("api_endpoint")
        return GoogleCalendarSource(
            credentials,
            link.source,
            calls=self.calls,
            api_endpoint=str(endpoint) if endpoint else None,
            timeout=self.timeout,
        )

    def _graph(self, link: Link) -> IncrementalSource:
        from pbxcal.calendars.graph import AppOnlyTokens, DelegatedTokens, GraphCalendarSource
        from pbxcal.calendars.graph.source import DEFAULT_GRAPH_URL
        from pbxcal.calendars.graph.tokens import DEFAULT_AUTHORITY_HOST

        settings = link.settings
        ca_file = str(settings["ca_file"]) if settings.get("ca_file") else None
        graph_url = str(settings.get("graph_url") or DEFAULT_GRAPH_URL)
        if settings.get("auth") == "delegated":
            try:
                cache = self._secret(link, SECRET_GRAPH_TOKEN_CACHE).decode()
            except UnicodeDecodeError as exc:
                raise CalendarAuthFailed("stored Microsoft grant cannot be read") from exc
            delegated = DelegatedTokens(
                str(settings.get("client_id", "")),
                cache,
                tenant=str(settings.get("tenant") or "organizations"),
                client_secret=_client_secret(settings.get("client_secret_file")),
                authority_host=str(settings.get("authority_host") or DEFAULT_AUTHORITY_HOST),
                ca_file=ca_file,
                timeout=self.timeout,
            )
            return GraphCalendarSource(
                delegated, None, calls=self.calls, graph_url=graph_url, ca_file=ca_file,
                timeout=self.timeout, token_secret=SECRET_GRAPH_TOKEN_CACHE,
            )  # fmt: skip
        tokens = AppOnlyTokens(
            str(settings.get("tenant", "")),
            str(settings.get("client_id", "")),
            self._secret(link, SECRET_GRAPH_CLIENT).decode(),
            authority_host=str(settings.get("authority_host") or DEFAULT_AUTHORITY_HOST),
            ca_file=ca_file,
            timeout=self.timeout,
        )
        return GraphCalendarSource(
            tokens,
            link.source,
            calls=self.calls,
            graph_url=graph_url,
            ca_file=ca_file,
            timeout=self.timeout,
        )

    def _ews(self, link: Link) -> IncrementalSource:
        from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings
        from pbxcal.calendars.ews.connection import DEFAULT_AUTHORITY_HOST

        settings = link.settings
        auth: Literal["ntlm", "basic", "oauth"] = (
            settings["auth"] if settings.get("auth") in ("basic", "oauth") else "ntlm"
        )
        access: Literal["delegate", "impersonation"] = (
            "impersonation" if settings.get("access") == "impersonation" else "delegate"
        )
        autodiscover = settings.get("autodiscover") is True
        return EwsCalendarSource(
            self.calls,
            EwsSettings(
                service_endpoint="" if autodiscover else link.source,
                mailbox=str(settings.get("mailbox", "")),
                username=str(settings.get("username", "")),
                auth=auth,
                access=access,
                ca_bundle=str(settings["ca_bundle"]) if settings.get("ca_bundle") else None,
                tenant=str(settings["tenant"]) if settings.get("tenant") else None,
                client_id=str(settings["client_id"]) if settings.get("client_id") else None,
                authority_host=str(settings.get("authority_host") or DEFAULT_AUTHORITY_HOST),
                autodiscover=autodiscover,
                dns_server=str(settings["dns_server"]) if settings.get("dns_server") else None,
            ),
            password=self._secret(
                link, SECRET_EWS_CLIENT if auth == "oauth" else SECRET_EWS_PASSWORD
            ).decode(),
            timeout=self.timeout,
        )


def _client_secret(path: object) -> str | None:
    """A portal-made delegated Graph link's app secret (``client_secret_file``: the
    portal's confidential app); None for the CLI's public-client grants."""
    if not path:
        return None
    try:
        with open(str(path), encoding="utf-8") as handle:
            secret = handle.read(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise CalendarAuthFailed(
            f"the Microsoft app's client secret file cannot be read ({why})"
        ) from None
    return secret or None
