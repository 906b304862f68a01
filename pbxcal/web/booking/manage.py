"""The guest's own meeting behind the signed link: details, .ics, reschedule, cancel.

What it does:

* ``GET /book/manage/{token}`` shows the meeting (``pbxcal.booking.find_booking``) in
  the guest's time zone, with its online meeting's join link ("Join on
  teams.microsoft.com") where the booking calendar added one; right after booking it
  is the confirmation (``?booked=1``).
  While the meeting is ahead it offers other free times of the same length (the same
  day-by-day list as the booking page; a time leads to a "move here?" form) and a
  cancel button.
* ``GET /book/manage/{token}/meeting.ics`` is the meeting for the guest's calendar
  (``booking_ics``).
* ``POST /book/manage/{token}/reschedule`` (``at``) → ``reschedule``; ``SlotTaken``
  shows the times again with "just taken" (409). ``GET .../cancel`` asks "cancel this
  meeting?", ``POST .../cancel`` → ``cancel``.

An unknown token, a cancelled meeting and a meeting that has taken place each get a
clear page. Every POST passes ``guard.check_form`` and the rate limit first.

What it must not do: act on a POST before the CSRF check; show the token anywhere but
in this page's own address and forms.

Start at ``manage_page``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from pbxcal import booking as core
from pbxcal.web import context
from pbxcal.web.booking.guard import check_form
from pbxcal.web.booking.pages import (
    Bookable,
    find_agent,
    find_bookable,
    formatters,
    guest_query,
    link_maker,
    picked,
    refused,
    render,
    slot_list,
)
from pbxcal.web.booking.params import by_day, zone_choices

log = logging.getLogger(__name__)
MAX_TOKEN = 128


async def _booking(request: web.Request) -> tuple[core.Booking, str] | web.Response:
    """(the booking, its token), or the page that says why there is none."""
    token = request.match_info["token"]
    if not token or len(token) > MAX_TOKEN:
        return refused(request, "unknown-booking", 404)
    found = await core.find_booking(context(request), token)
    if found is None:
        return refused(request, "unknown-booking", 404)
    return found, token


async def _agent_bookable(request: web.Request, booking: core.Booking) -> Bookable | None:
    return await find_bookable(context(request), "agent", booking.agent_id)


async def manage_page(request: web.Request) -> web.StreamResponse:
    """``GET /book/manage/{token}``: see the module docstring."""
    found = await _booking(request)
    if isinstance(found, web.Response):
        return found
    booking, token = found
    return await _show(request, booking, token)


async def _show(
    request: web.Request,
    booking: core.Booking,
    token: str,
    *,
    status: int = 200,
    notice: str | None = None,
    **fixed: str,
) -> web.Response:
    ctx = context(request)
    bookable = await _agent_bookable(request, booking)
    if bookable is None:
        return refused(request, "unknown-booking", 404)
    minutes = int((booking.end - booking.start) / timedelta(minutes=1))
    bookable = Bookable(
        bookable.kind,
        bookable.id,
        bookable.name,
        bookable.path,
        bookable.timezone,
        (minutes,),
        bookable.horizon_days,
    )
    query = guest_query(request, bookable, duration=str(minutes), **fixed)
    now = ctx.clock.now()
    ahead = booking.status == "confirmed" and booking.start > now
    path = f"/book/manage/{token}"
    days: list[Any] = []
    chosen = None
    if ahead:
        slots = await slot_list(ctx, bookable, query)
        days = by_day(slots, query.zone)
        if query.at is not None:
            chosen = await picked(ctx, bookable, query, slots)
            if chosen is None:
                notice = notice or "gone"
    link = link_maker(path, query, duration=False)
    language = ctx.templates.language(request)
    return render(
        request,
        "book_manage.html",
        status=status,
        booking=booking,
        bookable=bookable,
        query=query,
        ahead=ahead,
        days=days,
        chosen=chosen,
        notice=notice,
        open_move=notice is not None
        or query.at is not None
        or "from" in request.query
        or request.query.get("move") == "1",
        booked=request.query.get("booked") == "1",
        join_host=urlsplit(booking.join_url).hostname if booking.join_url else None,
        moved=request.query.get("moved") == "1",
        path=path,
        link=link,
        link_cancel=link_maker(f"{path}/cancel", query, duration=False)(),
        lang_link=link(
            **{k: v for k, v in request.query.items() if k in ("from", "at", "booked", "moved")}
        ),
        zones=zone_choices(query.zone_name),
        **formatters(query, language),
    )


async def meeting_ics(request: web.Request) -> web.StreamResponse:
    """``GET /book/manage/{token}/meeting.ics``: the meeting for the guest's calendar."""
    found = await _booking(request)
    if isinstance(found, web.Response):
        return found
    booking, _token = found
    agent = await find_agent(context(request), booking.agent_id)
    if agent is None:
        return refused(request, "unknown-booking", 404)
    body = core.booking_ics(booking, agent)
    return web.Response(
        body=body,
        content_type="text/calendar",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="meeting.ics"'},
    )


