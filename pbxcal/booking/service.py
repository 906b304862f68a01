"""Booking a meeting: the fresh re-check, the row the database guards, the event in the
agent's calendar, the iTIP e-mails; rescheduling and cancelling by the guest's token.

What it does, for ``book``:

1. check the input (one-line ``BookingRefused``);
2. re-read the agent's conflict calendars *now* (the daemon's ``sync_link`` of each
   conflict link; concurrent bookings share one read that started after they arrived);
3. check that the start is one of the agent's slots on that fresh data (not a
   bookable time at all: ``BookingRefused``; busy: ``SlotTaken``);
4. insert the booking row with its blocked range, the meeting widened by the agent's
   buffers now (``[start - buffer_before, end + buffer_after)``): the database refuses
   it when it meets another confirmed booking's blocked range (``BookingOverlap`` →
   ``SlotTaken``), in any number of threads or processes, so the buffers between two
   meetings hold even when two guests book neighbouring slots at the same moment;
5. create the event in the booking calendar (``writeback``); if that fails the row is
   deleted and ``ProviderFailed`` raised: nothing stays booked. The calendar's answer
   (``CreatedEvent``) gives the event's id and, where the provider added an online
   meeting (Google Meet, a Teams meeting), its join link: stored with the booking when
   it is an ``https`` address (anything else is dropped and logged);
6. e-mail the guest an iTIP ``REQUEST`` (with the join link: ``LOCATION``, ``URL``,
   RFC 7986 ``CONFERENCE`` and a line in the text) and the agent a notice (failures are
   logged: the booking stands).

``reschedule`` (SEQUENCE + 1, re-checked the same way, the blocked range taken again
from the agent's buffers now, the event updated; the join link stays) and
``cancel`` (``METHOD:CANCEL``, the event deleted) take the guest's manage token: 256
random bits, stored as its SHA-256 only (like invitations), shown once in the answer
of ``book`` and the e-mail's link. A group booking tries the free members in
round-robin order from the group's counter; the database decides races, so the next
free member is tried on ``SlotTaken``.

Start reading at ``book``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from pbxcal.booking.agents import check_email, load_agent, load_group
from pbxcal.booking.availability import check_request, forget_agent, parser_of, slots_of
from pbxcal.booking.itip import agent_notice, booking_calendar, invitation_email
from pbxcal.booking.model import (
    Agent,
    AgentNotFound,
    Booking,
    BookingRefused,
    ProviderFailed,
    SlotTaken,
)
from pbxcal.booking.writeback import BookingCalendar, calendar_for
from pbxcal.store import Store
from pbxcal.store.booking import BookingOverlap
from pbxcal.web import WebContext

log = logging.getLogger(__name__)

LANGUAGES = ("en", "nl")


def manage_url(ctx: WebContext, booking: Booking, token: str) -> str:
    """The guest's link to move or cancel ``booking``."""
    base = ctx.config.portal.public_url if ctx.config.portal is not None else ""
    return f"{base.rstrip('/')}/book/manage/{token}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def booking_from_row(row: dict[str, Any], token: str | None = None) -> Booking:
    return Booking(
        id=row["id"], agent_id=row["agent_id"], start=row["start_at"], end=row["end_at"],
        subject=row["subject"], guest_name=row["guest_name"], guest_email=row["guest_email"],
        uid=row["uid"], sequence=row["sequence"], status=row["status"],
        language=row["language"], provider_event_id=row["provider_event_id"],
        created_at=row["created_at"], reminded_at=row["reminded_at"], manage_token=token,
        blocked_start=row["blocked_start"], blocked_end=row["blocked_end"],
        join_url=row["join_url"],
    )  # fmt: skip


def blocked_range(agent: Agent, start: datetime, end: datetime) -> dict[str, datetime]:
    """The booking row's blocked range: the meeting with the agent's buffers now."""
    settings = agent.settings
    return {"blocked_start": start - timedelta(minutes=settings.buffer_before),
            "blocked_end": end + timedelta(minutes=settings.buffer_after)}  # fmt: skip


#: The longest join link kept (Teams links run to some hundreds of characters).
MAX_JOIN_URL = 2000


def join_link(url: str | None, agent: Agent) -> str | None:
    """The provider's join link if it is one to show a guest: ``https``, no spaces or
    control characters, not absurdly long; else None (logged)."""
    if url is None:
        return None
    plain = all(33 <= ord(c) < 127 for c in url)
    if url.lower().startswith("https://") and len(url) > len("https://") and plain \
            and len(url) <= MAX_JOIN_URL:  # fmt: skip
        return url
    log.warning("agent %s: the booking calendar's meeting link is not an https address "
                "(dropped)", agent.id)  # fmt: skip
    return None


