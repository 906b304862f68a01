"""The booking page of an agent or a team: free times, the guest's details, the booking.

What it does:

* ``GET /book/{agent}`` and ``GET /book/team/{group}`` show the free times of one page
  of days (``params.DAYS_PER_PAGE``) grouped by day in the guest's time zone, with a
  small GET form to choose the meeting's length and the time zone (no JavaScript), the
  link's own dates and subject kept in every link. Each time is a link (``?at=``) to the
  same page, which then shows the form for that time: name, e-mail, subject.
* ``POST`` to the same address checks the guest's CSRF token (``guard.check_form``) and
  the rate limit, then the fields, then calls ``pbxcal.booking.book``: the booking is
  made there (re-checked against fresh calendar data). ``SlotTaken`` shows the times
  again with "that time was just taken" (409), ``BookingRefused`` the form with the
  reason (400), success a 303 to the guest's manage page (``manage.py``), which is the
  confirmation.

What it must not do: book anything before the CSRF check, or show an agent's busy
events (only free times are ever on the page).

Start at ``booking_page``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from babel.dates import format_date, format_datetime, format_time

from pbxcal import booking as core
from pbxcal.booking.agents import SLUG, load_agent, load_group
from pbxcal.booking.model import AgentNotFound
from pbxcal.web import WebContext, context
from pbxcal.web.booking.guard import FormRefused, check_form, form_field, guest_cookie
from pbxcal.web.booking.guard import set_guest_cookie as _set_cookie
from pbxcal.web.booking.params import (
    GuestQuery,
    Problem,
    by_day,
    format_moment,
    guess_zone,
    read_query,
    zone_choices,
)
from pbxcal.web.booking.params import (
    format_date as link_date,
)
from pbxcal.web.security import RateLimit

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Booking, rescheduling and cancelling: POSTs per remote address and minute. Behind a
#: reverse proxy every guest has the proxy's address (``security.RateLimit`` never
#: trusts X-Forwarded-For), so this is a site-wide ceiling there: generous for a guest,
#: slow for a script filling an agent's calendar.
POST_RATE = 20
#: Manage links opened per remote address and minute (the tokens are 256 random bits;
#: this keeps guessing and the store's load calm). The booking pages themselves are
#: not limited: they are read-only and a shared proxy address would starve them.
MANAGE_RATE = 120
MAX_NAME = 100
MAX_EMAIL = 254


def _(message: str) -> str:
    """Marks a msgid for extraction; the template translates it."""
    return message


@dataclass(frozen=True)
class Bookable:
    """An agent or a team as the page shows it."""

    kind: str  # "agent" | "team"
    id: str
    name: str
    path: str
    timezone: str
    durations: tuple[int, ...]
    horizon_days: int


async def find_agent(ctx: WebContext, agent_id: str) -> core.Agent | None:
    """The agent ``agent_id``, or None."""
    if not SLUG.fullmatch(agent_id):
        return None
    try:
        return await asyncio.to_thread(load_agent, ctx.store, agent_id)
    except AgentNotFound:
        return None


async def find_bookable(ctx: WebContext, kind: str, key: str) -> Bookable | None:
    """The agent or team ``key``, or None when there is none."""
    if not SLUG.fullmatch(key):
        return None
    if kind == "team":
        try:
            group = await asyncio.to_thread(load_group, ctx.store, key)
        except AgentNotFound:
            return None
        members = [a for a in [await find_agent(ctx, i) for i in group.agent_ids] if a]
        if not members:
            return None
        first = members[0].settings
        durations = (
            tuple(d for d in first.durations if all(d in m.settings.durations for m in members))
            or first.durations
        )
        return Bookable(
            "team",
            group.id,
            group.name,
            f"/book/team/{quote(group.id)}",
            first.timezone,
            durations,
            max(m.settings.horizon_days for m in members),
        )
    agent = await find_agent(ctx, key)
    if agent is None:
        return None
    return Bookable(
        "agent",
        agent.id,
        agent.name,
        f"/book/{quote(agent.id)}",
        agent.settings.timezone,
        agent.settings.durations,
        agent.settings.horizon_days,
    )


def guest_query(request: web.Request, bookable: Bookable, **fixed: str) -> GuestQuery:
    ctx = context(request)
    query = dict(request.query)
    query.update(fixed)
    return read_query(
        query,
        now=ctx.clock.now(),
        horizon_days=bookable.horizon_days,
        durations=bookable.durations,
        default_zone=guess_zone(request.headers.get("Accept-Language"), bookable.timezone),
    )


def link_maker(path: str, query: GuestQuery, *, duration: bool = True) -> Callable[..., str]:
    """``link(**changes)``: ``path`` with the guest's choices and ``changes`` as query."""
    base: dict[str, str] = {"tz": query.zone_name}
    if duration:
        base["duration"] = str(query.duration)
    for name, value in (
        ("start", query.start_text),
        ("end", query.end_text),
        ("subject", query.subject),
    ):
        if value:
            base[name] = value

    def link(**changes: Any) -> str:
        values = {**base, **{k: str(v) for k, v in changes.items() if v is not None}}
        return f"{path}?{urlencode(values)}"

    return link


