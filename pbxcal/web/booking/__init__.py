"""The guests' booking pages: book a meeting with an agent or a team, and manage it.

Routes (``add_routes``, on the portal's public address)::

    GET  /book/{agent}                        pages: free times; ?at= the details form
    POST /book/{agent}                        pages: book (CSRF, rate limit)
    GET  /book/team/{group}                   the same for a team (any member free)
    POST /book/team/{group}
    GET  /book/manage/{token}                 manage: the meeting (the confirmation)
    GET  /book/manage/{token}/meeting.ics     manage: the .ics download
    POST /book/manage/{token}/reschedule      manage: move it (CSRF, rate limit)
    GET  /book/manage/{token}/cancel          manage: "cancel this meeting?"
    POST /book/manage/{token}/cancel          manage: cancel it (CSRF, rate limit)

All POSTs share one per-address limit (``pages.POST_RATE`` a minute), the manage
pages another (``MANAGE_RATE``); the booking pages are read-only and not limited.

The map: ``params.py`` reads the link's query (dates ``dd.mm.yyyy``, subject, length,
time zone) without ever failing; ``guard.py`` is the guests' CSRF defence (a signed
double-submit cookie); ``pages.py`` the booking page; ``manage.py`` the manage pages.
The booking itself (free slots, the race-proof booking, invitations) is
``pbxcal.booking``'s; these pages only call it. Server-rendered, no JavaScript,
English and Dutch (templates ``book_*.html``, catalog in ``pbxcal/web/locale``).

Start at ``pages.booking_page``.
"""

from __future__ import annotations

from aiohttp import web

from pbxcal.web import WebContext
from pbxcal.web.booking import manage
from pbxcal.web.booking.pages import (
    MANAGE_RATE,
    POST_RATE,
    booking_page,
    limited,
    unlimited,
)
from pbxcal.web.security import RateLimit


def add_routes(app: web.Application, ctx: WebContext) -> None:
    """The booking pages' routes on ``app`` (see the module docstring)."""
    del ctx  # the handlers reach it through the request
    posts = RateLimit(POST_RATE)
    pages = RateLimit(MANAGE_RATE)
    router = app.router
    router.add_get("/book/manage/{token}", limited(pages, manage.manage_page))
    router.add_get("/book/manage/{token}/meeting.ics", limited(pages, manage.meeting_ics))
    router.add_post("/book/manage/{token}/reschedule", limited(posts, manage.reschedule))
    router.add_get("/book/manage/{token}/cancel", limited(pages, manage.cancel_page))
    router.add_post("/book/manage/{token}/cancel", limited(posts, manage.cancel))
    for kind, path in (("team", "/book/team/{key}"), ("agent", "/book/{key}")):
        show, submit = booking_page(kind)
        router.add_get(path, unlimited(show))
        router.add_post(path, limited(posts, submit))
