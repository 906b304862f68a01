"""Reminder e-mails before booked meetings: a small loop in the daemon.

What it does: ``send_due_reminders(ctx)`` finds confirmed bookings whose agent's
``reminder_minutes`` before the start has come, claims each one in the store (one
conditional UPDATE of ``reminded_at``: sent once, also with several processes), and
e-mails the guest the invitation again as a reminder (``METHOD:REQUEST``, same UID and
SEQUENCE: the calendar entry stays as it is). A moved booking gets a new reminder
(``reschedule`` clears ``reminded_at``). ``reminder_loop`` runs that every
``interval`` seconds until ``stop`` is set.

Start reading at ``send_due_reminders``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from pbxcal.booking.agents import load_agent
from pbxcal.booking.itip import invitation_email
from pbxcal.booking.model import AgentNotFound
from pbxcal.booking.service import booking_from_row, send_mail
from pbxcal.web import WebContext

log = logging.getLogger(__name__)

#: Longest reminder lead time looked for (``reminder_minutes`` is at most a week).
LOOKAHEAD = timedelta(days=7, minutes=1)


async def send_due_reminders(ctx: WebContext) -> int:
    """Send every reminder that is due now; how many were sent."""
    smtp = ctx.config.smtp
    if smtp is None:
        return 0
    now = ctx.clock.now()
    rows = await asyncio.to_thread(ctx.store.due_reminders, now, now + LOOKAHEAD)
    sent = 0
    for row in rows:
        booking = booking_from_row(row)
        try:
            agent = await asyncio.to_thread(load_agent, ctx.store, booking.agent_id)
        except AgentNotFound:
            continue
        minutes = agent.settings.reminder_minutes
        if minutes is None or booking.start - timedelta(minutes=minutes) > now:
            continue
        claimed = await asyncio.to_thread(
            ctx.store.claim_reminder, booking.id, booking.sequence, now
        )
        if not claimed:
            continue
        message = invitation_email(booking, agent, smtp.sender, kind="reminder")
        if await send_mail(ctx, message):
            sent += 1
    return sent


async def reminder_loop(ctx: WebContext, stop: asyncio.Event, interval: float = 30.0) -> None:
    """``send_due_reminders`` every ``interval`` seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            await send_due_reminders(ctx)
        except Exception:  # the next round tries again
            log.exception("booking reminders failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
