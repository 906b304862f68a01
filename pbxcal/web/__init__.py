"""pbxcal's one HTTP server: probes and metrics, provider webhooks, the admin API and the
customer portal (aiohttp, server-rendered pages, no JavaScript).

The map::

    server.py     WebServer: builds one aiohttp app per listener and starts them
                  (probes + admin API on [admin] listen, portal + webhooks on
                  [portal] listen; one site when both are the same address)
    security.py   security headers on every answer, RateLimit
    cookies.py    the portal's sealed session cookie and its CSRF token
    i18n.py       Jinja2 templates with gettext (English source, Dutch catalog), language
                  choice from Accept-Language / ?lang=
    portal/       the customer pages without OAuth (invitation, CalDAV and Exchange forms,
                  status, unlink); portal/oauth*.py: Google and Microsoft sign-in
    api.py        the admin API (/api/v1)
    templates/, static/, locale/   what the pages are made of

Handlers are thin: they call the operations in ``pbxcal.admin`` that the CLI calls too.
``WebContext`` is what every handler reaches through ``context(request)``.
Start at ``server.WebServer``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pbxcal.config import Config
from pbxcal.service.clock import Clock
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store

if TYPE_CHECKING:
    from pbxcal.service.sync import CalendarSync
    from pbxcal.web.i18n import Templates


@dataclass
class WebContext:
    """What the handlers of every part (portal, OAuth, admin API) work with."""

    config: Config
    store: Store
    keys: KeyRing | None
    #: The daemon's running sync (``sync_soon`` after a link changed); None outside it.
    sync: CalendarSync | None
    clock: Clock
    metrics: Metrics
    templates: Templates
    #: ``send_invitation``-like callable for e-mail, None when ``[smtp]`` is not set.
    mailer: Callable[..., Any] | None = None
    #: The daemon re-reads its links (a link was added here); None outside it.
    links_changed: Callable[[], Awaitable[None]] | None = None
    #: Members and leases of the processes sharing a PostgreSQL store, as ``pbxcal
    #: cluster status --json`` shows them (blocking; ``StoreError``); None with SQLite.
    cluster_status: Callable[[], dict[str, object]] | None = None


CONTEXT = web.AppKey("pbxcal.web.context", WebContext)


def context(request: web.Request) -> WebContext:
    """The ``WebContext`` of the app serving ``request``."""
    return request.config_dict[CONTEXT]
