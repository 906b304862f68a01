"""The sign-in providers of the portal's OAuth pages: one small adapter per provider.

What it does: ``sign_ins(config)`` gives the configured providers by the name in the
URL (``google``, ``microsoft``). Each adapter (``SignIn``) does the provider's part of
the pages in ``oauth``:

* ``begin(redirect_uri)`` → ``Begun(url, state, flow)``: where to send the browser, the
  ``state`` (``oauth`` files the flow under its SHA-256) and the flow to keep sealed
  (the PKCE verifier; MSAL's flow dict also holds the nonce);
* ``finish(flow, query)`` → the grant (JSON-able; a secret: the refresh token);
* ``account(grant)`` → ``Account(email, calendars, grant)``: whose account it is and
  the calendars to pick from (the grant may come back renewed);
* ``discard(grant)``: revoke it at the provider (Google; Microsoft has no per-app
  revocation, so there the grant is only dropped);
* ``link(grant, calendar_id, email)`` → ``NewLink``: what ``add_checked_link`` stores.

Google is ``calendars.google.web_flow`` + ``calendars.google.calendars``; Microsoft is
``calendars.graph.authorize.Authorizer`` as a confidential web client and Graph's
``GET /me/calendars``. Blocking library calls go to threads here.

What it must not do: know HTTP requests, sessions or pages (``oauth`` does), or put a
token into a message. Start at ``GoogleSignIn``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pbxcal.calendars.google.calendars import CalendarEntry
from pbxcal.config import Config
from pbxcal.config.model import PortalGoogle, PortalMicrosoft
from pbxcal.errors import CalendarAuthFailed


@dataclass(frozen=True)
class Begun:
    """A sign-in started: ``url`` for the browser; ``flow`` is secret."""

    url: str
    state: str
    flow: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Account:
    """Whose account a grant is for, its calendars, and the grant (maybe renewed)."""

    email: str
    calendars: list[CalendarEntry]
    grant: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class NewLink:
    """The arguments of ``add_checked_link`` for the picked calendar."""

    provider: str
    source: str
    settings: dict[str, Any]
    secret_kind: str
    secret: bytes = field(repr=False)


class SignIn(Protocol):
    """One provider's sign-in (see the module docstring)."""

    name: str
    label: str

    async def begin(self, redirect_uri: str) -> Begun: ...

    async def finish(self, flow: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]: ...

    async def account(self, grant: Mapping[str, Any]) -> Account: ...

    async def discard(self, grant: Mapping[str, Any]) -> None: ...

    def link(self, grant: Mapping[str, Any], calendar_id: str, email: str) -> NewLink: ...


def sign_ins(config: Config) -> dict[str, SignIn]:
    """The configured providers by their URL name."""
    portal = config.portal
    found: dict[str, SignIn] = {}
    if portal is not None and portal.google is not None:
        found["google"] = GoogleSignIn(portal.google)
    if portal is not None and portal.microsoft is not None:
        found["microsoft"] = MicrosoftSignIn(portal.microsoft)
    return found


