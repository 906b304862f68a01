"""Google sign-in for the customer portal: OAuth 2.0 for web server applications with
``state`` and PKCE (S256), ending in the authorized-user info a Google link stores.

Usage (``pbxcal.web.portal.oauth`` does this)::

    client = read_web_client(Path(config.portal.google.client_file))
    url, flow_secret = begin(client, "https://pbx.example.com/oauth/google/callback")
    # keep flow_secret sealed (state, PKCE verifier, redirect URI); send the browser to url
    info = await finish(client, flow_secret, callback_query)   # authorized-user info
    await revoke(info, config.portal.google.revoke_uri)         # "not you?" / unlink

``begin`` asks for ``WEB_SCOPES`` (events, read and write: the link's sync reads them and
bookings are written into the calendar; plus the calendar list so the customer can pick
a calendar and we can show whose account it is), ``access_type=offline`` +
``prompt=consent`` (a refresh token every time, also for a customer who linked before),
a random ``state`` and a fresh PKCE verifier (43+ characters, challenge S256).
``finish`` checks the state (constant time), maps a refusal at Google to a one-line
error and redeems the code with the verifier.
``info`` is what ``credentials.user_credentials`` takes (``type``, ``client_id``,
``client_secret``, ``refresh_token``, ``token_uri``, and ``scopes``: what Google granted,
from the token answer's ``scope``, which may be less than asked when the customer unticks
a box; refreshes ask for exactly these).

Hand-written over httpx, not google-auth-oauthlib's ``Flow``: requests-oauthlib refuses a
token endpoint without TLS unless the process-wide ``OAUTHLIB_INSECURE_TRANSPORT`` is
set, which the daemon must not set just so tests can reach a loopback fake; the flow is
one URL and two POSTs, and httpx keeps them off threads. Endpoints must be https, or
http on a loopback address (the fakes).

Errors: ``CalendarAuthFailed`` (the customer said no, the code or verifier was refused,
no refresh token, a client file that is not a "Web application" client),
``CalendarError`` (a redirect that is not this sign-in's), ``CalendarUnavailable``
(Google cannot be reached or answers 5xx). Messages are one line and never carry a
code, a token, a verifier or a secret.

Must not do: keep anything itself (the caller seals ``flow_secret`` and ``info``), log,
or follow redirects of the token or revocation endpoint. Start reading at ``begin``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import google.auth.credentials
import httpx

from pbxcal.calendars.google.credentials import WRITE_SCOPE, grant_scopes, user_credentials
from pbxcal.errors import CalendarAuthFailed, CalendarError, CalendarUnavailable

#: Read the calendar list, so the customer can pick one and we know whose account it is.
CALENDAR_LIST_SCOPE = "https://www.googleapis.com/auth/calendar.calendarlist.readonly"
#: What the portal asks for: the events (synced, and booked into) and the calendar list.
WEB_SCOPES = (WRITE_SCOPE, CALENDAR_LIST_SCOPE)
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"
#: Seconds a call to Google's token or revocation endpoint may take.
DEFAULT_TIMEOUT = 20.0
_MAX_FILE = 64 * 1024
_WHERE = "Google sign-in"


@dataclass(frozen=True)
class WebClient:
    """A "Web application" OAuth client from the Google Cloud console (its JSON file's
    ``web`` object). ``client_secret`` never appears in ``repr``."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_uri: str = GOOGLE_AUTH_URI
    token_uri: str = GOOGLE_TOKEN_URI


