"""exchangelib set up for one EWS mailbox, and its errors mapped into pbxcal's tree.

``EwsSettings`` names what the lead stores per link (everything but the password or client
secret, which lives in the secret store); ``make_account`` builds an exchangelib
``Account`` from them without any I/O: an explicit service endpoint
(``https://mail.example/EWS/Exchange.asmx``; with ``autodiscover`` the one found by
``pbxcal.calendars.ews.discovery``) and a fixed server version, so exchangelib neither
autodiscovers nor probes; NTLM or basic credentials, or OAuth (below); ``delegate``
access (the account reads its own or a delegated mailbox) or ``impersonation`` (one
service account, many mailboxes: the ExchangeImpersonation SOAP header); exchangelib's
``FailFast`` retry policy, so pbxcal's own back-off decides. ``channel`` gives the
account its own exchangelib protocol (exchangelib shares one session pool per endpoint
and credentials): the notification stream of a mailbox holds a connection for minutes
and must not take one of the syncs'.

OAuth (``auth="oauth"``, Exchange with hybrid modern auth): the client-credentials grant
of an Entra ID app registration (``tenant``, ``client_id``; the client secret is the
link's secret), through exchangelib's own ``OAuth2Credentials`` and ``OAUTH2`` auth type.
``_OAuthCredentials`` only moves the token endpoint to ``authority_host`` (tests: the
fake's, on loopback) and asks for ``<EWS origin>/.default`` (the on-premises resource),
and leaves out requests-oauthlib's auto-refresh, which would send a refresh-token grant
Entra ID refuses for client credentials: a token found expired before sending raises
``TokenExpiredError``, on which exchangelib makes a new session (a new token) and repeats
the request itself; a token the server refuses (401: expired there, or revoked) makes
exchangelib drop the session and its token, and the caller repeats its call once
(``once_more_on_expiry``): a new token, or the token endpoint's ``invalid_grant``. MSAL,
which the Graph adapter uses, is not needed: exchangelib's token URL can be pointed at the
fake by this subclass.

TLS verification is always on. A private CA is trusted per endpoint (``ca_bundle``, a PEM
file): exchangelib creates its requests sessions itself, so the supported hook is its
``BaseProtocol.HTTP_ADAPTER_CLS``; ``_VerifyingAdapter`` replaces requests' default
``verify=True`` by the bundle registered for the request's origin and never by ``False``.

``ews_errors`` maps exchangelib's, requests' and oauthlib's exceptions: 401 / refused
impersonation / a wrong client secret (``invalid_client``) → ``CalendarAuthFailed``;
withdrawn consent (``invalid_grant``) → ``CalendarNeedsRelink``; ``ErrorServerBusy`` →
``CalendarRateLimited`` with the server's BackOffMilliseconds, also held for the mailbox
(``held_for``) so its notification stream and its syncs both wait; connection errors,
timeouts, 5xx → ``CalendarUnavailable``; other EWS response codes → ``CalendarError``.
Messages name the endpoint (without user info) and the EWS response code, never a
password or the library's own text (which can hold URLs with user info or request data).

Must not do: I/O at construction, disable TLS verification, or put a secret in a message.
Start reading at ``make_account``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.exceptions
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    OAuth2Credentials,
    Version,
)
from exchangelib import errors as ews
from exchangelib.protocol import BaseProtocol
from oauthlib.oauth2.rfc6749 import errors as oauth  # type: ignore[import-untyped]

from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
)

__all__ = [
    "DEFAULT_AUTHORITY_HOST",
    "EwsSettings",
    "ews_errors",
    "held_for",
    "interrupt_stream",
    "make_account",
    "once_more_on_expiry",
    "origin",
    "trusting",
]

T = TypeVar("T")

#: Entra ID's public cloud (``auth="oauth"``).
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

#: Seconds to wait after ErrorServerBusy when no back-off is known (exchangelib itself
#: fills in its RETRY_WAIT, 10 s, when the server names no BackOffMilliseconds).
DEFAULT_BACK_OFF = 60.0


@dataclass(frozen=True)
class EwsSettings:
    """What a link stores (no secrets): where, as whom, which mailbox.

    ``auth``: ``"ntlm"``, ``"basic"`` or ``"oauth"`` (``tenant``, ``client_id``,
    ``authority_host``; ``username`` unused); ``access``: ``"delegate"`` or
    ``"impersonation"`` (``username`` or the app is then the service account);
    ``ca_bundle``: a PEM file trusted for this endpoint (and the token endpoint) in
    addition to nothing else (``None``: the system's CAs); ``server_build``: the Exchange
    build the server runs at least (15.1 = Exchange 2016); ``autodiscover``: the endpoint
    is found from the mailbox address (``service_endpoint`` is then the one found, or ""
    before; ``dns_server``, ``host:port``, tests only: the nameserver autodiscover asks).
    """

    service_endpoint: str
    mailbox: str
    username: str
    auth: Literal["ntlm", "basic", "oauth"] = "ntlm"
    access: Literal["delegate", "impersonation"] = "delegate"
    ca_bundle: str | None = None
    server_build: tuple[int, int] = (15, 1)
    tenant: str | None = None
    client_id: str | None = None
    authority_host: str = DEFAULT_AUTHORITY_HOST
    autodiscover: bool = False
    dns_server: str | None = None

    @property
    def token_url(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant}/oauth2/v2.0/token"


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL (no user info, no path)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


_bundles: dict[str, str] = {}
_bundles_lock = threading.Lock()


#: The open streamed response of each thread (GetStreamingEvents), so that another thread
#: can end a notification stream at once (``interrupt_stream``).
_streams: dict[int, requests.Response] = {}
#: Threads told to end their stream before it was open.
_cancelled: set[int] = set()


class _VerifyingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, trusting the CA bundle registered for the request's origin."""

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        # requests turns verify=True into REQUESTS_CA_BUNDLE's path when that is set;
        # either way the endpoint's own bundle replaces it. False is never produced here.
        if kwargs.get("verify", True) is not False and request.url:
            bundle = getattr(_trusted, "bundle", None)  # autodiscover's, for this link
            if bundle is None:
                with _bundles_lock:
                    bundle = _bundles.get(origin(request.url))
            if bundle is not None:
                kwargs["verify"] = bundle
        response = super().send(request, *args, **kwargs)
        if kwargs.get("stream"):
            reader = threading.get_ident()
            with _bundles_lock:
                _streams[reader] = response
                cancelled = reader in _cancelled
            if cancelled:
                interrupt_stream(reader)
        return response


_trusted = threading.local()


@contextmanager
def trusting(ca_bundle: str | None) -> Iterator[None]:
    """Within: the calling thread's requests to any origin trust ``ca_bundle`` (the
    link's; autodiscover visits servers not known beforehand)."""
    _install_adapter()
    _install_log_filter()
    previous = getattr(_trusted, "bundle", None)
    _trusted.bundle = ca_bundle
    try:
        yield
    finally:
        _trusted.bundle = previous


def interrupt_stream(thread_id: int) -> None:
    """End the streamed response the thread ``thread_id`` is reading (its socket is shut
    down, so the blocked read returns); nothing when it reads none."""
    with _bundles_lock:
        response = _streams.pop(thread_id, None)
        if response is None:
            _cancelled.add(thread_id)
            return
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def forget_stream() -> None:
    """The calling thread's streamed response is done."""
    with _bundles_lock:
        _streams.pop(threading.get_ident(), None)
        _cancelled.discard(threading.get_ident())


#: (endpoint origin, mailbox) -> {who was told: time.monotonic() until which to wait}.
_held: dict[tuple[str, str], dict[str, float]] = {}


def held_for(settings: EwsSettings, who: str) -> float:
    """Seconds ``who`` (``"sync"``, ``"notifications"``) must still wait because the
    server answered ErrorServerBusy to the mailbox's *other* connections (0: none); its
    own back-off is its caller's to keep (the sync scheduler does)."""
    now = time.monotonic()
    with _bundles_lock:
        holds = _held.get(_mailbox_key(settings), {})
        until = max((t for by, t in holds.items() if by != who), default=0.0)
    return max(until - now, 0.0)


def _hold(settings: EwsSettings, who: str, seconds: float) -> None:
    key = _mailbox_key(settings)
    with _bundles_lock:
        holds = _held.setdefault(key, {})
        holds[who] = max(holds.get(who, 0.0), time.monotonic() + seconds)


def _mailbox_key(settings: EwsSettings) -> tuple[str, str]:
    return origin(settings.service_endpoint), settings.mailbox.lower()


class _OAuthCredentials(OAuth2Credentials):  # type: ignore[misc]
    """exchangelib's client credentials, with pbxcal's token endpoint and scope."""

    def __init__(self, settings: EwsSettings, secret: str) -> None:
        super().__init__(client_id=settings.client_id, client_secret=secret,
                         tenant_id=settings.tenant)  # fmt: skip
        self.pbxcal_token_url = settings.token_url
        parts = urlsplit(settings.service_endpoint)
        self.pbxcal_scope = f"{parts.scheme}://{parts.netloc}/.default"

    @property
    def token_url(self) -> str:
        return str(self.pbxcal_token_url)

    @property
    def scope(self) -> list[str]:
        return [str(self.pbxcal_scope)]

    def session_params(self) -> dict[str, Any]:
        return {"token": self.access_token}  # no refresh-token grant (see the module)


def _install_adapter() -> None:
    if not (
        isinstance(BaseProtocol.HTTP_ADAPTER_CLS, type)
        and issubclass(BaseProtocol.HTTP_ADAPTER_CLS, _VerifyingAdapter)
    ):
        BaseProtocol.HTTP_ADAPTER_CLS = _VerifyingAdapter


_SECRET_HEADER = re.compile(
    r"""(['"](?:Authorization|Proxy-Authorization|Cookie|Set-Cookie|WWW-Authenticate)['"]\s*:\s*)"""
    r"""(['"]).*?\2""",
    re.IGNORECASE,
)


class _RedactHeaders(logging.Filter):
    """exchangelib logs request and response headers (DEBUG, and ERROR on unexpected
    failures): the Authorization header holds basic credentials. Blank those values."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        clean = _SECRET_HEADER.sub(r"\1'<redacted>'", text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


_LOGGERS_WITH_HEADERS = ("exchangelib.util", "exchangelib.util.xml", "exchangelib.protocol")


def _install_log_filter() -> None:
    for name in _LOGGERS_WITH_HEADERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactHeaders) for f in logger.filters):
            logger.addFilter(_RedactHeaders())


def make_account(
    settings: EwsSettings, password: str, *, timeout: float, channel: str = ""
) -> Any:
    """An exchangelib ``Account`` for ``settings`` (no I/O); ``timeout`` per HTTP request;
    a ``channel`` other than ``""`` gets its own connections (see the module)."""
    url = settings.service_endpoint
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
        raise CalendarError("EWS: the service endpoint must be an http(s) URL without user info")
    _install_adapter()
    _install_log_filter()
    credentials: Any
    if settings.auth == "oauth":
        if not settings.tenant or not settings.client_id:
            raise CalendarError("EWS: OAuth needs the tenant and the client id")
        if urlsplit(settings.token_url).scheme != "https" or parts.scheme != "https":
            raise CalendarError("EWS: OAuth needs https for the server and the token endpoint")
        credentials = _OAuthCredentials(settings, password)
    else:
        credentials = Credentials(settings.username, password)
    # exchangelib keys its protocol cache (and session pool) on the credentials' fields
    credentials.pbxcal_channel = channel
    if settings.ca_bundle is not None:
        with _bundles_lock:
            _bundles[origin(url)] = settings.ca_bundle
            if settings.auth == "oauth":
                _bundles[origin(settings.token_url)] = settings.ca_bundle
    config = Configuration(
        service_endpoint=url,
        credentials=credentials,
        auth_type={"ntlm": NTLM, "basic": BASIC, "oauth": OAUTH2}[settings.auth],
        version=Version(build=Build(*settings.server_build)),
        retry_policy=FailFast(),
        max_connections=2,
    )
    access = IMPERSONATION if settings.access == "impersonation" else DELEGATE
    try:
        account = Account(
            primary_smtp_address=settings.mailbox,
            config=config,
            autodiscover=False,
            access_type=access,
        )
    except ValueError as exc:
        raise CalendarError(
            f"EWS: the mailbox address is not usable ({type(exc).__name__})"
        ) from None
    account.protocol.TIMEOUT = timeout
    return account


_RELINK = frozenset({"invalid_grant", "interaction_required", "consent_required"})
_TEMPORARY = frozenset({"temporarily_unavailable", "server_error"})


@contextmanager
def ews_errors(
    where: str, settings: EwsSettings | None = None, who: str = "sync"
) -> Iterator[None]:
    """Map exchangelib's, requests' and oauthlib's exceptions raised inside into pbxcal's
    errors; with ``settings``, an ErrorServerBusy back-off is held for that mailbox's
    other connections (``held_for``)."""
    try:
        yield
    except CalendarError:
        raise
    except ews.ErrorServerBusy as exc:
        back_off = (
            exc.back_off if isinstance(exc.back_off, (int, float)) and exc.back_off > 0 else None
        )
        seconds = float(back_off) if back_off is not None else DEFAULT_BACK_OFF
        if settings is not None:
            _hold(settings, who, seconds)
        raise CalendarRateLimited(
            f"{where}: the Exchange server is busy (ErrorServerBusy)", retry_after=seconds
        ) from None
    except oauth.TokenExpiredError:
        raise  # once_more_on_expiry repeats the call with a new token
    except oauth.OAuth2Error as exc:
        code = str(exc.error or "")
        if code in _RELINK:
            raise CalendarNeedsRelink(
                f"{where}: the app's grant was withdrawn or has expired ({code})"
            ) from None
        if code in _TEMPORARY or (exc.status_code or 0) >= 500:
            raise CalendarUnavailable(f"{where}: the token endpoint failed ({code})") from None
        raise CalendarAuthFailed(
            f"{where}: the token endpoint refused the app's credentials ({code or 'refused'})"
        ) from None
    except ews.UnauthorizedError:
        raise CalendarAuthFailed(
            f"{where}: the Exchange server refused the user name or password"
        ) from None
    except (
        ews.ErrorImpersonateUserDenied,
        ews.ErrorImpersonationDenied,
        ews.ErrorImpersonationFailed,
    ) as exc:
        raise CalendarAuthFailed(
            f"{where}: the account may not impersonate this mailbox ({type(exc).__name__})"
        ) from None
    except ews.ErrorAccessDenied:
        raise CalendarAuthFailed(f"{where}: access to the mailbox's calendar was denied") from None
    except ews.ErrorNonExistentMailbox:
        raise CalendarError(f"{where}: the Exchange server has no such mailbox") from None
    except ews.RateLimitError as exc:
        raise CalendarRateLimited(
            f"{where}: the Exchange server asked to slow down", retry_after=exc.wait
        ) from None
    except (ews.ErrorTimeoutExpired, ews.ErrorInternalServerTransientError):
        # exchangelib also reports a refused connection as ErrorTimeoutExpired
        raise CalendarUnavailable(f"{where}: the Exchange server cannot be reached") from None
    except ews.ResponseMessageError as exc:
        raise CalendarError(f"{where}: the Exchange server answered {type(exc).__name__}") from None
    except requests.exceptions.SSLError:
        raise CalendarUnavailable(
            f"{where}: TLS verification of the Exchange server failed"
        ) from None
    except (
        requests.exceptions.RequestException,
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
    ):
        raise CalendarUnavailable(f"{where}: the Exchange server cannot be reached") from None
    except ews.MalformedResponseError:
        raise CalendarUnavailable(
            f"{where}: the answer is not EWS (check the service endpoint URL)"
        ) from None
    except ews.TransportError as exc:
        if _tls_failure(exc):
            raise CalendarUnavailable(
                f"{where}: TLS verification of the Exchange server failed"
            ) from None
        raise CalendarUnavailable(f"{where}: EWS request failed ({type(exc).__name__})") from None
    except ews.EWSError as exc:
        raise CalendarError(f"{where}: EWS request failed ({type(exc).__name__})") from None


def once_more_on_expiry(
    where: str, function: Callable[..., T], *args: Any, bearer: bool = False
) -> T:
    """``function(*args)``, repeated once when exchangelib found its OAuth token expired
    before sending, or (``bearer``: OAuth) the server refused the token with a 401 (expired
    there, or revoked): exchangelib has dropped that session and its token by then, so the
    second call fetches a new one — or learns from the token endpoint that the grant is
    gone."""
    retried: tuple[type[BaseException], ...] = (oauth.TokenExpiredError,)
    if bearer:
        retried += (ews.UnauthorizedError,)
    try:
        return function(*args)
    except retried:
        pass
    try:
        return function(*args)
    except oauth.TokenExpiredError:
        raise CalendarUnavailable(f"{where}: the OAuth token expired again at once") from None


def _tls_failure(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a failed TLS handshake (exchangelib wraps those)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (ssl.SSLError, requests.exceptions.SSLError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
