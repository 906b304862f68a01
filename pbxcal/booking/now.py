"""What an agent is doing now: calendar (meeting, forwarding) plus phone (AMI).

What it does: ``agent_now`` combines three readings, all without a provider call:
the agent's busy time from stored data (in a meeting until ...), the reconciler's plan
and applied state for the agent's extension (forwarded to ... until ...), and the
extension's phone read over AMI (``AmiPbx.read_extension_states``: device state, hint
and do-not-disturb presence: idle, in use, ringing, dnd, unavailable). The
most telling wins: on a call > ringing > do-not-disturb > in a meeting > forwarded >
free.

Start reading at ``agent_now``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from pbxcal.booking.agents import load_agent
from pbxcal.booking.availability import busy_of, parser_of
from pbxcal.booking.model import Agent, NowState
from pbxcal.web import WebContext

log = logging.getLogger(__name__)

_PHONE_TIMEOUT = 3.0


async def agent_now(ctx: WebContext, agent_id: str) -> NowState:
    """The agent's state now (``AgentNotFound`` for an unknown agent)."""
    agent = await asyncio.to_thread(load_agent, ctx.store, agent_id)
    now = ctx.clock.now()
    meeting_until = await asyncio.to_thread(_meeting_until, ctx, agent, now)
    forwarded_to, forwarded_until = _forwarding(ctx, agent, now)
    phone = await phone_state(ctx, agent)
    if phone == "in-use":
        state = "on-call"
    elif phone in ("ringing", "dnd"):
        state = phone
    elif meeting_until is not None:
        state = "in-meeting"
    elif forwarded_to:
        state = "forwarded"
    else:
        state = "free"
    return NowState(agent.id, state, meeting_until, forwarded_to, forwarded_until, phone)


def _meeting_until(ctx: WebContext, agent: Agent, now: datetime) -> datetime | None:
    parser = parser_of(ctx, agent)
    since, until = now - timedelta(days=1), now + timedelta(days=2)
    busy = busy_of(agent, ctx.store, parser, since, until, ctx.config.timezone)
    for start, end in busy:
        if start <= now < end:
            return end
    return None


def _forwarding(
    ctx: WebContext, agent: Agent, now: datetime
) -> tuple[tuple[str, ...], datetime | None]:
    if ctx.sync is None:
        return (), None
    reconciler = ctx.sync.reconciler
    applied = reconciler.applied_state(agent.pbx) or {}
    targets = tuple(applied.get(agent.extension, ()))
    plan = reconciler.plan_for((agent.pbx, agent.extension))
    until = None
    if plan is not None:
        for window in plan.windows:
            if window.start <= now < window.end:
                targets = targets or window.targets
                until = window.end
    return targets, until


async def phone_state(ctx: WebContext, agent: Agent) -> str | None:
    """The extension's device state over AMI, or None when it cannot be read."""
    if ctx.sync is None:
        return None
    pbx = ctx.sync.reconciler.pbxes.get(agent.pbx)
    while pbx is not None and not hasattr(pbx, "read_extension_states"):
        pbx = getattr(pbx, "inner", None)  # a FencedPbx wraps the adapter
    if pbx is None:
        return None
    try:
        states = await asyncio.wait_for(pbx.read_extension_states(), _PHONE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - "now" answers without the phone then
        log.info("agent %s: phone state not read: %s", agent.id, exc)
        return None
    state = states.get(agent.extension)
    return None if state is None else str(state)
