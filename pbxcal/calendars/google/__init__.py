"""Google Calendar as an ``IncrementalSource`` (google-api-python-client, google-auth).

Usage (the daemon keeps one ``BlockingCalls`` for all providers)::

    from pbxcal.calendars.google import GoogleCalendarSource, user_credentials
    source = GoogleCalendarSource(user_credentials(info), "primary", calls=calls)
    change_set = await source.changes(stored_cursor)   # None: nothing changed

or, for a Workspace domain, ``delegated_credentials(service_account_info,
"agent@example.com")``. ``change_set.cursor`` is Google's sync token: store it with the
rows in one transaction and pass it back next time; a 410 is handled inside (a full
change set comes back). Errors are pbxcal's (see ``source``): ``CalendarRateLimited``
→ back off ``retry_after``; ``CalendarNeedsRelink`` → the link's status "needs relink".

Modules: ``events`` (event JSON → VEVENT rows, pure), ``source`` (paging, sync tokens,
error mapping), ``credentials`` (per user / delegated), ``authorize`` (the installed-app
flow and authorized-user files). The fake for tests is ``pbxcal.testing.google_fake``.
Must not do: import this package from the core, or run its calls on the event loop.
"""

from __future__ import annotations

from pbxcal.calendars.google.credentials import (
    CALENDAR_SCOPE,
    delegated_credentials,
    user_credentials,
)
from pbxcal.calendars.google.source import GoogleCalendarSource

__all__ = [
    "CALENDAR_SCOPE",
    "GoogleCalendarSource",
    "delegated_credentials",
    "user_credentials",
]
