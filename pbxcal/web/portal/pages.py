"""The customer's pages around the forms: the invitation, the provider choice, the
status of the link, and "Linked the wrong account?".

What it does:

* ``GET /i/{token}`` opens an invitation (``open_invitation``; rate-limited per
  address). Unknown, expired and used invitations each get a clear page; a usable one
  starts a portal session (sealed cookie) and redirects to ``/link``, so the token
  leaves the address bar. A customer who comes back through the same link after
  linking (same browser) goes to ``/status``.
* ``GET /link`` offers the ways to link: Google and Microsoft 365 (POST forms to P2's
  ``/oauth/{provider}/start``, only when ``[portal.google]`` / ``[portal.microsoft]``
  are configured), iCloud / CalDAV and Exchange (the forms in ``forms.py``).
* ``GET /status`` shows ``link_overview``: account, calendar, last sync, status in
  words, this week's forwardings and the ignored appointments with their reasons
  (``reasons.explain``).
* When the extension is a booking agent, ``/status`` also shows the share link of its
  booking page and its settings form (``agent_settings``); ``POST /status/booking``
  (``save_booking_settings``) stores the form: CSRF first, only the session's own
  extension's agent, the admin API's checks and one-line refusals.
* ``POST /unlink`` reopens the invitation, removes the link (``remove_link`` revokes
  the grant at the provider) and returns to ``/link``: one click to start again.

What it must not do: show a secret, act on a POST before ``check_csrf``, or let a
session touch a link other than the one it made, or an agent of another extension.

Start at ``open_invitation_page``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from aiohttp import web

from pbxcal.admin.invitations import InvitationRefused, open_invitation
from pbxcal.admin.operations import LinkNotFound, link_overview, remove_link
from pbxcal.admin.tokens import hash_token
from pbxcal.booking.model import BookingError
from pbxcal.calendars.health import LINK_STATUSES
from pbxcal.web import context
from pbxcal.web.cookies import PortalSession, check_csrf, portal_session, set_session
from pbxcal.web.portal.agent_settings import NotYourAgent, load_section, save_settings
from pbxcal.web.portal.flow import calendar_name, page, require_session, see_other
from pbxcal.web.portal.reasons import explain
from pbxcal.web.security import RateLimit

log = logging.getLogger(__name__)


def _(message: str) -> str:
    """Marks a msgid for extraction; the template translates it."""
    return message


#: Opening invitations: per remote address and minute (guessing 256-bit tokens is
#: hopeless anyway; this keeps the store's load and the logs calm).
INVITATION_RATE = 30
#: Link health (``calendars.health``) in the customer's words.
STATUS_WORDS = {
    "connected": _("Working: pbxcal reads this calendar"),
    "pending": _("Not read yet"),
    "auth_failed": _("Sign-in refused: the password or permission no longer works"),
    "needs_relink": _("Sign-in expired: unlink and link again"),
    "unreachable": _("The calendar cannot be reached at the moment"),
    "invalid": _("The calendar could not be understood"),
    "disabled": _("Switched off by your phone provider"),
    "unknown": _("Unknown"),
}
#: HTTP status of each refusal page.
REFUSAL_STATUS = {"unknown": 404, "expired": 410, "used": 410}


def invitation_handler(limit: RateLimit) -> Any:
    async def open_invitation_page(request: web.Request) -> web.StreamResponse:
        """``GET /i/{token}``: see the module docstring."""
        if not limit.allow(request):
            return page(request, "refused.html", status=429, why="rate")
        ctx = context(request)
        token = request.match_info["token"]
        now = ctx.clock.now()
        try:
            invitation = await asyncio.to_thread(open_invitation, ctx.store, token, now)
        except InvitationRefused as refused:
            current = await portal_session(request)
            if (
                refused.reason == "used"
                and current is not None
                and current.token_hash == hash_token(token)
                and current.link_id is not None
            ):
                raise web.HTTPSeeOther("/status") from None
            return page(
                request,
                "invitation_refused.html",
                status=REFUSAL_STATUS.get(refused.reason, 404),
                reason=refused.reason,
            )
        session = PortalSession.start(
            invitation.id, hash_token(token), invitation.pbx, invitation.extension, now
        )
        response = see_other("/link")
        set_session(request, response, session)
        return response

    return open_invitation_page


async def choose_provider(request: web.Request) -> web.StreamResponse:
    """``GET /link``: the ways to link a calendar for this invitation."""
    session = await require_session(request)
    portal = context(request).config.portal
    return page(
        request,
        "choose.html",
        session,
        google=portal is not None and portal.google is not None,
        microsoft=portal is not None and portal.microsoft is not None,
        unlinked=request.query.get("unlinked") == "1",
    )


async def status(request: web.Request) -> web.StreamResponse:
    """``GET /status``: what pbxcal understood of the linked calendar."""
    session = await require_session(request)
    saved = request.query.get("saved")
    return await status_page(request, session, saved=saved[:40] if saved else None)


async def status_page(
    request: web.Request,
    session: PortalSession,
    *,
    status_code: int = 200,
    saved: str | None = None,
    refused: tuple[str, str, Sequence[tuple[str, str]]] | None = None,
) -> web.StreamResponse:
    """The status page; with the booking section's ``saved`` notice or ``refused``
    form (``agent_settings.load_section``)."""
    if session.link_id is None:
        raise web.HTTPSeeOther("/link")
    ctx = context(request)
    now = ctx.clock.now()
    try:
        overview = await asyncio.to_thread(
            link_overview, ctx.store, ctx.config, session.link_id, now
        )
    except LinkNotFound:  # removed meanwhile (by an admin): start again
        response = see_other("/link")
        set_session(request, response, replace(session, link_id=None))
        return response
    status_key = overview.status if overview.status in LINK_STATUSES else "unknown"
    language = ctx.templates.language(request)
    words = ctx.templates.gettext(language)
    ignored = [
        {
            "start": item.start,
            "title": item.title,
            "why": explain(item.title, str(item.reason), ctx.config.policy, words, language),
        }
        for item in overview.ignored
    ]
    public_url = ctx.config.portal.public_url if ctx.config.portal is not None else ""
    booking = await asyncio.to_thread(
        partial(
            load_section, ctx.store, public_url, session.pbx, session.extension,
            saved=saved, refused=refused,
        )
    )  # fmt: skip
    return page(
        request,
        "status.html",
        session,
        status=status_code,
        overview=overview,
        status_key=status_key,
        status_words=STATUS_WORDS[status_key],
        calendar=calendar_name(overview.link),
        ignored=ignored,
        when=_when(ctx.config.zone, language),
        now=now,
        booking=booking,
    )


def _when(zone: Any, language: str) -> Any:
    from babel.dates import format_datetime

    def when(moment: datetime | None, end: datetime | None = None) -> str:
        """A moment, or the span from ``moment`` to ``end`` (the end's date only when
        it is another day), in the config's time zone and the page's language."""
        if moment is None:
            return ""
        start = moment.astimezone(zone)
        text = format_datetime(start, "EEE d MMM HH:mm", locale=language)
        if end is None:
            return text
        until = end.astimezone(zone)
        same_day = until.date() == start.date()
        pattern = "HH:mm" if same_day else "EEE d MMM HH:mm"
        return f"{text} – {format_datetime(until, pattern, locale=language)}"

    return when


async def booking_settings_page(request: web.Request) -> web.StreamResponse:
    """``GET /status/booking`` (a bookmark of the answer to the form): the status page."""
    raise web.HTTPSeeOther("/status")


async def save_booking_settings(request: web.Request) -> web.StreamResponse:
    """``POST /status/booking``: the booking settings form of the status page (CSRF
    first; ``agent_settings.save_settings`` refuses another extension's agent)."""
    session = await require_session(request)
    await check_csrf(request, session)
    if session.link_id is None:
        raise web.HTTPSeeOther("/link")
    ctx = context(request)
    pairs = [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    try:
        agent = await asyncio.to_thread(
            save_settings, ctx.store, session.pbx, session.extension, pairs
        )
    except NotYourAgent as refused:
        log.warning(
            "portal: extension %s on %s tried to change agent %r (not theirs)",
            session.extension, session.pbx, str(refused),
        )  # fmt: skip
        return page(request, "refused.html", None, status=403, why="agent")
    except BookingError as exc:
        wanted = next((v for k, v in pairs if k == "agent"), "")
        return await status_page(request, session, status_code=400,
                                 refused=(wanted, str(exc), pairs))  # fmt: skip
    log.info(
        "portal: agent %s's booking settings changed by extension %s on %s",
        agent.id, session.extension, session.pbx,
    )  # fmt: skip
    return see_other(f"/status?saved={agent.id}#booking-{agent.id}")


async def unlink(request: web.Request) -> web.StreamResponse:
    """``POST /unlink``: "Linked the wrong account?" — remove and choose again."""
    session = await require_session(request)
    await check_csrf(request, session)
    ctx = context(request)
    if session.link_id is not None:
        link_id = session.link_id
        with contextlib.suppress(LinkNotFound):  # gone already (an admin removed it)
            await asyncio.to_thread(
                partial(remove_link, ctx.store, ctx.config, link_id, reopen_invitation=True)
            )
    response = see_other("/link?unlinked=1")
    set_session(request, response, replace(session, link_id=None))
    return response
