"""The delegated grant: authorization code with PKCE through MSAL, ending in the
serialized token cache ``tokens.DelegatedTokens`` reads (blocking: MSAL uses requests).

Usage (``pbxcal links authorize microsoft``, later the portal)::

    authorizer = Authorizer(client_id, tenant="organizations", client_secret=None)
    start = authorizer.begin("http://localhost:8765/callback")
    # open start.url in a browser; Microsoft redirects to the redirect URI with
    # ?code=...&state=... (or ?error=access_denied)
    cache_text = authorizer.finish(start, redirect_query)   # store encrypted, per link

``begin`` asks for ``tokens.DELEGATED_SCOPES`` (Calendars.ReadWrite, so meetings can
be booked into the calendar, and MailboxSettings.Read; MSAL adds ``offline_access``, so a
refresh token comes back), PKCE S256 and a random ``state`` (MSAL's
``initiate_auth_code_flow``); ``start.flow`` holds the PKCE verifier and the state: keep
it only until ``finish`` (in memory, or encrypted when the portal must survive a
restart). ``finish`` checks the state (a redirect of another authorization is refused)
and redeems the code. The redirect URI must be registered on the app registration
(Entra ID → Authentication: "Mobile and desktop applications" http://localhost for the
CLI; "Web" with the portal's https URL and a client secret for the portal).

On the CLI, ``run_installed_app_flow(client_id, show_url, tenant=...)`` does it all
for a public client: a ``loopback.LoopbackRedirect`` on 127.0.0.1 with a port the
system picks, redirect URI ``http://localhost:<port>/`` (Entra ID accepts any port for
``http://localhost`` redirect URIs of public clients), ``show_url(url)`` to get the URL
to the user, ``begin``/``finish``, and a ``MicrosoftGrant`` (client id, tenant, the token
cache) that ``write_grant_file`` / ``read_grant_file`` keep as JSON
(``{"type": "microsoft-delegated", "client_id", "tenant", "authority_host"?,
"token_cache"}``, mode 0600) for ``links add --provider graph --grant-file``.

Errors: the user refused consent (``access_denied``) or the code was refused →
``CalendarAuthFailed``; a redirect that does not belong to this authorization →
``CalendarError``; the endpoint unreachable → ``CalendarUnavailable``. No message
carries a code, a token or a secret. No redirect within the timeout →
``CalendarUnavailable``; a grant file that is not one → ``CalendarAuthFailed``.

Must not do: run on the event loop (it blocks until the user answers), or print.
Start reading at ``run_installed_app_flow``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]

from pbxcal.calendars.graph.tokens import (
    DEFAULT_AUTHORITY_HOST,
    DELEGATED_SCOPES,
    _msal,
    _session,
)
from pbxcal.calendars.loopback import LoopbackRedirect
from pbxcal.errors import CalendarAuthFailed, CalendarError

#: The ``type`` of a grant file.
GRANT_TYPE = "microsoft-delegated"
#: Seconds to wait for the user to finish in the browser.
DEFAULT_TIMEOUT = 300.0
_MAX_GRANT_FILE = 64 * 1024
#: A tenant as Entra ID names it: organizations, common, consumers, an id or a domain.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}")


@dataclass(frozen=True)
class AuthorizationStart:
    """``url`` to open in the browser; ``flow`` (a secret: the PKCE verifier) for
    ``Authorizer.finish``."""

    url: str
    flow: dict[str, Any]


class Authorizer:
    """One app registration's authorization-code flow. See the module docstring."""

    def __init__(
        self, client_id: str, *, tenant: str = "organizations",
        client_secret: str | None = None, authority_host: str = DEFAULT_AUTHORITY_HOST,
        ca_file: str | None = None, timeout: float = 30.0,
        scopes: tuple[str, ...] = DELEGATED_SCOPES,
    ) -> None:
        self._client_id = client_id
        self._secret = client_secret
        self._authority = f"{authority_host.rstrip('/')}/{tenant}"
        self._ca_file = ca_file
        self._timeout = timeout
        self._scopes = list(scopes)
        self._where = f"Microsoft sign-in (tenant {tenant!r})"

    def begin(self, redirect_uri: str, *, login_hint: str | None = None) -> AuthorizationStart:
        """The authorization URL (PKCE S256, random state) and the flow to keep."""
        cache = msal.SerializableTokenCache()
        app = _msal(lambda: self._app(cache), self._where)
        def initiate() -> Any:
            with warnings.catch_warnings():
                # MSAL recommends response_mode=form_post, which needs a web server
                # that takes POSTs; the CLI's loopback redirect reads the query.
                warnings.simplefilter("ignore", UserWarning)
                return app.initiate_auth_code_flow(
                    self._scopes, redirect_uri=redirect_uri, login_hint=login_hint,
                )

        flow = _msal(initiate, self._where)
        if not isinstance(flow, dict) or "auth_uri" not in flow:
            raise CalendarError(f"{self._where}: MSAL gave no authorization URL")
        return AuthorizationStart(str(flow["auth_uri"]), dict(flow))

    def finish(self, start: AuthorizationStart, redirect_query: Mapping[str, str]) -> str:
        """Redeem the redirect's code; the serialized token cache (a secret)."""
        cache = msal.SerializableTokenCache()
        app = _msal(lambda: self._app(cache), self._where)
        if redirect_query.get("error"):
            error = str(redirect_query["error"])
            safe = error if error.replace("_", "").isalnum() and len(error) <= 40 else "refused"
            raise CalendarAuthFailed(f"{self._where}: the sign-in was not completed ({safe})")

        def redeem() -> Any:
            try:
                return app.acquire_token_by_auth_code_flow(
                    dict(start.flow), dict(redirect_query)
                )
            except (ValueError, RuntimeError):
                # MSAL: state mismatch, a redirect without the fields of this flow, or
                # an ID token whose nonce is not this flow's.
                raise CalendarError(
                    f"{self._where}: the redirect does not belong to this authorization"
                ) from None

        result = _msal(redeem, self._where)
        if not isinstance(result, dict) or "access_token" not in result:
            error = str(result.get("error", "")) if isinstance(result, dict) else ""
            safe = error if error.replace("_", "").isalnum() and len(error) <= 40 else "unknown"
            raise CalendarAuthFailed(f"{self._where}: the code was refused ({safe})")
        text: str = cache.serialize()
        return text

    def _app(self, cache: Any) -> Any:
        options: dict[str, Any] = {
            "authority": self._authority, "instance_discovery": False,
            "validate_authority": False, "token_cache": cache,
            "http_client": _session(self._ca_file, self._timeout),
        }
        if self._secret is not None:
            return msal.ConfidentialClientApplication(
                self._client_id, client_credential=self._secret, **options
            )
        return msal.PublicClientApplication(self._client_id, **options)


