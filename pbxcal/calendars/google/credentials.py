"""Credentials for a Google link: per user (OAuth refresh token) or a Workspace service
account with domain-wide delegation.

* ``user_credentials(info)``: ``info`` is Google's *authorized-user* JSON (``client_id``,
  ``client_secret``, ``refresh_token``, optional ``token_uri`` and ``scopes``), as written
  by ``authorize.run_installed_app_flow``, the portal's sign-in or
  ``gcloud``/``google-auth-oauthlib``; read a file of it with
  ``authorize.read_authorized_user_file``.
* ``delegated_credentials(info, subject)``: ``info`` is a service account's JSON key
  (``type: service_account``); ``subject`` is the agent's e-mail the domain admin
  allowed the service account to act for (Admin console → Security → API controls →
  Domain-wide delegation, scope ``WRITE_SCOPE``: the sync asks for ``CALENDAR_SCOPE``,
  bookings for ``WRITE_SCOPE``).

Scopes. New grants (``links authorize google``, the portal) ask for ``WRITE_SCOPE``
(``calendar.events``: read and write events; bookings are written into the calendar) and
record what Google granted in ``info["scopes"]`` (google-auth's own authorized-user
field). A refresh may ask for no more than the grant holds (Google answers
``invalid_scope``), so ``user_credentials`` asks for the recorded scopes; a grant that
records none (made before bookings were written, or by ``gcloud``) is read with
``CALENDAR_SCOPE`` as before. ``grant_scopes`` / ``grant_can_write`` read the record.

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

#: Read-only access to events: what the sync of a grant without recorded scopes asks for.
CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar.events.readonly"
#: Read and write events (booked meetings are written): what new grants ask for.
WRITE_SCOPE = "https://www.googleapis.com/auth/calendar.events"
#: Scopes that allow ``events.insert`` (``calendar`` is the full one, e.g. from gcloud).
WRITING_SCOPES = frozenset({WRITE_SCOPE, "https://www.googleapis.com/auth/calendar"})
#: Google's token endpoint, the default ``token_uri``.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL

_USER_FIELDS = ("client_id", "client_secret", "refresh_token")
_SERVICE_FIELDS = ("client_email", "private_key", "token_uri")


def user_credentials(
    info: Mapping[str, Any], scopes: Sequence[str] | None = None
) -> google.auth.credentials.Credentials:
    """Per-user credentials from authorized-user info (see the module docstring), for
    ``scopes``; None: the scopes the grant records, else ``CALENDAR_SCOPE``."""
    _require(info, _USER_FIELDS, "authorized-user info")
    if scopes is None:
        scopes = grant_scopes(info) or (CALENDAR_SCOPE,)
    return oauth2_credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=str(info["refresh_token"]),
        client_id=str(info["client_id"]),
        client_secret=str(info["client_secret"]),
        token_uri=str(info.get("token_uri") or GOOGLE_TOKEN_URI),
        scopes=list(scopes),
    )


def grant_scopes(info: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The scopes an authorized-user ``info`` records (``scopes``: a list or one
    space-separated string, as google-auth reads it); None when it records none."""
    recorded = info.get("scopes") if isinstance(info, Mapping) else None
    if isinstance(recorded, str):
        recorded = recorded.split()
    if not isinstance(recorded, list):
        return None
    scopes = tuple(str(scope) for scope in recorded if isinstance(scope, str) and scope)
    return scopes or None


def grant_can_write(info: Mapping[str, Any]) -> bool | None:
    """Whether the grant may write events (``WRITING_SCOPES``); None: it records no scopes."""
    scopes = grant_scopes(info)
    return None if scopes is None else not WRITING_SCOPES.isdisjoint(scopes)


def delegated_credentials(
    info: Mapping[str, Any], subject: str, scopes: Sequence[str] = (CALENDAR_SCOPE,)
) -> google.auth.credentials.Credentials:
    """A service account acting as ``subject`` (domain-wide delegation), for ``scopes``
    (each must be allowed for its client ID in the Admin console, else Google's token
    endpoint answers ``unauthorized_client``)."""
    _require(info, _SERVICE_FIELDS, "service-account key")
    if "@" not in subject or any(ch.isspace() for ch in subject):
        raise CalendarAuthFailed("service account: the subject must be an e-mail address")
    try:
        account = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(info), scopes=list(scopes)
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