async def reschedule(request: web.Request) -> web.StreamResponse:
    """``POST /book/manage/{token}/reschedule``: move the meeting to ``at``."""
    values = await check_form(request)
    found = await _booking(request)
    if isinstance(found, web.Response):
        return found
    booking, token = found
    fields = {k: values.get(k, "") for k in ("at", "tz")}
    if booking.status != "confirmed" or booking.start <= context(request).clock.now():
        return await _show(request, booking, token, status=409, **fields)
    bookable = await _agent_bookable(request, booking)
    if bookable is None:
        return refused(request, "unknown-booking", 404)
    query = guest_query(request, bookable, **fields)
    if query.at is None:
        return await _show(request, booking, token, status=400, notice="pick", **fields)
    try:
        moved = await core.reschedule(context(request), token, query.at)
    except core.SlotTaken:
        return await _show(
            request, booking, token, status=409, notice="taken", **{**fields, "at": ""}
        )
    except core.BookingRefused:
        return await _show(request, booking, token, status=400, notice="gone", **fields)
    except core.AgentNotFound:  # the booking or its agent went meanwhile
        return refused(request, "unknown-booking", 404)
    except core.ProviderFailed:
        return refused(request, "provider", 502)
    log.info("booking: %s moved by the guest (sequence %d)", moved.uid, moved.sequence)
    location = f"/book/manage/{token}?" + urlencode({"tz": query.zone_name, "moved": "1"})
    return web.Response(status=303, headers={"Location": location})


async def cancel_page(request: web.Request) -> web.StreamResponse:
    """``GET /book/manage/{token}/cancel``: "cancel this meeting?"."""
    found = await _booking(request)
    if isinstance(found, web.Response):
        return found
    booking, token = found
    return await _confirm_cancel(request, booking, token)


async def _confirm_cancel(
    request: web.Request, booking: core.Booking, token: str, *, status: int = 200
) -> web.Response:
    ctx = context(request)
    bookable = await _agent_bookable(request, booking)
    if bookable is None:
        return refused(request, "unknown-booking", 404)
    query = guest_query(request, bookable)
    path = f"/book/manage/{token}"
    link = link_maker(path, query, duration=False)
    return render(
        request,
        "book_cancel.html",
        status=status,
        booking=booking,
        bookable=bookable,
        query=query,
        ahead=booking.status == "confirmed" and booking.start > ctx.clock.now(),
        path=path,
        link=link,
        lang_link=link_maker(request.path, query, duration=False)(),
        **formatters(query, ctx.templates.language(request)),
    )


async def cancel(request: web.Request) -> web.StreamResponse:
    """``POST /book/manage/{token}/cancel``: cancel the meeting."""
    values = await check_form(request)
    found = await _booking(request)
    if isinstance(found, web.Response):
        return found
    booking, token = found
    ctx = context(request)
    if booking.status == "confirmed" and booking.start > ctx.clock.now():
        try:
            booking = await core.cancel(ctx, token)
        except (core.BookingRefused, core.AgentNotFound):
            pass  # cancelled meanwhile (another tab): the page says so
        else:
            log.info("booking: %s cancelled by the guest", booking.uid)
    location = f"/book/manage/{token}?" + urlencode({"tz": values.get("tz", "")})
    return web.Response(status=303, headers={"Location": location})
