"""Outbound connections to addresses customers typed: the SSRF guard.

A URL a customer types (a CalDAV server, an ICS feed, an EWS endpoint) is https only and
may not reach loopback, private, link-local, metadata or other non-public addresses,
checked after DNS resolution and again for every connection (redirects included),
unless an admin allows a range in ``[portal] allow_networks``.

* ``guard.py``: ``check_url`` (the form-time check) and ``AddressGuard`` (one host);
* ``addresses.py``: which IP addresses are allowed (pure);
* ``httpx_guard.py``: httpx transports whose connections pass the guard (ICS);
* ``urllib3_guard.py``: the same for niquests (caldav) and requests.

Nothing here stores or logs anything. Start reading at ``guard.check_url``.
"""

from pbxcal.net.guard import (
    AddressGuard,
    CheckedUrl,
    HostNotFound,
    UrlRefused,
    check_url,
    check_url_async,
)

__all__ = [
    "AddressGuard",
    "CheckedUrl",
    "HostNotFound",
    "UrlRefused",
    "check_url",
    "check_url_async",
]