def formatters(query: GuestQuery, language: str) -> dict[str, Any]:
    """Date and time words in the guest's zone and language for the templates."""
    zone = query.zone

    def day(value: Any) -> str:
        return format_date(value, "EEEE d MMMM", locale=language)

    def clock(moment: datetime) -> str:
        return format_time(moment.astimezone(zone), "short", locale=language)

    def when(moment: datetime) -> str:
        local = moment.astimezone(zone)
        return f"{format_date(local, 'full', locale=language)} {clock(moment)}"

    def span(start: datetime, end: datetime) -> str:
        return f"{when(start)} – {clock(end)}"

    def short_day(value: Any) -> str:
        return format_datetime(value, "EEE d MMM", locale=language)

    return {
        "day": day,
        "clock": clock,
        "when": when,
        "span": span,
        "short_day": short_day,
        "link_date": link_date,
        "moment": format_moment,
    }


def render(request: web.Request, name: str, *, status: int = 200, **values: Any) -> web.Response:
    """A guest page in the guest's language, with the form token of their cookie;
    ``mail`` tells the page whether invitations are e-mailed (``[smtp]`` is set)."""
    cookie, new = guest_cookie(request)
    ctx = context(request)
    response = ctx.templates.render(
        request,
        name,
        status=status,
        csrf=form_field(request, cookie),
        mail=ctx.config.smtp is not None,
        **values,
    )
    if new:
        _set_cookie(request, response, cookie)
    return response


def refused(request: web.Request, why: str, status: int) -> web.Response:
    return context(request).templates.render(
        request, "book_refused.html", status=status, why=why, lang_link=None
    )


async def slot_list(ctx: WebContext, bookable: Bookable, query: GuestQuery) -> list[core.Slot]:
    """The free slots of the page's days (UTC, sorted)."""
    start, end = query.window()
    if bookable.kind == "team":
        slots = await core.group_slots(ctx, bookable.id, start, end, query.duration)
    else:
        slots = await core.available_slots(ctx, bookable.id, start, end, query.duration)
    return sorted(slots, key=lambda slot: slot.start)


async def show_slots(
    request: web.Request,
    bookable: Bookable,
    query: GuestQuery,
    *,
    status: int = 200,
    notice: str | None = None,
    form: Mapping[str, str] | None = None,
    error: Problem | None = None,
) -> web.Response:
    """The booking page: the times, or the details form when a free time was picked."""
    ctx = context(request)
    language = ctx.templates.language(request)
    slots = await slot_list(ctx, bookable, query)
    chosen = None
    problems = list(query.problems)
    if query.at is not None:
        chosen = await picked(ctx, bookable, query, slots)
        if chosen is None and error is None:
            notice = notice or "gone"
    link = link_maker(bookable.path, query)
    return render(
        request,
        "book_page.html",
        status=status,
        bookable=bookable,
        query=query,
        days=by_day(slots, query.zone),
        chosen=chosen,
        problems=problems,
        notice=notice,
        error=error,
        form=form or {"subject": query.subject},
        link=link,
        lang_link=link_maker(request.path, query)(**_kept(request)),
        zones=zone_choices(query.zone_name),
        action=link(),
        **formatters(query, language),
    )


def _kept(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.query.items() if k in ("from", "at")}


async def picked(
    ctx: WebContext, bookable: Bookable, query: GuestQuery, shown: list[core.Slot]
) -> core.Slot | None:
    """The free slot at ``query.at``: one of the ``shown`` ones, or (a time on another
    page's days) checked on its own; None when it is not free."""
    at = query.at
    if at is None:
        return None
    found = next((slot for slot in shown if slot.start == at), None)
    start, end = query.window()
    if found is not None or start <= at < end:
        return found
    day = at.astimezone(query.zone).date()
    if not query.first_day <= day <= query.last_day:
        return None
    until = at + timedelta(minutes=query.duration)
    if bookable.kind == "team":
        slots = await core.group_slots(ctx, bookable.id, at, until, query.duration)
    else:
        slots = await core.available_slots(ctx, bookable.id, at, until, query.duration)
    return next((slot for slot in slots if slot.start == at), None)


