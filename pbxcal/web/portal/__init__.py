"""The customer portal's pages without OAuth: invitation, provider choice, the CalDAV
and Exchange forms, status and unlink (OAuth sign-in lives in ``portal/oauth*.py``).

Routes (``add_routes``)::

    GET  /i/{token}       pages.invitation_handler  open an invitation (rate-limited)
    GET  /link            pages.choose_provider     Google / Microsoft 365 / CalDAV / Exchange
    GET  /link/caldav     forms.link_form(CALDAV)   the CalDAV form; POST links
    GET  /link/exchange   forms.link_form(EXCHANGE) the Exchange (EWS) form; POST links
    GET  /status          pages.status              what pbxcal understood of the calendar,
                                                    and the agent's booking settings
    POST /status/booking  pages.save_booking_settings  the booking settings form (GET:
                                                    back to /status)
    POST /unlink          pages.unlink              "Linked the wrong account?"
    GET  /static/...      the one CSS file

Every page is rendered by ``flow.page`` (templates in the customer's language) and every
POST passes ``cookies.check_csrf`` before it changes anything. Start at ``pages``.
"""

from __future__ import annotations

from aiohttp import web

from pbxcal.web import WebContext
from pbxcal.web.i18n import WEB_DIR
from pbxcal.web.portal.flow import error_pages, page
from pbxcal.web.portal.forms import FORMS, link_form
from pbxcal.web.portal.pages import (
    INVITATION_RATE,
    booking_settings_page,
    choose_provider,
    invitation_handler,
    save_booking_settings,
    status,
    unlink,
)
from pbxcal.web.security import RateLimit

STATIC_DIR = WEB_DIR / "static"


async def home(request: web.Request) -> web.StreamResponse:
    """``GET /``: customers arrive through their invitation link, not here."""
    return page(request, "refused.html", None, status=404, why="no-session")


def add_routes(app: web.Application, ctx: WebContext) -> None:
    """The portal's routes and error pages on ``app``."""
    app.middlewares.append(error_pages)
    app.router.add_get("/", home)
    app.router.add_get("/i/{token}", invitation_handler(RateLimit(INVITATION_RATE)))
    app.router.add_get("/link", choose_provider)
    for form in FORMS.values():
        app.router.add_routes(link_form(form))
    app.router.add_get("/status", status)
    app.router.add_get("/status/booking", booking_settings_page)
    app.router.add_post("/status/booking", save_booking_settings)
    app.router.add_post("/unlink", unlink)
    app.router.add_static("/static", STATIC_DIR)
