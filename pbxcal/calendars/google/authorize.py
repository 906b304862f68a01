"""Getting a per-user Google grant: the installed-app flow, or an authorized-user file.

``run_installed_app_flow(client_config, show_url)`` is OAuth 2.0 for installed apps
(google-auth-oauthlib's ``Flow``): PKCE with S256 (a fresh code verifier per run), a
random ``state``, and a redirect to a one-shot HTTP listener on ``127.0.0.1`` with a port
the system picks. ``show_url(url)`` is the caller's way of getting the consent URL to
the user (the CLI prints it and may open a browser); the listener is
``pbxcal.calendars.loopback.LoopbackRedirect``, shared with Microsoft's flow. It asks
for offline access with ``prompt=consent``, so Google hands out a refresh token even if
the user linked before. It asks for ``credentials.WRITE_SCOPE`` (events, read and
write: bookings are written into the calendar).
It returns *authorized-user info* (``type``, ``client_id``, ``client_secret``,
``refresh_token``, ``token_uri``, and ``scopes``: what Google granted, from the token
answer's ``scope``, so later refreshes ask for no more and a booking can tell a read-only
grant), the dict ``credentials.user_credentials`` takes and the store keeps encrypted.
Google may grant other scopes than asked (earlier grants of the same client through
``include_granted_scopes``, a box the user unticked): oauthlib raises that as a
``Warning`` carrying the token, which is taken as it is.

``client_config`` is the OAuth client's JSON as the Google Cloud console downloads it
(``{"installed": {...}}``, client type "Desktop app"); read it with
``read_client_config``. ``read_authorized_user_file(path)`` reads an authorized-user JSON
(``gcloud auth application-default login`` writes one, so does google-auth-oauthlib).

Errors: ``CalendarAuthFailed`` when the user refuses, the state does not match, the
token endpoint refuses the code or hands out no refresh token, or a file is not what it
should be; ``CalendarUnavailable`` when no redirect arrives within ``timeout``. Messages
never carry a code, a token or a secret.

Must not do: run on the event loop (it blocks until the user answers: call it from a
thread or a CLI command), listen on anything but loopback, or print anything itself.
Start reading at ``run_installed_app_flow``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from google_auth_oauthlib.flow import Flow  # type: ignore[import-untyped]

from pbxcal.calendars.google.credentials import GOOGLE_TOKEN_URI, WRITE_SCOPE, grant_scopes
from pbxcal.calendars.loopback import LoopbackRedirect
from pbxcal.errors import CalendarAuthFailed

#: Seconds to wait for the user to finish in the browser.
DEFAULT_TIMEOUT = 300.0
_MAX_FILE = 64 * 1024


def run_installed_app_flow(
    client_config: Mapping[str, Any],
    show_url: Callable[[str], None],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    login_hint: str | None = None,
) -> dict[str, Any]:
    """The installed-app flow with PKCE and a loopback redirect; authorized-user info."""
    installed = _client(client_config)
    flow = Flow.from_client_config(
        {"installed": installed}, scopes=[WRITE_SCOPE], autogenerate_code_verifier=True
    )
    state = secrets.token_urlsafe(24)
    with LoopbackRedirect() as listener:
        flow.redirect_uri = f"http://127.0.0.1:{listener.port}/"
        extra = {"login_hint": login_hint} if login_hint else {}
        url, _ = flow.authorization_url(
            access_type="offline", prompt="consent", state=state,
            include_granted_scopes="true", **extra,
        )
        show_url(url)
        query = listener.wait(timeout, what="Google authorization")
    if query.get("state") != state:
        raise CalendarAuthFailed("Google authorization: the answer's state does not match")
    if "error" in query:
        raise CalendarAuthFailed(
            f"Google authorization refused ({_word(query['error'])})"
        )
    code = query.get("code")
    if not code:
        raise CalendarAuthFailed("Google authorization: the redirect carried no code")
    try:
        token: Any = flow.fetch_token(code=code)
    except Warning as changed:  # oauthlib: "Scope has changed" (other scopes granted)
        token = getattr(changed, "token", None)
    except Exception as exc:  # noqa: BLE001 - oauthlib/requests raise many kinds
        raise CalendarAuthFailed(
            f"Google authorization: the token endpoint refused the code ({type(exc).__name__})"
        ) from None
    refresh_token = token.get("refresh_token") if isinstance(token, Mapping) else None
    if not isinstance(refresh_token, str) or not refresh_token:
        raise CalendarAuthFailed("Google authorization: no refresh token was handed out")
    granted = token.get("scope") if isinstance(token, Mapping) else None
    return {
        "type": "authorized_user",
        "client_id": str(installed["client_id"]),
        "client_secret": str(installed["client_secret"]),
        "refresh_token": refresh_token,
        "token_uri": str(installed["token_uri"]),
        "scopes": list(grant_scopes({"scopes": granted}) or (WRITE_SCOPE,)),
    }


def read_client_config(path: Path) -> dict[str, Any]:
    """An OAuth client JSON file (``{"installed": {...}}``) from the Cloud console."""
    data = _read_json(path, "OAuth client file")
    _client(data)
    return data


def read_authorized_user_file(path: Path) -> dict[str, Any]:
    """An authorized-user JSON file → authorized-user info for ``user_credentials``
    (with its ``scopes`` when it records them)."""
    data = _read_json(path, "authorized-user file")
    if data.get("type", "authorized_user") != "authorized_user":
        kind = _word(data["type"])
        raise CalendarAuthFailed(f"{path}: not an authorized-user file (type {kind})")
    missing = [
        name for name in ("client_id", "client_secret", "refresh_token")
        if not isinstance(data.get(name), str) or not data[name]
    ]
    if missing:
        raise CalendarAuthFailed(f"{path}: authorized-user file misses {', '.join(missing)}")
    info: dict[str, Any] = {
        "type": "authorized_user",
        "client_id": data["client_id"],
        "client_secret": data["client_secret"],
        "refresh_token": data["refresh_token"],
        "token_uri": str(data.get("token_uri") or GOOGLE_TOKEN_URI),
    }
    scopes = grant_scopes(data)
    if scopes is not None:
        info["scopes"] = list(scopes)
    return info


def _client(config: Mapping[str, Any]) -> dict[str, Any]:
    client = config.get("installed") if isinstance(config, Mapping) else None
    if not isinstance(client, Mapping):
        raise CalendarAuthFailed(
            "OAuth client: expected a Desktop app client ({\"installed\": ...})"
        )
    missing = [
        name for name in ("client_id", "client_secret")
        if not isinstance(client.get(name), str) or not client[name]
    ]
    if missing:
        raise CalendarAuthFailed(f"OAuth client misses {', '.join(missing)}")
    result = dict(client)
    result.setdefault("auth_uri", "https://accounts.google.com/o/oauth2/auth")
    result.setdefault("token_uri", GOOGLE_TOKEN_URI)
    return result


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise CalendarAuthFailed(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if len(raw) > _MAX_FILE:
        raise CalendarAuthFailed(f"{path}: {what} is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CalendarAuthFailed(f"{path}: {what} is not JSON") from None
    if not isinstance(data, dict):
        raise CalendarAuthFailed(f"{path}: {what} is not a JSON object")
    return data


def _word(value: object) -> str:
    text = str(value)
    return text if text.isascii() and text.replace("_", "").isalnum() and len(text) < 40 else "?"
