"""Access tokens for Microsoft Graph through MSAL (blocking: call from a worker thread).

* ``AppOnlyTokens`` – client credentials of an organisation's app registration
  (``ConfidentialClientApplication.acquire_token_for_client``, scope
  ``https://graph.microsoft.com/.default``); reads the mailboxes an admin names.
  MSAL keeps the app token in memory until shortly before it expires.
* ``DelegatedTokens`` – one user's grant: a serialized MSAL token cache (it holds the
  refresh token) per link, ``acquire_token_silent_with_error``. MSAL may rotate the
  refresh token: when ``changed()`` is true after a sync, store ``serialize()`` again
  (encrypted, like every secret) so the newest refresh token survives a restart.
  New grants ask for ``DELEGATED_SCOPES`` (Calendars.ReadWrite: bookings are written
  into the calendar); a grant made before holds ``READ_ONLY_SCOPES`` only, and its
  tokens are asked for with those (asking for more would need the user's consent
  again): ``can_write`` / ``grant_can_write`` tell which from the cache's scopes, and a
  booking into a read-only grant asks for the calendar to be linked again.

``authority_host`` is ``https://login.microsoftonline.com`` in production; tests point it
at ``FakeGraph`` (MSAL insists on https, so the fake speaks TLS and ``ca_file`` trusts
its certificate). Instance discovery is switched off (``instance_discovery=False``):
MSAL then fetches only ``{authority}/v2.0/.well-known/openid-configuration``.

Errors are pbxcal's: ``invalid_grant``/``interaction_required`` (refresh token revoked
or expired, consent withdrawn, no account in the cache) → ``CalendarNeedsRelink``;
``invalid_client``/``unauthorized_client`` (wrong or expired client secret) →
``CalendarAuthFailed``; an unknown tenant (discovery refused) → ``CalendarAuthFailed``;
the token endpoint unreachable or failing → ``CalendarUnavailable``.
No message carries a token, a secret or the endpoint's answer text.

Must not do: run on the event loop (MSAL uses requests), or log a token.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Protocol

import msal  # type: ignore[import-untyped]
import requests

from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarUnavailable,
)

#: Microsoft's public cloud.
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
#: App-only: whatever application permissions the admin granted (Calendars.Read,
#: MailboxSettings.Read).
APP_SCOPES = ("https://graph.microsoft.com/.default",)
#: Delegated: what a new grant asks for (``links authorize microsoft`` and the portal's
#: Microsoft sign-in): the user's calendar to read and to book meetings into, the mailbox
#: settings (working hours) to read. MSAL adds offline_access.
DELEGATED_SCOPES = (
    "https://graph.microsoft.com/Calendars.ReadWrite",
    "https://graph.microsoft.com/MailboxSettings.Read",
)
#: Delegated, reading only: what grants made before bookings were written hold.
READ_ONLY_SCOPES = (
    "https://graph.microsoft.com/Calendars.Read",
    "https://graph.microsoft.com/MailboxSettings.Read",
)
#: The permission a delegated grant needs to book meetings into the calendar.
WRITE_PERMISSION = "Calendars.ReadWrite"

_RELINK = frozenset({"invalid_grant", "interaction_required", "consent_required",
                     "login_required"})
_REFUSED = frozenset({"invalid_client", "unauthorized_client", "invalid_request",
                      "unsupported_grant_type", "invalid_scope"})
_TEMPORARY = frozenset({"temporarily_unavailable", "server_error"})


class GraphTokens(Protocol):
    """Where a ``GraphCalendarSource`` gets its bearer token (blocking)."""

    def access_token(self, fresh: bool = False) -> str:
        """A valid access token, from memory or the token endpoint (``fresh``: never the
        one in memory, which Graph just refused)."""
        ...


class AppOnlyTokens:
    """Client credentials (app-only) for tenant ``tenant``. See the module docstring."""

    def __init__(
        self, tenant: str, client_id: str, client_secret: str, *,
        authority_host: str = DEFAULT_AUTHORITY_HOST, ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._tenant = tenant
        self._client_id = client_id
        self._secret = client_secret
        self._authority = f"{authority_host.rstrip('/')}/{tenant}"
        self._ca_file = ca_file
        self._timeout = timeout
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        """Whose quota the calls use (Graph throttles per app and mailbox): the app."""
        return f"app:{self._tenant}:{self._client_id}"

    def access_token(self, fresh: bool = False) -> str:
        with self._lock:
            if self._app is None or fresh:
                # A new application forgets the refused token (MSAL 1.39 has no
                # force_refresh for client credentials).
                self._app = _msal(
                    lambda: msal.ConfidentialClientApplication(
                        self._client_id, client_credential=self._secret,
                        authority=self._authority, instance_discovery=False,
                        validate_authority=False,
                        http_client=_session(self._ca_file, self._timeout),
                    ),
                    self._where,
                )
            app = self._app
            result = _msal(lambda: app.acquire_token_for_client(scopes=list(APP_SCOPES)),
                           self._where)
            return _token(result, self._where)

    @property
    def _where(self) -> str:
        return f"Microsoft token endpoint (tenant {self._tenant!r})"


class DelegatedTokens:
    """One user's grant held in a serialized MSAL token cache. See the module docstring.

    ``client_secret`` is given for a confidential (web) app registration, ``None`` for
    a public client (the CLI's installed-app flow).
    """

    def __init__(
        self, client_id: str, token_cache: str, *, tenant: str = "organizations",
        client_secret: str | None = None, authority_host: str = DEFAULT_AUTHORITY_HOST,
        ca_file: str | None = None, timeout: float = 30.0,
        scopes: tuple[str, ...] | None = None,
    ) -> None:
        self._client_id = client_id
        self._secret = client_secret
        self._tenant = tenant
        self._authority = f"{authority_host.rstrip('/')}/{tenant}"
        self._ca_file = ca_file
        self._timeout = timeout
        self._cache = msal.SerializableTokenCache()
        try:
            self._cache.deserialize(token_cache)
        except ValueError:
            raise CalendarNeedsRelink(
                "Microsoft grant: the stored token cache is unreadable"
            ) from None
        #: Whether the grant allows writing to the calendar (None: the cache does not say).
        self.can_write = _can_write(self._cache)
        if scopes is None:  # ask for what the grant holds: more would need new consent
            scopes = READ_ONLY_SCOPES if self.can_write is False else DELEGATED_SCOPES
        self._scopes = list(scopes)
        self._app: Any = None
        self._lock = threading.Lock()
        accounts = list(self._cache.search(msal.TokenCache.CredentialType.ACCOUNT))
        home = next((str(a.get("home_account_id")) for a in accounts
                     if isinstance(a, dict) and a.get("home_account_id")), "")  # fmt: skip
        self._account = home or "unknown"

    @property
    def identity(self) -> str:
        """Whose quota the calls use: the app and the signed-in account (MSAL's home
        account id, read from the cache without I/O)."""
        return f"user:{self._client_id}:{self._account}"

    def changed(self) -> bool:
        """The cache changed (a new access or refresh token) and should be stored again."""
        return bool(self._cache.has_state_changed)

    def serialize(self) -> str:
        """The cache as text to store (a secret: it holds the refresh token)."""
        with self._lock:
            text: str = self._cache.serialize()
            self._cache.has_state_changed = False
            return text

    def access_token(self, fresh: bool = False) -> str:
        with self._lock:
            if self._app is None:
                self._app = _msal(self._build, self._where)
            app = self._app
            accounts = _msal(app.get_accounts, self._where)
            if not accounts:
                raise CalendarNeedsRelink(f"{self._where}: no account in the stored grant")
            result = _msal(
                lambda: app.acquire_token_silent_with_error(
                    self._scopes, account=accounts[0], force_refresh=fresh
                ),
                self._where,
            )
            if result is None:
                raise CalendarNeedsRelink(f"{self._where}: the grant holds no usable token")
            return _token(result, self._where)

    def _build(self) -> Any:
        options: dict[str, Any] = {
            "authority": self._authority, "instance_discovery": False,
            "validate_authority": False, "token_cache": self._cache,
            "http_client": _session(self._ca_file, self._timeout),
        }
        if self._secret is not None:
            return msal.ConfidentialClientApplication(
                self._client_id, client_credential=self._secret, **options
            )
        return msal.PublicClientApplication(self._client_id, **options)

    @property
    def _where(self) -> str:
        return f"Microsoft token endpoint (tenant {self._tenant!r})"


def grant_can_write(token_cache: str) -> bool | None:
    """Whether a delegated grant's serialized MSAL cache holds ``Calendars.ReadWrite``
    (read from the scopes of its access tokens, no I/O); None when it cannot tell."""
    cache = msal.SerializableTokenCache()
    try:
        cache.deserialize(token_cache)
    except ValueError:
        return None
    return _can_write(cache)


def _can_write(cache: Any) -> bool | None:
    granted: set[str] = set()
    for entry in cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN):
        target = entry.get("target") if isinstance(entry, dict) else None
        if isinstance(target, str):
            # "https://graph.microsoft.com/Calendars.ReadWrite" or "Calendars.ReadWrite"
            granted.update(s.rsplit("/", 1)[-1].lower() for s in target.split())
    if not granted:
        return None
    return WRITE_PERMISSION.lower() in granted


def _session(ca_file: str | None, timeout: float) -> requests.Session:
    """MSAL's HTTP client: ``verify`` and ``timeout`` on every request (a session's own
    ``verify`` loses to ``REQUESTS_CA_BUNDLE``; an explicit one does not), no retries."""
    session = requests.Session()
    session.request = functools.partial(  # type: ignore[method-assign]
        session.request, timeout=timeout, verify=ca_file if ca_file else True
    )
    return session


def _msal(call: Any, where: str) -> Any:
    """``call()`` with the transport's errors mapped (MSAL uses requests)."""
    try:
        return call()
    except msal.exceptions.MsalServiceError as exc:
        # MSAL raises this for a 5xx answer of the token endpoint.
        raise CalendarUnavailable(f"{where}: the token endpoint failed for now") from exc
    except msal.exceptions.MsalError as exc:
        raise CalendarError(f"{where}: MSAL refused ({type(exc).__name__})") from exc
    except requests.Timeout as exc:
        raise CalendarUnavailable(f"{where}: timed out") from exc
    except requests.RequestException as exc:
        raise CalendarUnavailable(f"{where}: network error ({type(exc).__name__})") from exc
    except ValueError as exc:
        # MSAL's authority discovery was refused (4xx: an unknown tenant) or answered
        # something that is not JSON; a 5xx is a requests.HTTPError above.
        raise CalendarAuthFailed(
            f"{where}: the tenant is unknown or its sign-in configuration is unusable"
        ) from exc


def _token(result: Any, where: str) -> str:
    if not isinstance(result, dict):
        raise CalendarError(f"{where}: MSAL answered nothing usable")
    token = result.get("access_token")
    if isinstance(token, str) and token:
        return token
    code = str(result.get("error") or "")
    safe = code if code.replace("_", "").isalnum() and len(code) <= 40 else "unknown"
    if code in _RELINK:
        raise CalendarNeedsRelink(f"{where}: the grant was revoked or has expired ({safe})")
    if code in _REFUSED:
        raise CalendarAuthFailed(f"{where}: the client credentials were refused ({safe})")
    if code in _TEMPORARY or not code:
        raise CalendarUnavailable(
            f"{where}: the token endpoint failed for now ({safe or 'no answer'})"
        )
    raise CalendarAuthFailed(f"{where}: no token ({safe})")