async def book(
    ctx: WebContext,
    target_id: str,
    *,
    start: datetime,
    duration_minutes: int,
    subject: str,
    guest_name: str,
    guest_email: str,
    language: str = "en",
    group: bool = False,
) -> Booking:
    """Book ``target_id`` (an agent, or a group with ``group=True``); see the module."""
    subject, guest_name = _text(subject, "subject", 200), _text(guest_name, "guest_name", 100)
    check_email(guest_email, "guest_email")
    language = language if language in LANGUAGES else "en"
    if start.tzinfo is None:
        raise BookingRefused("start needs a time zone")
    start = start.astimezone(UTC)
    if not group:
        agent = await asyncio.to_thread(load_agent, ctx.store, target_id)
        return await _book_agent(
            ctx, agent, start, duration_minutes, subject, guest_name, guest_email, language
        )
    found = await asyncio.to_thread(load_group, ctx.store, target_id)
    members = [await asyncio.to_thread(load_agent, ctx.store, m) for m in found.agent_ids]
    if not members:
        raise AgentNotFound(f"group {target_id!r} has no agents")
    turn = await asyncio.to_thread(ctx.store.take_group_turn, found.id)
    order = [members[(turn + i) % len(members)] for i in range(len(members))]
    refused: BookingRefused | None = None
    for agent in order:
        try:
            return await _book_agent(
                ctx, agent, start, duration_minutes, subject, guest_name, guest_email, language
            )
        except SlotTaken:
            continue
        except BookingRefused as exc:
            refused = refused or exc
    if refused is not None and all(duration_minutes not in a.settings.durations for a in order):
        raise refused
    raise SlotTaken("no agent of the group is free at that time any more")


async def _book_agent(
    ctx: WebContext,
    agent: Agent,
    start: datetime,
    duration_minutes: int,
    subject: str,
    guest_name: str,
    guest_email: str,
    language: str,
) -> Booking:
    end = start + timedelta(minutes=duration_minutes)
    check_request(agent, start, end, duration_minutes)
    if agent.booking_link_id is None:
        raise BookingRefused(f"agent {agent.id} has no booking calendar")
    await fresh_sync(ctx, agent)
    await asyncio.to_thread(_check_slot, ctx, agent, start, duration_minutes, None)
    token = secrets.token_urlsafe(32)
    row = {
        "agent_id": agent.id, "start_at": start, "end_at": end, "subject": subject,
        "guest_name": guest_name, "guest_email": guest_email, "language": language,
        "uid": f"{uuid.uuid4()}@pbxcal", "sequence": 0, "status": "confirmed",
        "manage_token_hash": token_hash(token), **blocked_range(agent, start, end),
    }  # fmt: skip
    try:
        booking_id = await asyncio.to_thread(ctx.store.insert_booking, row)
    except BookingOverlap:
        raise SlotTaken("that time was just booked by someone else") from None
    finally:
        forget_agent(ctx.store, agent.id)
    booking = booking_from_row(
        {**row, "id": booking_id, "provider_event_id": None, "created_at": ctx.clock.now(),
         "reminded_at": None, "join_url": None}, token,
    )  # fmt: skip
    try:
        calendar = await _calendar(ctx, agent)
        created = await calendar.create(booking, _ics(ctx, booking, agent))
    except ProviderFailed as exc:
        await asyncio.to_thread(ctx.store.delete_booking, booking_id)
        forget_agent(ctx.store, agent.id)
        log.warning("agent %s: booking not written to the calendar: %s", agent.id, exc)
        raise
    written = {"provider_event_id": created.event_id,
               "join_url": join_link(created.join_url, agent)}  # fmt: skip
    await asyncio.to_thread(ctx.store.update_booking, booking_id, written)
    booking = booking_from_row(
        {**row, **written, "id": booking_id, "created_at": booking.created_at,
         "reminded_at": None}, token,
    )  # fmt: skip
    await _mail_both(ctx, booking, agent, "request", "new", token)
    return booking


async def find_booking(ctx: WebContext, token: str) -> Booking | None:
    """The booking of a manage token (without the token), or None."""
    if not token or len(token) > 100:
        return None
    row = await asyncio.to_thread(ctx.store.find_booking_by_token, token_hash(token))
    return None if row is None else booking_from_row(row)


