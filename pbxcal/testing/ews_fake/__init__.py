"""A protocol-level fake of an on-premises Exchange server's EWS endpoint, for the real
exchangelib and ``pbxcal.calendars.ews``.

``FakeEws`` is an HTTP server (HTTPS with ``tls=True``: a self-signed certificate made at
start for 127.0.0.1, localhost and ``hostnames``; ``ca_file`` is the file to trust) on a
free loopback port (or ``port``) answering ``POST /EWS/Exchange.asmx`` with SOAP shaped
like Exchange 2016's (``m:``/``t:`` namespaces, ``ResponseClass``/``ResponseCode``,
``ServerVersionInfo`` header), for the operations exchangelib sends:

* reading (``operations``): ``GetFolder`` for the distinguished folders ``root`` and
  ``calendar``; ``SyncFolderItems`` (IdOnly + ``item:UID``): ``t:Create``/``t:Update``/
  ``t:Delete`` since the sync state, ``MaxChangesReturned`` paging with
  ``IncludesLastItemInRange``, ``expire_sync_states()`` → ``ErrorInvalidSyncStateData``;
  ``GetItem`` with ``item:MimeContent`` (the stored VCALENDAR, base64, as Exchange exports
  a calendar item: a recurring master with its RRULE, EXDATEs and modified occurrences);
* writing (``writes``): ``CreateItem``, ``UpdateItem``, ``DeleteItem`` of calendar items
  (booked meetings), kept and exported as MimeContent like any item; meeting mail
  Exchange would have sent (anything but ``SendToNone`` with attendees) is logged in
  ``sent``; ``deny_writes(mailbox)`` answers writes with ``ErrorAccessDenied``;
  ``items(mailbox)`` gives the live items' VCALENDARs by UID;
* notifications (``subscriptions``): ``Subscribe`` (streaming and pull, on the calendar),
  ``GetStreamingEvents`` (a chunked response that stays open: one Envelope per
  notification, ``ConnectionStatus`` ``Closed`` after ``ConnectionTimeout`` minutes of
  ``minute`` seconds each, or at ``close_streams()``; ``drop_streams()`` cuts the
  connections; ``expire_subscriptions()`` forgets them), ``GetEvents``, ``Unsubscribe``;
  ``refuse_streaming()`` answers a streaming Subscribe with the schema fault of Exchange
  2010 RTM, ``refuse_pull()`` refuses pull subscriptions.

Autodiscover (``autodiscover``): ``POST /autodiscover/autodiscover.svc`` answers
GetUserSettings with ``ExternalEwsUrl`` = ``autodiscover_url`` (default: ``url``);
``dns.FakeDns`` is a loopback DNS server for exchangelib's A and SRV lookups.

Authentication (``server``, ``handler``, ``auth``): HTTP basic (``add_user(name,
password)``; a wrong or missing password → 401), NTLM with ``ntlm=True`` (the real
handshake, checked by pyspnego's acceptor against ``ntlm_user_file``), and OAuth bearer
tokens from the fake's own token endpoint ``POST /<tenant>/oauth2/v2.0/token`` (client
credentials of ``add_app(tenant, client_id, secret)``; a wrong secret → 401
``invalid_client``; ``issuer.revoke_consent`` → tokens refused and new ones
``invalid_grant``; ``issuer.expire_tokens`` → tokens refused with 401 ``invalid_token``;
``issuer.lifetime`` seconds). Each user may open its own mailbox or, after
``allow_impersonation(user)``, any mailbox named in an ``ExchangeImpersonation`` header
(else ``ErrorImpersonateUserDenied``); a request naming another mailbox gets
``ErrorAccessDenied``. ``fail_next(n, back_off_ms)`` answers the next ``n`` requests with
the SOAP fault ``ErrorServerBusy`` carrying ``BackOffMilliseconds``. ``requests`` logs
every SOAP request (operation, user, impersonated address, body).

Mailboxes are edited from the test (``mailbox``): ``put_item(mailbox, uid, vcalendar)``
(one item per UID; an edit keeps the item id), ``delete_item(mailbox, uid)``; each edit
bumps the version and notifies the mailbox's subscriptions.

Must not do: pretend to be complete, or be used outside tests. Start reading at
``server.FakeEws``.
"""

from pbxcal.testing.ews_fake.server import FakeEws, LoggedRequest

__all__ = ["FakeEws", "LoggedRequest"]
