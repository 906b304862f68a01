"""How a Microsoft Graph HTTP answer that is not a success becomes a pbxcal error.

What it does: ``graph_error`` is the one mapping (``GraphCalendarSource._fetch`` calls
it for every answer but 200/201/204):

* 410, ``syncStateNotFound``, ``resyncRequired``, ``syncStateInvalid`` → ``DeltaGone``
  (not an error to report: the source starts a new delta round);
* 429, 503 with ``Retry-After`` → ``CalendarRateLimited(retry_after)``;
* other 5xx → ``CalendarUnavailable``;
* 401, 403 → ``CalendarAuthFailed`` (token refused; the app may not read that mailbox);
* 404 → ``GraphNotFound`` (no such mailbox, event or subscription);
* anything else → ``CalendarError``.

What it must not do: put Graph's answer body, a token or a secret into a message (only
the status and an identifier-shaped error code). Network errors and timeouts are
mapped where the request is made (``source``), token errors in ``tokens``.
Start reading at ``graph_error``.
"""

from __future__ import annotations

import httpx

from pbxcal.calendars.changes import retry_after_seconds
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)

__all__ = ["DeltaGone", "GraphNotFound", "graph_error"]

_RESYNC_CODES = frozenset({"syncStateNotFound", "resyncRequired", "syncStateInvalid"})


class GraphNotFound(CalendarError):
    """Graph answered 404: no such mailbox, or no such subscription."""


class DeltaGone(Exception):
    """Graph no longer accepts the delta link: start a new round."""


def graph_error(response: httpx.Response, where: str) -> Exception:
    """The error for a Graph answer that is not a success; ``where`` names the mailbox."""
    status = response.status_code
    code = _code(response)
    if status == 410 or code in _RESYNC_CODES:
        return DeltaGone()
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if status == 429 or (status == 503 and retry_after is not None):
        return CalendarRateLimited(
            f"{where}: throttled ({status} {code or 'too many requests'})", retry_after
        )
    if status >= 500:
        return CalendarUnavailable(f"{where}: Graph answered {status}")
    if status in (401, 403):
        return CalendarAuthFailed(f"{where}: access refused ({status} {code or 'denied'})")
    if status == 404:
        return GraphNotFound(f"{where}: not found (404 {code})".rstrip())
    return CalendarError(f"{where}: Graph answered {status} {code}".rstrip())


def _code(response: httpx.Response) -> str:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, TypeError, KeyError):
        return ""
    text = str(code)
    return text if text.isidentifier() and len(text) <= 60 else ""