async def reschedule(ctx: WebContext, token: str, new_start: datetime) -> Booking:
    """Move the booking to ``new_start`` (same duration); SEQUENCE + 1, re-checked."""
    booking = await _confirmed(ctx, token)
    agent = await asyncio.to_thread(load_agent, ctx.store, booking.agent_id)
    if new_start.tzinfo is None:
        raise BookingRefused("start needs a time zone")
    new_start = new_start.astimezone(UTC)
    length = booking.end - booking.start
    minutes = int(length.total_seconds() // 60)
    check_request(agent, new_start, new_start + length, minutes)
    await fresh_sync(ctx, agent)
    await asyncio.to_thread(_check_slot, ctx, agent, new_start, minutes, booking)
    changes = {"start_at": new_start, "end_at": new_start + length,
               **blocked_range(agent, new_start, new_start + length),
               "sequence": booking.sequence + 1, "reminded_at": None}  # fmt: skip
    try:
        await asyncio.to_thread(ctx.store.update_booking, booking.id, changes)
    except BookingOverlap:
        raise SlotTaken("that time was just booked by someone else") from None
    finally:
        forget_agent(ctx.store, agent.id)
    moved = booking_from_row(_row_of(booking) | changes)
    try:
        if booking.provider_event_id:
            calendar = await _calendar(ctx, agent)
            await calendar.update(booking.provider_event_id, moved, _ics(ctx, moved, agent))
    except ProviderFailed:
        blocked_start, blocked_end = booking.blocked
        back = {"start_at": booking.start, "end_at": booking.end,
                "blocked_start": blocked_start, "blocked_end": blocked_end,
                "sequence": booking.sequence, "reminded_at": booking.reminded_at}  # fmt: skip
        await asyncio.to_thread(ctx.store.update_booking, booking.id, back)
        forget_agent(ctx.store, agent.id)
        raise
    await _mail_both(ctx, moved, agent, "update", "update", token)
    return moved


async def cancel(ctx: WebContext, token: str) -> Booking:
    """Cancel the booking: the event deleted, ``METHOD:CANCEL`` sent, SEQUENCE + 1."""
    booking = await _confirmed(ctx, token)
    agent = await asyncio.to_thread(load_agent, ctx.store, booking.agent_id)
    changes = {"status": "cancelled", "sequence": booking.sequence + 1}
    await asyncio.to_thread(ctx.store.update_booking, booking.id, changes)
    forget_agent(ctx.store, agent.id)
    cancelled = booking_from_row(_row_of(booking) | changes)
    if booking.provider_event_id:
        try:
            calendar = await _calendar(ctx, agent)
            await calendar.delete(booking.provider_event_id)
        except ProviderFailed as exc:  # the guest's cancellation stands
            log.warning("agent %s: cancelled booking %d stays in the calendar: %s",
                        agent.id, booking.id, exc)  # fmt: skip
    await _mail_both(ctx, cancelled, agent, "cancel", "cancel", None)
    return cancelled


# -- the fresh re-check ----------------------------------------------------------------------

_fresh: dict[tuple[int, int], tuple[float, asyncio.Task[str]]] = {}


async def fresh_sync(ctx: WebContext, agent: Agent) -> None:
    """Read the agent's conflict calendars now (the daemon's sync); requests that arrive
    while one read runs, that started after them, share it."""
    sync = ctx.sync
    if sync is None:
        return
    arrived = time.monotonic()
    tasks = []
    for link_id in agent.conflict_link_ids:
        key = (id(sync), link_id)
        running = _fresh.get(key)
        if running is None or running[0] < arrived:
            task = asyncio.ensure_future(_sync_one(sync, link_id))
            running = (time.monotonic(), task)
            _fresh[key] = running
        tasks.append(running[1])
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException) or result not in ("changed", "unchanged"):
            raise ProviderFailed("the agent's calendar cannot be read right now; try again")


async def _sync_one(sync: Any, link_id: int) -> str:
    try:
        return str(await sync.sync_link(link_id))
    except KeyError:  # not a link this process syncs (disabled): what is stored counts
        return "unchanged"


