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
* ``graph`` (Microsoft 365, app-only): ``source`` is the mailbox address; settings
  ``tenant``, ``client_id`` (the Entra ID app registration), ``authority_host``,
  ``graph_url`` and ``ca_file`` (tests only); secret ``graph-client-secret``.
  (Delegated per-user grants come with ``links authorize microsoft``, not yet.)
* ``ews`` (on-premises Exchange): ``source`` is the EWS URL (``.../EWS/Exchange.asmx``);
  settings ``mailbox``, ``username`` (``DOMAIN\\user`` for NTLM), ``auth`` (``ntlm`` |
  ``basic``), ``access`` (``delegate`` | ``impersonation``), ``ca_bundle``; secret
  ``ews-password``.

``SourceFactory(link)`` builds the adapter (no I/O except reading the link's secret from
the store, so call it in a worker thread). Blocking provider libraries share one
``BlockingCalls`` pool. Start reading at ``SourceFactory.__call__``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import httpx

from pbxcal.calendars import CalendarSource
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import IncrementalSource
from pbxcal.calendars.ics import source_for
from pbxcal.errors import CalendarAuthFailed, CalendarError
from pbxcal.store import Link

#: Provider names a link may have.
PROVIDERS = ("ics", "caldav", "google", "graph", "ews")
SECRET_CALDAV_PASSWORD = "caldav-password"  # noqa: S105 - a name, not a secret
SECRET_GOOGLE = "google-credentials"  # noqa: S105 - a name, not a secret
SECRET_GRAPH_CLIENT = "graph-client-secret"  # noqa: S105 - a name, not a secret
SECRET_EWS_PASSWORD = "ews-password"  # noqa: S105 - a name, not a secret

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
    ) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.calls = calls
        self.secrets = secrets
        self.timeout = timeout

    def __call__(self, link: Link) -> CalendarSource | IncrementalSource:
        if link.provider == "ics":
            return source_for(link.source, self.client, self.max_bytes)
        if link.provider == "caldav":
            return self._caldav(link)
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

    def _caldav(self, link: Link) -> IncrementalSource:
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
            )
        return CaldavSource(
            self.calls, username=username, password=password, url=link.source, timeout=self.timeout
        )

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
        from pbxcal.calendars.graph import AppOnlyTokens, GraphCalendarSource
        from pbxcal.calendars.graph.source import DEFAULT_GRAPH_URL
        from pbxcal.calendars.graph.tokens import DEFAULT_AUTHORITY_HOST

        settings = link.settings
        ca_file = str(settings["ca_file"]) if settings.get("ca_file") else None
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
            graph_url=str(settings.get("graph_url") or DEFAULT_GRAPH_URL),
            ca_file=ca_file,
            timeout=self.timeout,
        )

    def _ews(self, link: Link) -> IncrementalSource:
        from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings

        settings = link.settings
        auth: Literal["ntlm", "basic"] = "basic" if settings.get("auth") == "basic" else "ntlm"
        access: Literal["delegate", "impersonation"] = (
            "impersonation" if settings.get("access") == "impersonation" else "delegate"
        )
        return EwsCalendarSource(
            self.calls,
            EwsSettings(
                service_endpoint=link.source,
                mailbox=str(settings.get("mailbox", "")),
                username=str(settings.get("username", "")),
                auth=auth,
                access=access,
                ca_bundle=str(settings["ca_bundle"]) if settings.get("ca_bundle") else None,
            ),
            password=self._secret(link, SECRET_EWS_PASSWORD).decode(),
            timeout=self.timeout,
        )