def unlimited(handler: Handler) -> Handler:
    """``handler`` with the refusal page for a failed CSRF check, without a limit."""
    return limited(None, handler)


def limited(limit: RateLimit | None, handler: Handler) -> Handler:
    """``handler`` behind ``limit`` and with the refusal page for a failed CSRF check."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if limit is not None and not limit.allow(request):
            return refused(request, "rate", 429)
        try:
            return await handler(request)
        except FormRefused as why:
            log.info("booking: %s %s refused (csrf: %s)", request.method, request.path, why.why)
            return refused(request, "form", 403)

    return guarded


def _bookable_of(kind: str) -> Callable[[web.Request], Awaitable[Bookable]]:
    async def bookable(request: web.Request) -> Bookable:
        key = request.match_info["key"]
        found = await find_bookable(context(request), kind, key)
        if found is None:
            raise _NotFound
        return found

    return bookable


class _NotFound(Exception):
    pass


def booking_page(kind: str) -> tuple[Handler, Handler]:
    """(GET, POST) handlers of ``/book/{agent}`` (kind "agent") or ``/book/team/{group}``."""
    lookup = _bookable_of(kind)

    async def show(request: web.Request) -> web.StreamResponse:
        try:
            bookable = await lookup(request)
        except _NotFound:
            return refused(request, "unknown-" + kind, 404)
        return await show_slots(request, bookable, guest_query(request, bookable))

    async def submit(request: web.Request) -> web.StreamResponse:
        values = await check_form(request)
        try:
            bookable = await lookup(request)
        except _NotFound:
            return refused(request, "unknown-" + kind, 404)
        query = guest_query(request, bookable, **_slot_fields(values))
        if query.at is None:
            return await show_slots(request, bookable, query, status=400, notice="pick")
        bad = check_guest(values)
        if bad is not None:
            return await show_slots(request, bookable, query, status=400, form=values, error=bad)
        ctx = context(request)
        try:
            made = await core.book(
                ctx,
                bookable.id,
                start=query.at,
                duration_minutes=query.duration,
                subject=values["subject"].strip(),
                guest_name=values["name"].strip(),
                guest_email=values["email"].strip(),
                language=ctx.templates.language(request),
                group=bookable.kind == "team",
            )
        except core.SlotTaken:
            taken = guest_query(request, bookable, **{**_slot_fields(values), "at": ""})
            return await show_slots(request, bookable, taken, status=409, notice="taken")
        except core.BookingRefused as exc:
            return await show_slots(
                request,
                bookable,
                query,
                status=400,
                form=values,
                error=Problem(_("This booking was refused: %(value)s"), str(exc)),
            )
        except core.ProviderFailed:
            log.warning("booking: the calendar of %s %s refused the event", kind, bookable.id)
            return refused(request, "provider", 502)
        except core.AgentNotFound:  # removed (or emptied) while the guest was choosing
            return refused(request, "unknown-" + kind, 404)
        assert made.manage_token is not None
        log.info("booking: %s booked with %s %s", made.uid, kind, bookable.id)
        location = f"/book/manage/{made.manage_token}?" + urlencode(
            {"tz": query.zone_name, "booked": "1"}
        )
        return web.Response(status=303, headers={"Location": location})

    return show, submit


def _slot_fields(values: Mapping[str, str]) -> dict[str, str]:
    """The slot's choices a form carries (the rest of the query is in the URL)."""
    return {k: values.get(k, "") for k in ("at", "duration", "tz")}


def check_guest(values: Mapping[str, str]) -> Problem | None:
    """The first problem with the guest's name, e-mail and subject, or None."""
    name = values.get("name", "").strip()
    email = values.get("email", "").strip()
    subject = values.get("subject", "").strip()
    if not name:
        return Problem(_("Please fill in your name."))
    if len(name) > MAX_NAME or _control(name):
        return Problem(_("This name is too long or not plain text."))
    if not email:
        return Problem(_("Please fill in your e-mail address."))
    if len(email) > MAX_EMAIL or not _looks_like_email(email):
        return Problem(_("'%(value)s' is not an e-mail address."), email[:60])
    if not subject:
        return Problem(_("Please say what the meeting is about."))
    if len(subject) > 200 or _control(subject):
        return Problem(_("This subject is too long or not plain text."))
    return None


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _looks_like_email(text: str) -> bool:
    local, at, domain = text.rpartition("@")
    return (
        bool(at and local and domain)
        and "." in domain.strip(".")
        and not any(c.isspace() or c in '<>,;"()[]\\' for c in text)
        and not _control(text)
    )