def _check_slot(
    ctx: WebContext, agent: Agent, start: datetime, minutes: int, moving: Booking | None
) -> None:
    """``start`` is a slot on the stored (just refreshed) data, else ``SlotTaken`` when
    busy time is why, ``BookingRefused`` when the rules are (hours, notice, horizon)."""
    store: Store = ctx.store
    now = ctx.clock.now()
    parser = parser_of(ctx, agent)
    end = start + timedelta(seconds=1)
    zone = ctx.config.timezone
    ignore = moving.blocked if moving is not None else None
    skip = None  # the moved booking's own event, as its calendar gives it back
    if moving is not None:
        skip = moving.uid
        link = store.get_link(agent.booking_link_id) if agent.booking_link_id else None
        if link is not None and link.provider == "graph" and moving.provider_event_id:
            skip = moving.provider_event_id  # Graph's events are stored by Graph's id
    free = slots_of(agent, store, parser, start, end, minutes, now, default_zone=zone,
                    ignore=ignore, skip_uid=skip)  # fmt: skip
    if any(s.start == start for s in free):
        return
    bare = slots_of(agent, store, parser, start, end, minutes, now, default_zone=zone,
                    with_busy=False)  # fmt: skip
    if not any(s.start == start for s in bare):
        raise BookingRefused("that time is not bookable (outside hours, notice or horizon)")
    raise SlotTaken("that time is not free any more")


# -- helpers ---------------------------------------------------------------------------------


async def _confirmed(ctx: WebContext, token: str) -> Booking:
    booking = await find_booking(ctx, token)
    if booking is None:
        raise AgentNotFound("no such booking")
    if booking.status != "confirmed":
        raise BookingRefused("the booking is cancelled")
    return booking


async def _calendar(ctx: WebContext, agent: Agent) -> BookingCalendar:
    sync = ctx.sync
    source = None  # the daemon's source of the link (a Graph link shares its tokens)
    if sync is not None and agent.booking_link_id is not None:
        source = sync.built_source(agent.booking_link_id)

    async def saved() -> None:
        if sync is not None and agent.booking_link_id is not None:
            await sync.save_updated_secret(agent.booking_link_id)

    def build() -> BookingCalendar:
        if agent.booking_link_id is None:
            raise ProviderFailed("the agent has no booking calendar")
        link = ctx.store.get_link(agent.booking_link_id)
        if link is None:
            raise ProviderFailed("the agent's booking calendar is no longer linked")
        guard = None
        if link.settings.get("guarded") is True:
            from pbxcal.net.guard import AddressGuard

            portal = ctx.config.portal
            guard = AddressGuard(portal.allow_networks if portal else ())
        return calendar_for(ctx.store, link, guard, source=source, saved=saved)

    return await asyncio.to_thread(build)


def _ics(ctx: WebContext, booking: Booking, agent: Agent) -> bytes:
    sender = ctx.config.smtp.sender if ctx.config.smtp is not None else "noreply@invalid"
    organizer = agent.email or sender
    calendar = booking_calendar(booking, agent, organizer, buffers=agent.settings.buffers_in_event)
    return bytes(calendar.to_ical())


async def _mail_both(
    ctx: WebContext, booking: Booking, agent: Agent, kind: str, notice: str, token: str | None
) -> None:
    smtp = ctx.config.smtp
    if smtp is None:
        return
    url = manage_url(ctx, booking, token) if token else None
    messages = [invitation_email(booking, agent, smtp.sender, kind=kind, manage_url=url)]
    if agent.email:
        messages.append(agent_notice(booking, agent, smtp.sender, kind=notice))
    for message in messages:
        await send_mail(ctx, message)


async def send_mail(ctx: WebContext, message: EmailMessage) -> bool:
    """Send through ``[smtp]``; False (logged, never raised) when it fails."""
    from pbxcal.mail import MailError, send_message  # the one SMTP client of pbxcal

    smtp = ctx.config.smtp
    if smtp is None:
        return False
    try:
        await asyncio.to_thread(send_message, smtp, message)
    except MailError as exc:
        log.warning("booking e-mail to %s not sent: %s", message["To"], exc)
        return False
    return True


def _text(value: str, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BookingRefused(f"{name} is required")
    if len(value) > limit:
        raise BookingRefused(f"{name} is longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise BookingRefused(f"{name} may not hold control characters or line breaks")
    return value.strip()


def _row_of(booking: Booking) -> dict[str, Any]:
    return {
        "id": booking.id, "agent_id": booking.agent_id, "start_at": booking.start,
        "end_at": booking.end, "subject": booking.subject, "guest_name": booking.guest_name,
        "guest_email": booking.guest_email, "uid": booking.uid, "sequence": booking.sequence,
        "status": booking.status, "language": booking.language,
        "provider_event_id": booking.provider_event_id, "created_at": booking.created_at,
        "reminded_at": booking.reminded_at, "blocked_start": booking.blocked[0],
        "blocked_end": booking.blocked[1], "join_url": booking.join_url,
    }  # fmt: skip
