"""Credentials for a Google link: per user (OAuth refresh token) or a Workspace service
account with domain-wide delegation.

* ``user_credentials(info)``: ``info`` is Google's *authorized-user* JSON (``client_id``,
  ``client_secret``, ``refresh_token``, optional ``token_uri``), as written by
  ``authorize.run_installed_app_flow`` or ``gcloud``/``google-auth-oauthlib``; read a
  file of it with ``authorize.read_authorized_user_file``.
* ``delegated_credentials(info, subject)``: ``info`` is a service account's JSON key
  (``type: service_account``); ``subject`` is the agent's e-mail the domain admin
  allowed the service account to act for (Admin console → Security → API controls →
  Domain-wide delegation, scope ``CALENDAR_SCOPE``).

Both raise ``CalendarAuthFailed`` for info that is not in the expected shape (the
message names the missing fields, never a value). No network: the first token is
fetched by the first sync, in a worker thread. Start reading at ``user_credentials``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import google.auth.credentials
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

from pbxcal.errors import CalendarAuthFailed

#: Read-only access to events is all pbxcal needs.
CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar.events.readonly"
#: Google's token endpoint, the default ``token_uri``.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL

_USER_FIELDS = ("client_id", "client_secret", "refresh_token")
_SERVICE_FIELDS = ("client_email", "private_key", "token_uri")


def user_credentials(
    info: Mapping[str, Any], scopes: Sequence[str] = (CALENDAR_SCOPE,)
) -> google.auth.credentials.Credentials:
    """Per-user credentials from authorized-user info (see the module docstring), for
    ``scopes`` (a link's sync: reading events only)."""
    _require(info, _USER_FIELDS, "authorized-user info")
    return oauth2_credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=str(info["refresh_token"]),
        client_id=str(info["client_id"]),
        client_secret=str(info["client_secret"]),
        token_uri=str(info.get("token_uri") or GOOGLE_TOKEN_URI),
        scopes=list(scopes),
    )


def delegated_credentials(
    info: Mapping[str, Any], subject: str
) -> google.auth.credentials.Credentials:
    """A service account acting as ``subject`` (domain-wide delegation)."""
    _require(info, _SERVICE_FIELDS, "service-account key")
    if "@" not in subject or any(ch.isspace() for ch in subject):
        raise CalendarAuthFailed("service account: the subject must be an e-mail address")
    try:
        account = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(info), scopes=[CALENDAR_SCOPE]
        )
    except (ValueError, TypeError) as exc:
        raise CalendarAuthFailed("service-account key cannot be read") from exc
    delegated: google.auth.credentials.Credentials = account.with_subject(subject)
    return delegated


def _require(info: Mapping[str, Any], fields: tuple[str, ...], what: str) -> None:
    if not isinstance(info, Mapping):
        raise CalendarAuthFailed(f"{what}: not a JSON object")
    missing = [name for name in fields if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise CalendarAuthFailed(f"{what}: missing {', '.join(missing)}")
