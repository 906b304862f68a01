"""Microsoft 365 / Outlook.com calendars through Microsoft Graph, as an
``IncrementalSource`` (MSAL for tokens, a small httpx client for three GET requests).

Usage (the daemon keeps one ``BlockingCalls`` for all providers)::

    from pbxcal.calendars.graph import AppOnlyTokens, DelegatedTokens, GraphCalendarSource
    # app-only: the organisation's app registration reads a mailbox the admin named
    tokens = AppOnlyTokens(tenant_id, client_id, client_secret)
    source = GraphCalendarSource(tokens, "agent@contoso.com", calls=calls)
    # delegated: the user's own grant, a serialized MSAL token cache per link
    tokens = DelegatedTokens(client_id, token_cache_text, tenant="organizations")
    source = GraphCalendarSource(tokens, None, calls=calls)        # /me
    change_set = await source.changes(stored_cursor)               # None: nothing changed
    settings = await source.mailbox_settings()                     # time zone, working hours

What a link stores: settings – provider ``graph``, tenant, client id, mailbox (app-only)
or none (delegated); secrets (encrypted) – the client secret (app-only, may be shared by
every link of one app registration) or the token cache text (delegated: the refresh
token rotates, so the source's ``updated_secret()`` hands back the changed cache, which
``CalendarSync`` stores again after each sync); state – ``change_set.cursor`` (JSON
with the window and the delta link), stored with the rows in one transaction.
``changes`` handles an expired delta link and the window's renewal inside (a full
change set comes back).

Errors are pbxcal's: ``CalendarRateLimited`` → back off ``retry_after`` (per mailbox:
every link with the same ``source.throttle_key``, i.e. app and mailbox, waits);
``CalendarNeedsRelink`` → "needs relink"; ``CalendarAuthFailed`` → "auth failed";
``CalendarUnavailable`` → "unreachable", the stored events keep driving the forwardings.
Row UIDs are Graph instance ids, one row per occurrence (see ``events``).

Push (when ``[http] public_url`` is set): one ``push.SubscriptionBook`` per process;
per link ``sub = await source.subscribe(url, lifecycle_url, expiry)`` (Graph's
validation handshake reaches the webhook before this returns: answer it with
``push.validation_token(query)``), ``book.add(sub, link)``; ``source.renew(sub, expiry)``
before ``sub.needs_renewal(now)`` and on ``reauthorizationRequired``;
``subscriptionRemoved`` → subscribe again and sync; ``changed``/``missed`` → sync that
link outside the request; unlink → ``source.unsubscribe(sub)`` + ``book.remove(sub.id)``.
Graph allows at most about 7 days (⚠ docs say 4,230 or 10,080 minutes) per expiry.

Modules: ``events`` (event JSON → rows, pure), ``source`` (delta rounds, paging,
subscriptions, writing events), ``delta`` (the cursor and a round's change set, pure),
``errors`` (Graph's HTTP answers → pbxcal errors), ``mailbox`` (time zone and working
hours, pure), ``tokens`` (MSAL), ``push`` (handshake,
checking notifications), ``authorize`` (authorization code with PKCE → the token cache
``DelegatedTokens`` reads; ``run_installed_app_flow`` and the grant file of ``links
authorize microsoft``). Links are built in ``pbxcal.calendars.providers``. The fake for
tests is ``pbxcal.testing.graph_fake.FakeGraph``.
Must not do: be imported by the core, or run its calls on the event loop.
"""

from __future__ import annotations

from pbxcal.calendars.graph.source import (
    GraphCalendarSource,
    GraphNotFound,
    GraphSubscription,
    MailboxSettings,
    WorkingHours,
)
from pbxcal.calendars.graph.tokens import AppOnlyTokens, DelegatedTokens, GraphTokens

__all__ = [
    "AppOnlyTokens",
    "DelegatedTokens",
    "GraphCalendarSource",
    "GraphNotFound",
    "GraphSubscription",
    "GraphTokens",
    "MailboxSettings",
    "WorkingHours",
]
