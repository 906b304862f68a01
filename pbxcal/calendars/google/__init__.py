"""Google Calendar as an ``IncrementalSource`` (google-api-python-client, google-auth).

Usage (the daemon keeps one ``BlockingCalls`` for all providers)::

    from pbxcal.calendars.google import GoogleCalendarSource, user_credentials
    source = GoogleCalendarSource(user_credentials(info), "primary", calls=calls)
    change_set = await source.changes(stored_cursor)   # None: nothing changed

or, for a Workspace domain, ``delegated_credentials(service_account_key,
"agent@example.com")``. ``change_set.cursor`` is Google's sync token: store it with the
rows in one transaction and pass it back next time; a 410 is handled inside (a full
change set comes back). Errors are pbxcal's (see ``source``): ``CalendarRateLimited``
→ back off ``retry_after`` (with jitter); ``CalendarNeedsRelink`` → the link's status
"needs relink"; ``CalendarAuthFailed`` → "auth failed"; ``CalendarUnavailable`` →
"unreachable", the stored events keep driving the forwardings. Row UIDs are Google
event ids (see ``events``). Keep one source per link and reuse it: it holds the access
token and the connection.

Push (when ``[http] public_url`` is set): one ``push.ChannelBook`` per process;
``push.open_channel(source, book, link_id, url)`` per link, ``push.replace_channel``
before ``GoogleChannel.needs_renewal(now)``, ``source.stop_channel`` + ``book.remove``
on unlink. The webhook calls ``book.check(request.headers)``, answers at once (200 when
``Accepted``, 403 when ``Refused``; count ``book.refused`` as a metric) and, when
``wants_sync``, triggers an incremental sync of that link outside the request. Channels
live in memory: after a restart open new ones (the old ones expire; polling covers
the gap).

Modules: ``events`` (event JSON → VEVENT rows, pure), ``source`` (paging, sync tokens,
watch/stop, error mapping), ``credentials`` (per user / delegated; the scopes a grant
holds), ``push`` (channels, checking notifications), ``authorize`` (the installed-app
flow with PKCE, authorized-user and OAuth client files; imports google-auth-oauthlib, so
import it only where needed).
The fake for tests and benchmarks is ``pbxcal.testing.google_fake.FakeGoogle``.
Must not do: be imported by the core, or run its calls on the event loop.
"""

from __future__ import annotations

from pbxcal.calendars.google.credentials import (
    CALENDAR_SCOPE,
    WRITE_SCOPE,
    delegated_credentials,
    grant_can_write,
    grant_scopes,
    user_credentials,
)
from pbxcal.calendars.google.push import ChannelBook, GoogleChannel
from pbxcal.calendars.google.source import GoogleCalendarSource

__all__ = [
    "CALENDAR_SCOPE",
    "WRITE_SCOPE",
    "ChannelBook",
    "GoogleCalendarSource",
    "GoogleChannel",
    "delegated_credentials",
    "grant_can_write",
    "grant_scopes",
    "user_credentials",
]
