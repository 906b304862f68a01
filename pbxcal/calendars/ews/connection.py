"""exchangelib set up for one EWS mailbox, and its errors mapped into pbxcal's tree.

``EwsSettings`` names what the lead stores per link (everything but the password, which
lives in the secret store); ``make_account`` builds an exchangelib ``Account`` from them
without any I/O: an explicit service endpoint (``https://mail.example/EWS/Exchange.asmx``)
and a fixed server version, so exchangelib neither autodiscovers nor probes; NTLM or basic
credentials; ``delegate`` access (the account reads its own or a delegated mailbox) or
``impersonation`` (one service account, many mailboxes: the ExchangeImpersonation SOAP
header); exchangelib's ``FailFast`` retry policy, so pbxcal's own back-off decides.

TLS verification is always on. A private CA is trusted per endpoint (``ca_bundle``, a PEM
file): exchangelib creates its requests sessions itself, so the supported hook is its
``BaseProtocol.HTTP_ADAPTER_CLS``; ``_VerifyingAdapter`` replaces requests' default
``verify=True`` by the bundle registered for the request's origin and never by ``False``.

``ews_errors`` maps exchangelib's and requests' exceptions: 401 / refused impersonation →
``CalendarAuthFailed``; ``ErrorServerBusy`` → ``CalendarRateLimited`` with the server's
BackOffMilliseconds; connection errors, timeouts, 5xx → ``CalendarUnavailable``; other EWS
response codes → ``CalendarError``. Messages name the endpoint (without user info) and the
EWS response code, never a password or the library's own text (which can hold URLs with
user info or request data).

Must not do: I/O at construction, disable TLS verification, or put a secret in a message.
Start reading at ``make_account``.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import requests.adapters
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    Version,
)
from exchangelib import errors as ews
from exchangelib.protocol import BaseProtocol

from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)

__all__ = ["EwsSettings", "ews_errors", "make_account", "origin"]

#: Seconds to wait after ErrorServerBusy when no back-off is known (exchangelib itself
#: fills in its RETRY_WAIT, 10 s, when the server names no BackOffMilliseconds).
DEFAULT_BACK_OFF = 60.0


@dataclass(frozen=True)
class EwsSettings:
    """What a link stores (no secrets): where, as whom, which mailbox.

    ``auth``: ``"ntlm"`` or ``"basic"``; ``access``: ``"delegate"`` or ``"impersonation"``
    (``username`` is then the service account); ``ca_bundle``: a PEM file trusted for this
    endpoint in addition to nothing else (``None``: the system's CAs); ``server_build``:
    the Exchange build the server runs at least (15.1 = Exchange 2016).
    """

    service_endpoint: str
    mailbox: str
    username: str
    auth: Literal["ntlm", "basic"] = "ntlm"
    access: Literal["delegate", "impersonation"] = "delegate"
    ca_bundle: str | None = None
    server_build: tuple[int, int] = (15, 1)


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL (no user info, no path)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


_bundles: dict[str, str] = {}
_bundles_lock = threading.Lock()


class _VerifyingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, trusting the CA bundle registered for the request's origin."""

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        # requests turns verify=True into REQUESTS_CA_BUNDLE's path when that is set;
        # either way the endpoint's own bundle replaces it. False is never produced here.
        if kwargs.get("verify", True) is not False and request.url:
            with _bundles_lock:
                bundle = _bundles.get(origin(request.url))
            if bundle is not None:
                kwargs["verify"] = bundle
        return super().send(request, *args, **kwargs)


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


def make_account(settings: EwsSettings, password: str, *, timeout: float) -> Any:
    """An exchangelib ``Account`` for ``settings`` (no I/O); ``timeout`` per HTTP request."""
    url = settings.service_endpoint
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
        raise CalendarError("EWS: the service endpoint must be an http(s) URL without user info")
    _install_adapter()
    _install_log_filter()
    if settings.ca_bundle is not None:
        with _bundles_lock:
            _bundles[origin(url)] = settings.ca_bundle
    config = Configuration(
        service_endpoint=url,
        credentials=Credentials(settings.username, password),
        auth_type=NTLM if settings.auth == "ntlm" else BASIC,
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


@contextmanager
def ews_errors(where: str) -> Iterator[None]:
    """Map exchangelib's and requests' exceptions raised inside into pbxcal's errors."""
    try:
        yield
    except CalendarError:
        raise
    except ews.ErrorServerBusy as exc:
        back_off = (
            exc.back_off if isinstance(exc.back_off, (int, float)) and exc.back_off > 0 else None
        )
        raise CalendarRateLimited(
            f"{where}: the Exchange server is busy (ErrorServerBusy)",
            retry_after=float(back_off) if back_off is not None else DEFAULT_BACK_OFF,
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
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
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
