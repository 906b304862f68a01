"""The delegated grant: authorization code with PKCE through MSAL, ending in the
serialized token cache ``tokens.DelegatedTokens`` reads (blocking: MSAL uses requests).

Usage (``pbxcal links authorize microsoft``, later the portal)::

    authorizer = Authorizer(client_id, tenant="organizations", client_secret=None)
    start = authorizer.begin("http://localhost:8765/callback")
    # open start.url in a browser; Microsoft redirects to the redirect URI with
    # ?code=...&state=... (or ?error=access_denied)
    cache_text = authorizer.finish(start, redirect_query)   # store encrypted, per link

``begin`` asks for ``tokens.DELEGATED_SCOPES`` (MSAL adds ``offline_access``, so a
refresh token comes back), PKCE S256 and a random ``state`` (MSAL's
``initiate_auth_code_flow``); ``start.flow`` holds the PKCE verifier and the state: keep
it only until ``finish`` (in memory, or encrypted when the portal must survive a
restart). ``finish`` checks the state (a redirect of another authorization is refused)
and redeems the code. The redirect URI must be registered on the app registration
(Entra ID → Authentication: "Mobile and desktop applications" http://localhost for the
CLI; "Web" with the portal's https URL and a client secret for the portal).

Errors: the user refused consent (``access_denied``) or the code was refused →
``CalendarAuthFailed``; a redirect that does not belong to this authorization →
``CalendarError``; the endpoint unreachable → ``CalendarUnavailable``. No message
carries a code, a token or a secret.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msal  # type: ignore[import-untyped]

from pbxcal.calendars.graph.tokens import (
    DEFAULT_AUTHORITY_HOST,
    DELEGATED_SCOPES,
    _msal,
    _session,
)
from pbxcal.errors import CalendarAuthFailed, CalendarError


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