class GoogleSignIn:
    """Google: a "Web application" OAuth client (``[portal.google]``)."""

    name = "google"
    label = "Google"

    def __init__(self, settings: PortalGoogle) -> None:
        self.settings = settings
        self._client: Any = None

    async def _web_client(self) -> Any:
        from pbxcal.calendars.google.web_flow import read_web_client

        if self._client is None:  # read once; the file is the admin's, a restart re-reads
            self._client = await asyncio.to_thread(read_web_client, Path(self.settings.client_file))
        return self._client

    async def begin(self, redirect_uri: str) -> Begun:
        from pbxcal.calendars.google.web_flow import begin

        url, flow = begin(await self._web_client(), redirect_uri)
        return Begun(url, flow["state"], dict(flow))

    async def finish(self, flow: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
        from pbxcal.calendars.google.web_flow import finish

        return dict(await finish(await self._web_client(), flow, query))

    async def account(self, grant: Mapping[str, Any]) -> Account:
        from pbxcal.calendars.google.calendars import account_email, list_calendars
        from pbxcal.calendars.google.web_flow import web_credentials

        entries = await asyncio.to_thread(
            list_calendars, web_credentials(grant), self.settings.api_endpoint
        )
        email = account_email(entries)
        if email is None:
            raise CalendarAuthFailed("Google sign-in: the account has no primary calendar")
        return Account(email, entries, dict(grant))

    async def discard(self, grant: Mapping[str, Any]) -> None:
        from pbxcal.calendars.google.web_flow import revoke

        await revoke(grant, self.settings.revoke_uri)

    def link(self, grant: Mapping[str, Any], calendar_id: str, email: str) -> NewLink:
        from pbxcal.calendars.providers import SECRET_GOOGLE

        # "guarded": made by a customer (the convention for portal links; Google's
        # endpoints are fixed or the admin's, so there is no customer URL to check)
        settings: dict[str, Any] = {"auth": "user", "account": email, "guarded": True}
        if self.settings.api_endpoint:
            settings["api_endpoint"] = self.settings.api_endpoint
        secret = json.dumps(dict(grant)).encode()
        return NewLink("google", calendar_id, settings, SECRET_GOOGLE, secret)


class MicrosoftSignIn:
    """Microsoft 365: a confidential Entra ID web app (``[portal.microsoft]``)."""

    name = "microsoft"
    label = "Microsoft 365"

    def __init__(self, settings: PortalMicrosoft) -> None:
        self.settings = settings

    def _authorizer(self) -> Any:
        from pbxcal.calendars.graph.authorize import Authorizer
        from pbxcal.calendars.graph.tokens import DEFAULT_AUTHORITY_HOST

        secret = _read_secret_file(Path(self.settings.client_secret_file))
        return Authorizer(
            self.settings.client_id, tenant=self.settings.tenant, client_secret=secret,
            authority_host=self.settings.authority_host or DEFAULT_AUTHORITY_HOST,
            ca_file=self.settings.ca_file,
        )  # fmt: skip

    async def begin(self, redirect_uri: str) -> Begun:
        def run() -> Begun:
            start = self._authorizer().begin(redirect_uri)
            return Begun(start.url, str(start.flow.get("state", "")), dict(start.flow))

        return await asyncio.to_thread(run)

    async def finish(self, flow: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
        from pbxcal.calendars.graph.authorize import AuthorizationStart

        def run() -> dict[str, Any]:
            start = AuthorizationStart(str(flow.get("auth_uri", "")), dict(flow))
            return {"token_cache": self._authorizer().finish(start, query)}

        return await asyncio.to_thread(run)

    async def account(self, grant: Mapping[str, Any]) -> Account:
        from pbxcal.web.portal.oauth_graph import graph_account

        return await asyncio.to_thread(graph_account, self.settings, _read_secret_file, grant)

    async def discard(self, grant: Mapping[str, Any]) -> None:
        return None  # no per-app revocation at Microsoft: dropping the grant is all we can do

    def link(self, grant: Mapping[str, Any], calendar_id: str, email: str) -> NewLink:
        from pbxcal.calendars.providers import SECRET_GRAPH_TOKEN_CACHE

        # A confidential app's refresh token is redeemed with the app's secret: the link
        # names the portal's secret file (not the secret), so a new secret reaches it.
        settings: dict[str, Any] = {
            "auth": "delegated", "client_id": self.settings.client_id,
            "tenant": self.settings.tenant, "account": email,
            "client_secret_file": self.settings.client_secret_file, "guarded": True,
        }  # fmt: skip
        for name in ("authority_host", "graph_url", "ca_file"):
            value = getattr(self.settings, name)
            if value:
                settings[name] = value
        return NewLink(
            "graph", "me", settings, SECRET_GRAPH_TOKEN_CACHE,
            str(grant["token_cache"]).encode(),
        )  # fmt: skip


def _read_secret_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise CalendarAuthFailed(f"{path}: the client secret cannot be read ({why})") from None
    if not text:
        raise CalendarAuthFailed(f"{path}: the client secret file is empty")
    return text
