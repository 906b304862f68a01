"""Whose Microsoft 365 account a portal grant is, and its calendars (Graph ``/me/calendars``).

What it does: ``graph_account(settings, read_secret, grant)`` opens the grant's token
cache (``calendars.graph.tokens.DelegatedTokens`` as the confidential web app), takes
the account's e-mail from the cache (MSAL's account ``username``: the ID token's
``preferred_username``), gets an access token and lists ``GET {graph_url}/me/calendars``
(``id``, ``name``, ``isDefaultCalendar``; ``@odata.nextLink`` followed a few pages) and
offers the default calendar, the one pbxcal's Graph reader follows (``/me/calendarView``).
The grant comes back with the cache as it is now (MSAL may have rotated the refresh
token). Blocking (MSAL and requests): run it in a thread.

What it must not do: put a token or the answer's text into a message. Errors: a refused
or revoked grant → ``CalendarNeedsRelink``/``CalendarAuthFailed`` (from ``tokens``), Graph
unreachable or 5xx → ``CalendarUnavailable``, other answers → ``CalendarError``.
Start at ``graph_account``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]
import requests

from pbxcal.calendars.google.calendars import CalendarEntry
from pbxcal.config.model import PortalMicrosoft
from pbxcal.errors import CalendarAuthFailed, CalendarError, CalendarUnavailable
from pbxcal.web.portal.oauth_providers import Account

DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
MAX_PAGES = 5
TIMEOUT = 20.0
_WHERE = "Microsoft 365 calendar list"


def graph_account(
    settings: PortalMicrosoft, read_secret: Callable[[Path], str], grant: Mapping[str, Any]
) -> Account:
    """See the module docstring."""
    from pbxcal.calendars.graph.tokens import DEFAULT_AUTHORITY_HOST, DelegatedTokens

    cache_text = str(grant.get("token_cache", ""))
    email = account_username(cache_text)
    if email is None:
        raise CalendarAuthFailed("Microsoft sign-in: the grant names no account")
    tokens = DelegatedTokens(
        settings.client_id, cache_text, tenant=settings.tenant,
        client_secret=read_secret(Path(settings.client_secret_file)),
        authority_host=settings.authority_host or DEFAULT_AUTHORITY_HOST,
        ca_file=settings.ca_file, timeout=TIMEOUT,
    )  # fmt: skip
    token = tokens.access_token()
    base = (settings.graph_url or DEFAULT_GRAPH_URL).rstrip("/")
    # pbxcal's Graph reader follows the mailbox's default calendar (``/me/calendarView``),
    # so that is the one calendar offered.
    entries = [entry for entry in list_calendars(token, f"{base}/me/calendars",
                                                 settings.ca_file) if entry.primary]  # fmt: skip
    renewed = tokens.serialize() if tokens.changed() else cache_text
    return Account(email, entries, {"token_cache": renewed})


def account_username(cache_text: str) -> str | None:
    """The e-mail of the (first) account in a serialized MSAL cache."""
    cache = msal.SerializableTokenCache()
    try:
        cache.deserialize(cache_text)
    except ValueError:
        return None
    for account in cache.search(msal.TokenCache.CredentialType.ACCOUNT):
        name = account.get("username") if isinstance(account, dict) else None
        if isinstance(name, str) and "@" in name and len(name) <= 256:
            return name
    return None


def list_calendars(token: str, url: str, ca_file: str | None) -> list[CalendarEntry]:
    """``GET /me/calendars`` with paging; the default calendar first."""
    entries: list[CalendarEntry] = []
    next_url: str | None = url
    with requests.Session() as session:
        for _ in range(MAX_PAGES):
            if next_url is None:
                break
            try:
                answer = session.get(
                    next_url, headers={"Authorization": f"Bearer {token}"},
                    timeout=TIMEOUT, verify=ca_file or True, allow_redirects=False,
                )  # fmt: skip
            except requests.RequestException as exc:
                raise CalendarUnavailable(f"{_WHERE}: Graph cannot be reached "
                                          f"({type(exc).__name__})") from None  # fmt: skip
            if answer.status_code >= 500 or answer.status_code == 429:
                raise CalendarUnavailable(f"{_WHERE}: Graph answered {answer.status_code}")
            if answer.status_code in (401, 403):
                raise CalendarAuthFailed(
                    f"{_WHERE}: Graph refused the token ({answer.status_code})"
                )
            if answer.status_code != 200:
                raise CalendarError(f"{_WHERE}: Graph answered {answer.status_code}")
            try:
                body = answer.json()
            except ValueError:
                raise CalendarError(f"{_WHERE}: the answer is not JSON") from None
            entries.extend(_entries(body.get("value") if isinstance(body, dict) else None))
            link = body.get("@odata.nextLink") if isinstance(body, dict) else None
            same_host = isinstance(link, str) and link.startswith(url.split("/me/")[0])
            next_url = link if same_host else None
    return sorted(entries, key=lambda entry: (not entry.primary, entry.summary.casefold()))


def _entries(items: Any) -> list[CalendarEntry]:
    found: list[CalendarEntry] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        name = str(item.get("name") or item["id"])[:200]
        found.append(CalendarEntry(item["id"][:512], name, item.get("isDefaultCalendar") is True))
    return found
