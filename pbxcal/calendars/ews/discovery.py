"""Autodiscover: the EWS URL of a mailbox from its address, through exchangelib's own
``Autodiscovery`` (blocking: call from a worker thread).

exchangelib tries, for the address's domain, ``https://<domain>/autodiscover/
autodiscover.svc``, then ``https://autodiscover.<domain>/...``, then an HTTP redirect from
``http://autodiscover.<domain>/``, then the DNS SRV record ``_autodiscover._tcp.<domain>``
(port 443 only), and follows redirects; it checks every host name with dnspython before
connecting. ``discover_ews_url`` takes the answer's ``ExternalEwsUrl`` and nothing else
(exchangelib's protocol object and guessed auth type are not used: ``make_account`` builds
the account from the link's own settings). The found URL is the caller's to keep
(``EwsCalendarSource`` keeps it in its cursor), so the daemon does not autodiscover at
every sync.

The link's ``ca_bundle`` is trusted for every server autodiscover visits for that link
(``trusting``), and ``dns_server`` (``host:port``, tests only) replaces the system's
nameservers for exchangelib's lookups — the test seam: a loopback DNS server answering the
SRV record that points at the fake. exchangelib keeps its own autodiscover cache (a shelve
file in the temporary directory).

Errors: refused credentials → ``CalendarAuthFailed``; nothing found → ``CalendarError``
(the admin must give the EWS URL); the server unreachable → ``CalendarUnavailable``.

Must not do: run on the event loop, or accept a non-https EWS URL from autodiscover.
Start reading at ``discover_ews_url``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from exchangelib import Credentials
from exchangelib import errors as ews
from exchangelib.autodiscover import Autodiscovery

from pbxcal.calendars.ews.connection import EwsSettings, ews_errors, trusting
from pbxcal.errors import CalendarAuthFailed, CalendarError

__all__ = ["discover_ews_url"]


def discover_ews_url(settings: EwsSettings, password: str) -> str:
    """The EWS URL autodiscover gives for ``settings.mailbox`` (see the module)."""
    where = f"EWS {settings.mailbox} autodiscover"
    if settings.auth == "oauth":
        raise CalendarError(f"{where}: give the EWS URL with OAuth (autodiscover needs a password)")
    credentials: Any = Credentials(settings.username, password)
    credentials.pbxcal_channel = "autodiscover"  # its own exchangelib protocol
    discovery: Any = Autodiscovery(email=settings.mailbox, credentials=credentials)
    if settings.dns_server:
        host, _, port = settings.dns_server.rpartition(":")
        discovery.DNS_RESOLVER_KWARGS = {"configure": False}
        discovery.DNS_RESOLVER_ATTRS = {
            **Autodiscovery.DNS_RESOLVER_ATTRS,
            "nameservers": [host],
            "port": int(port),
        }
    with ews_errors(where), trusting(settings.ca_bundle):
        try:
            response, _ = discovery.discover()
        except ews.AutoDiscoverFailed:
            raise CalendarError(
                f"{where}: no autodiscover service answered for this address's domain "
                "(give the EWS URL instead)"
            ) from None
        except ews.ErrorNonExistentMailbox:
            raise CalendarError(f"{where}: the Exchange server has no such mailbox") from None
        except ews.UnauthorizedError:
            raise CalendarAuthFailed(f"{where}: the user name or password was refused") from None
    url = str(response.ews_url or "")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username:
        raise CalendarError(f"{where}: autodiscover gave no usable https EWS URL")
    return url