def read_web_client(path: Path) -> WebClient:
    """``[portal.google] client_file``: ``{"web": {"client_id", "client_secret",
    "auth_uri"?, "token_uri"?}}``; ``CalendarAuthFailed`` naming the file when not."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise CalendarAuthFailed(
            f"{path}: the Google client file cannot be read ({exc.strerror})"
        ) from None
    if len(raw) > _MAX_FILE:
        raise CalendarAuthFailed(f"{path}: the Google client file is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CalendarAuthFailed(f"{path}: the Google client file is not JSON") from None
    return web_client(data, str(path))


def web_client(data: Any, where: str = "Google client") -> WebClient:
    """The ``WebClient`` of a parsed client JSON (see ``read_web_client``)."""
    web = data.get("web") if isinstance(data, dict) else None
    if not isinstance(web, dict):
        raise CalendarAuthFailed(
            f'{where}: expected a "Web application" OAuth client ({{"web": ...}})'
        )
    missing = [name for name in ("client_id", "client_secret")
               if not isinstance(web.get(name), str) or not web[name]]  # fmt: skip
    if missing:
        raise CalendarAuthFailed(f"{where}: the OAuth client misses {', '.join(missing)}")
    auth_uri = str(web.get("auth_uri") or GOOGLE_AUTH_URI)
    token_uri = str(web.get("token_uri") or GOOGLE_TOKEN_URI)
    for name, url in (("auth_uri", auth_uri), ("token_uri", token_uri)):
        if not endpoint_allowed(url):
            raise CalendarAuthFailed(f"{where}: {name} must be an https URL")
    return WebClient(web["client_id"], web["client_secret"], auth_uri, token_uri)


def begin(
    client: WebClient, redirect_uri: str, *, login_hint: str | None = None
) -> tuple[str, dict[str, str]]:
    """The authorization URL and the flow secret to keep sealed until ``finish``
    (``state``, ``code_verifier``, ``redirect_uri``)."""
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]: RFC 7636 §4.1
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(WEB_SCOPES),
        "state": state,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent select_account",
        "include_granted_scopes": "true",
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if urlsplit(client.auth_uri).query else "?"
    url = f"{client.auth_uri}{separator}{urlencode(params)}"
    return url, {"state": state, "code_verifier": verifier, "redirect_uri": redirect_uri}


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def finish(
    client: WebClient,
    flow_secret: Mapping[str, str],
    query: Mapping[str, str],
    *,
    http_timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Redeem the callback's code with the PKCE verifier; the authorized-user info."""
    expected = str(flow_secret.get("state", ""))
    if not expected or not hmac.compare_digest(
        str(query.get("state", "")).encode(), expected.encode()
    ):
        raise CalendarError(f"{_WHERE}: the answer does not belong to this sign-in")
    if query.get("error"):
        raise CalendarAuthFailed(f"{_WHERE} was not completed ({safe_word(query['error'])})")
    code = query.get("code")
    if not code:
        raise CalendarAuthFailed(f"{_WHERE}: Google's answer carried no code")
    form = {
        "grant_type": "authorization_code",
        "code": str(code),
        "redirect_uri": str(flow_secret["redirect_uri"]),
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "code_verifier": str(flow_secret["code_verifier"]),
    }
    answer = await _post(client.token_uri, form, "the token endpoint", http_timeout, transport)
    if answer.status_code >= 500:
        raise CalendarUnavailable(f"{_WHERE}: the token endpoint answered {answer.status_code}")
    body = _json(answer)
    if answer.status_code != 200:
        error = safe_word(body.get("error", answer.status_code))
        raise CalendarAuthFailed(f"{_WHERE}: Google refused the code ({error})")
    refresh_token = body.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise CalendarAuthFailed(f"{_WHERE}: Google handed out no refresh token")
    return {
        "type": "authorized_user",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "refresh_token": refresh_token,
        "token_uri": client.token_uri,
        "scopes": list(grant_scopes({"scopes": body.get("scope")}) or WEB_SCOPES),
    }


async def revoke(
    info: Mapping[str, Any],
    revoke_uri: str = GOOGLE_REVOKE_URI,
    *,
    http_timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Revoke the grant behind ``info`` (its refresh token) at Google. A token Google
    no longer knows (already revoked or expired: 400 ``invalid_token``) counts as done."""
    token = info.get("refresh_token") if isinstance(info, Mapping) else None
    if not isinstance(token, str) or not token:
        raise CalendarAuthFailed("Google revocation: the grant has no refresh token")
    if not endpoint_allowed(revoke_uri):
        raise CalendarAuthFailed("Google revocation: revoke_uri must be an https URL")
    answer = await _post(
        revoke_uri, {"token": token}, "the revocation endpoint", http_timeout, transport
    )
    if answer.status_code == 200:
        return
    if answer.status_code >= 500:
        raise CalendarUnavailable(f"Google revocation: the endpoint answered {answer.status_code}")
    error = safe_word(_json(answer).get("error", answer.status_code))
    if error == "invalid_token":
        return
    raise CalendarAuthFailed(f"Google revocation refused ({error})")


def web_credentials(info: Mapping[str, Any]) -> google.auth.credentials.Credentials:
    """Credentials for ``info`` that may read the calendar list too: the scopes the
    grant records (``WEB_SCOPES`` when it records none)."""
    return user_credentials(info, grant_scopes(info) or WEB_SCOPES)


def endpoint_allowed(url: str) -> bool:
    """https, or plain http to a loopback address (the test fakes)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.username or parts.password or not host:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def safe_word(value: object) -> str:
    """An OAuth error code fit for a message (``access_denied``), else ``?``."""
    text = str(value)
    ok = text.isascii() and text.replace("_", "").replace("-", "").isalnum() and len(text) <= 40
    return text if ok else "?"


async def _post(
    url: str, form: Mapping[str, str], what: str, http_timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.Response:
    try:
        async with httpx.AsyncClient(
            timeout=http_timeout, follow_redirects=False, transport=transport
        ) as http:
            return await http.post(url, data=dict(form), headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise CalendarUnavailable(
            f"{_WHERE}: {what} cannot be reached ({type(exc).__name__})"
        ) from None


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
