"""The calendars of a Google account (``calendarList.list``), for the customer portal's
"pick a calendar" page, and whose account it is.

``list_calendars(credentials, api_endpoint)`` returns ``CalendarEntry(id, summary,
primary)`` for every calendar whose events the account may read (``minAccessRole=reader``:
a free/busy-only calendar has no titles to forward by), primary first, then by name.
``account_email(entries)`` is the primary calendar's id, which Google sets to the
account's e-mail address ("You are linking anna@example.com").

Blocking (google-api-python-client over httplib2): call it in a worker thread. Errors
are mapped exactly as a sync maps them (``source._mapped``): a revoked grant →
``CalendarNeedsRelink``, a refused token → ``CalendarAuthFailed``, network, 5xx or a
timeout → ``CalendarUnavailable``. Start reading at ``list_calendars``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import google.auth.credentials
import google_auth_httplib2  # type: ignore[import-untyped]
import httplib2  # type: ignore[import-untyped]
from googleapiclient import discovery  # type: ignore[import-untyped]

from pbxcal.calendars.google.source import _mapped
from pbxcal.errors import CalendarError

#: Pages of 250 calendars one listing may read.
MAX_PAGES = 8
DEFAULT_TIMEOUT = 20.0


class CalendarEntry(NamedTuple):
    """One calendar of the account: its id (the link's ``source``), its name as the
    customer sees it, and whether it is the account's primary calendar."""

    id: str
    summary: str
    primary: bool


def list_calendars(
    credentials: google.auth.credentials.Credentials,
    api_endpoint: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[CalendarEntry]:
    """Every readable calendar of the account; see the module docstring."""
    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    service = discovery.build(
        "calendar", "v3", http=httplib2.Http(timeout=timeout), client_options=options,
        static_discovery=True, cache_discovery=False,
    )  # fmt: skip
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=timeout))
    entries: list[CalendarEntry] = []
    page_token: str | None = None
    try:
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"minAccessRole": "reader", "maxResults": 250}
            if page_token:
                params["pageToken"] = page_token
            request = service.calendarList().list(**params)

            def execute(request: Any = request) -> dict[str, Any]:
                answer: dict[str, Any] = request.execute(http=http, num_retries=0)
                return answer

            page = _mapped(execute, "calendar list")
            entries.extend(_entries(page.get("items")))
            page_token = page.get("nextPageToken")
            if not page_token:
                break
        else:
            raise CalendarError("Google calendar list: too many calendars")
    finally:
        http.close()
    return sorted(entries, key=lambda entry: (not entry.primary, entry.summary.casefold()))


def account_email(entries: list[CalendarEntry]) -> str | None:
    """The account's e-mail: the id of its primary calendar (``None`` without one)."""
    for entry in entries:
        if entry.primary and "@" in entry.id:
            return entry.id
    return None


def _entries(items: Any) -> list[CalendarEntry]:
    found: list[CalendarEntry] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        if item.get("deleted") or not item["id"] or len(item["id"]) > 256:
            continue
        name = item.get("summaryOverride") or item.get("summary") or item["id"]
        found.append(CalendarEntry(item["id"], str(name)[:200], item.get("primary") is True))
    return found