@dataclass(frozen=True)
class MicrosoftGrant:
    """One user's delegated grant: ``token_cache`` is a secret (it holds the refresh
    token); ``authority_host`` is ``None`` for Microsoft's public cloud."""

    client_id: str
    tenant: str
    token_cache: str
    authority_host: str | None = None

    def __repr__(self) -> str:
        return f"MicrosoftGrant(client_id={self.client_id!r}, tenant={self.tenant!r})"


def valid_tenant(tenant: str) -> bool:
    """``organizations``, ``common``, ``consumers``, a tenant id or a domain."""
    return _TENANT.fullmatch(tenant) is not None


def run_installed_app_flow(
    client_id: str,
    show_url: Callable[[str], None],
    *,
    tenant: str = "organizations",
    timeout: float = DEFAULT_TIMEOUT,
    login_hint: str | None = None,
    authority_host: str = DEFAULT_AUTHORITY_HOST,
    ca_file: str | None = None,
) -> MicrosoftGrant:
    """The authorization code flow with PKCE and a loopback redirect (a public client);
    see the module docstring."""
    authorizer = Authorizer(
        client_id, tenant=tenant, authority_host=authority_host, ca_file=ca_file
    )
    with LoopbackRedirect() as listener:
        start = authorizer.begin(f"http://localhost:{listener.port}/", login_hint=login_hint)
        show_url(start.url)
        query = listener.wait(timeout, what="Microsoft sign-in")
    cache = authorizer.finish(start, query)
    host = None if authority_host.rstrip("/") == DEFAULT_AUTHORITY_HOST else authority_host
    return MicrosoftGrant(client_id, tenant, cache, host)


def write_grant_file(path: Path, grant: MicrosoftGrant) -> None:
    """Write ``grant`` as JSON to a new file (mode 0600; an existing file is an
    ``OSError``: ``O_EXCL``)."""
    data: dict[str, str] = {"type": GRANT_TYPE, "client_id": grant.client_id,
                            "tenant": grant.tenant}  # fmt: skip
    if grant.authority_host:
        data["authority_host"] = grant.authority_host
    data["token_cache"] = grant.token_cache
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def read_grant_file(path: Path) -> MicrosoftGrant:
    """A grant file of ``write_grant_file``; ``CalendarAuthFailed`` (one line, never its
    content) when it is not one."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_GRANT_FILE + 1)
    except OSError as exc:
        raise CalendarAuthFailed(
            f"{path}: the grant file cannot be read ({exc.strerror})"
        ) from None
    if len(raw) > _MAX_GRANT_FILE:
        raise CalendarAuthFailed(f"{path}: the grant file is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CalendarAuthFailed(f"{path}: the grant file is not JSON") from None
    if not isinstance(data, dict) or data.get("type") != GRANT_TYPE:
        raise CalendarAuthFailed(
            f"{path}: not a Microsoft grant (pbxcal links authorize microsoft writes one)"
        )
    missing = [name for name in ("client_id", "tenant", "token_cache")
               if not isinstance(data.get(name), str) or not data[name]]  # fmt: skip
    if missing:
        raise CalendarAuthFailed(f"{path}: the grant file misses {', '.join(missing)}")
    if not valid_tenant(data["tenant"]):
        raise CalendarAuthFailed(f"{path}: the grant file names no usable tenant")
    host = data.get("authority_host")
    if host is not None and (not isinstance(host, str) or not host.startswith("https://")):
        raise CalendarAuthFailed(f"{path}: the grant file's authority_host is not https")
    return MicrosoftGrant(data["client_id"], data["tenant"], data["token_cache"], host)
