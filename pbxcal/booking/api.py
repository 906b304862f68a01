"""The admin API's agent routes (``/api/v1/agents...``), registered by ``pbxcal.web.api``.

What it does: agents (list, create, show, change settings), an agent's availability
(``?from&to&duration&tz``: computed from stored data only, so it answers in
milliseconds), its "now", and booking on behalf of a guest (``POST .../bookings``: 201,
or 409 when the slot is taken). Handlers are thin: input checks, then ``agents``,
``availability``, ``service`` and ``now``. A token scoped to PBXes sees only agents of
those PBXes (others are 404, like an unknown agent).

Start reading at ``routes``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from pbxcal.booking import agents as agent_ops
from pbxcal.booking.availability import cached_window_slots, forget_agent, window_slots
from pbxcal.booking.model import (
    Agent,
    AgentNotFound,
    Booking,
    BookingError,
    LinkUnsuitable,
    NowState,
    ProviderFailed,
    SlotTaken,
)
from pbxcal.booking.now import agent_now
from pbxcal.booking.service import book, manage_url
from pbxcal.store.booking import AgentExists

if TYPE_CHECKING:
    from pbxcal.web.api import Handler, _Call

_AGENT_FIELDS = frozenset(
    {"id", "pbx", "extension", "name", "email", "booking_link_id", "conflict_link_ids",
     "settings"}
)  # fmt: skip
_BOOKING_FIELDS = frozenset(
    {"start", "duration", "subject", "guest_name", "guest_email", "language"}
)


def routes(prefix: str) -> list[tuple[str, str, str, Handler]]:
    agent = f"{prefix}/agents/{{agent_id}}"
    return [
        ("GET", f"{prefix}/agents", "agent.list", _list_agents),
        ("POST", f"{prefix}/agents", "agent.create", _create_agent),
        ("GET", agent, "agent.show", _show_agent),
        ("PUT", agent, "agent.update", _update_agent),
        ("GET", f"{agent}/availability", "agent.availability", _availability),
        ("GET", f"{agent}/now", "agent.now", _now),
        ("POST", f"{agent}/bookings", "agent.book", _book),
    ]


def _api_error(status: int, code: str, detail: str) -> Exception:
    from pbxcal.web.api import ApiError

    return ApiError(status, code, detail)


def _mapped(exc: BookingError | AgentExists) -> Exception:
    if isinstance(exc, AgentNotFound):
        return _api_error(404, "not-found", str(exc))
    if isinstance(exc, SlotTaken):
        return _api_error(409, "slot-taken", str(exc))
    if isinstance(exc, AgentExists | LinkUnsuitable):
        return _api_error(409, "conflict", str(exc))
    if isinstance(exc, ProviderFailed):
        return _api_error(502, "calendar-failed", str(exc))
    return _api_error(400, "bad-request", str(exc))


async def _agent(call: _Call) -> Agent:
    raw = call.request.match_info["agent_id"]
    call.target = f"agent:{raw[:40]}"
    try:
        found = await asyncio.to_thread(agent_ops.load_agent, call.ctx.store, raw)
    except AgentNotFound as exc:
        raise _mapped(exc) from None
    if call.pbxes is not None and found.pbx not in call.pbxes:
        raise _api_error(404, "not-found", f"no agent {raw[:40]!r}")
    return found


async def _list_agents(call: _Call) -> web.Response:
    found = await asyncio.to_thread(agent_ops.list_agents, call.ctx.store)
    visible = [a for a in found if call.pbxes is None or a.pbx in call.pbxes]
    return web.json_response({"agents": [agent_ops.agent_json(a) for a in visible]})


async def _show_agent(call: _Call) -> web.Response:
    return web.json_response(agent_ops.agent_json(await _agent(call)))


async def _create_agent(call: _Call) -> web.Response:
    from pbxcal.web.api import _json_object

    body = await _json_object(call.request)
    _known(body, _AGENT_FIELDS)
    agent_id = _str(body, "id", 40, required=True)
    pbx = _str(body, "pbx", 64, required=True)
    call.target = f"agent:{agent_id}"
    if call.pbxes is not None and pbx not in call.pbxes:
        raise _api_error(404, "not-found", "no such PBX")
    try:
        created = await asyncio.to_thread(
            agent_ops.add_agent,
            call.ctx.store,
            call.ctx.config,
            agent_id,
            pbx=pbx,
            extension=_str(body, "extension", 15, required=True),
            name=_str(body, "name", 100, required=True),
            email=_optional_str(body, "email", 254),
            booking_link_id=_link_id(body.get("booking_link_id"), "booking_link_id"),
            conflict_link_ids=_link_ids(body.get("conflict_link_ids", [])),
            settings=_settings(body),
        )
    except (BookingError, AgentExists) as exc:
        raise _mapped(exc) from None
    return web.json_response(agent_ops.agent_json(created), status=201)


async def _update_agent(call: _Call) -> web.Response:
    from pbxcal.web.api import _json_object

    agent = await _agent(call)
    body = await _json_object(call.request)
    _known(body, _AGENT_FIELDS - {"id", "pbx", "extension"})
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _str(body, "name", 100, required=True)
    if "email" in body:
        changes["email"] = _optional_str(body, "email", 254) or ""
    if "booking_link_id" in body:
        changes["booking_link_id"] = _link_id(body["booking_link_id"], "booking_link_id")
    if "conflict_link_ids" in body:
        changes["conflict_link_ids"] = _link_ids(body["conflict_link_ids"])
    if "settings" in body:
        changes["settings"] = _settings(body)
    try:
        changed = await asyncio.to_thread(agent_ops.set_agent, call.ctx.store, agent.id, **changes)
    except BookingError as exc:
        raise _mapped(exc) from None
    finally:
        forget_agent(call.ctx.store, agent.id)
    return web.json_response(agent_ops.agent_json(changed))


async def _availability(call: _Call) -> web.Response:
    """Stored data only: from memory on the event loop while the agent's inputs are
    cached (``availability.cached_window_slots``), else one worker-thread hop."""
    agent_id = call.request.match_info["agent_id"]
    call.target = f"agent:{agent_id[:40]}"
    query = call.request.query
    raw_zone, raw_from, raw_to = _one(query, "tz"), _one(query, "from"), _one(query, "to")
    raw_duration = _one(query, "duration")
    if raw_duration is not None and not (
        raw_duration.isascii() and raw_duration.isdigit() and len(raw_duration) <= 4
    ):
        raise _api_error(400, "bad-request", "duration must be whole minutes")
    now = call.now()

    def window(agent: Agent) -> tuple[datetime, datetime, int]:
        try:
            zone = ZoneInfo(raw_zone or agent.settings.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise _api_error(400, "bad-request", "tz must be an IANA zone name") from None
        start = _moment(raw_from, zone, "from") or now
        end = _moment(raw_to, zone, "to", end_of_day=True) or start + timedelta(days=7)
        duration = int(raw_duration) if raw_duration else agent.settings.durations[0]
        return start, end, duration

    try:
        found = cached_window_slots(call.ctx.store, call.ctx, agent_id, window, call.pbxes)
        if found is None:  # something to read from the store: in a worker thread
            found = await asyncio.to_thread(
                window_slots, call.ctx.store, call.ctx, agent_id, window, call.pbxes
            )
        agent, slots = found
    except BookingError as exc:
        raise _mapped(exc) from None
    start, end, duration = window(agent)
    zone = ZoneInfo(raw_zone or agent.settings.timezone)
    return web.json_response(
        {
            "agent_id": agent.id,
            "duration": duration,
            "timezone": str(zone),
            "from": _when(start),
            "to": _when(end),
            "slots": [
                {
                    "start": _when(s.start),
                    "end": _when(s.end),
                    "local_start": s.start.astimezone(zone).isoformat(),
                }
                for s in slots
            ],
        }
    )


async def _now(call: _Call) -> web.Response:
    agent = await _agent(call)
    try:
        state = await agent_now(call.ctx, agent.id)
    except BookingError as exc:
        raise _mapped(exc) from None
    return web.json_response(now_json(state))


async def _book(call: _Call) -> web.Response:
    from pbxcal.web.api import _json_object

    agent = await _agent(call)
    body = await _json_object(call.request)
    _known(body, _BOOKING_FIELDS)
    start = _moment(_str(body, "start", 40, required=True), UTC, "start", strict=True)
    assert start is not None
    duration = _whole(body.get("duration", agent.settings.durations[0]))
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 1440:
        raise _api_error(400, "bad-request", "duration must be whole minutes")
    language = _optional_str(body, "language", 2) or "en"
    try:
        booked = await book(
            call.ctx,
            agent.id,
            start=start,
            duration_minutes=duration,
            subject=_str(body, "subject", 200, required=True),
            guest_name=_str(body, "guest_name", 100, required=True),
            guest_email=_str(body, "guest_email", 254, required=True),
            language=language,
        )
    except BookingError as exc:
        raise _mapped(exc) from None
    call.detail = {"booking": booked.id}
    answer = booking_json(booked)
    if booked.manage_token:
        answer["manage_url"] = manage_url(call.ctx, booked, booked.manage_token)
    return web.json_response(answer, status=201)


def booking_json(booking: Booking) -> dict[str, Any]:
    return {
        "id": booking.id,
        "agent_id": booking.agent_id,
        "start": _when(booking.start),
        "end": _when(booking.end),
        "subject": booking.subject,
        "guest_name": booking.guest_name,
        "guest_email": booking.guest_email,
        "uid": booking.uid,
        "sequence": booking.sequence,
        "status": booking.status,
        "join_url": booking.join_url,
    }


def now_json(state: NowState) -> dict[str, Any]:
    return {
        "agent_id": state.agent_id,
        "state": state.state,
        "meeting_until": _when(state.meeting_until),
        "forwarded_to": list(state.forwarded_to),
        "forwarded_until": _when(state.forwarded_until),
        "phone": state.phone,
    }


# -- input -------------------------------------------------------------------------------------


def _known(body: dict[str, Any], fields: frozenset[str]) -> None:
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _api_error(400, "bad-request", f"unknown field {unknown[0][:40]!r}")


def _str(body: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = body.get(name)
    if not isinstance(value, str) or (required and not value):
        raise _api_error(400, "bad-request", f"{name} is required and must be a string")
    if len(value) > limit:
        raise _api_error(400, "bad-request", f"{name} is longer than {limit} characters")
    return value


def _optional_str(body: dict[str, Any], name: str, limit: int) -> str | None:
    if body.get(name) is None:
        return None
    return _str(body, name, limit)


def _whole(value: Any) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema says so too)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _link_id(value: Any, name: str) -> int | None:
    value = _whole(value)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
        raise _api_error(400, "bad-request", f"{name} must be a link id (a whole number from 1)")
    return value


def _link_ids(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > 20:
        raise _api_error(400, "bad-request", "conflict_link_ids must be a list of link ids")
    return [v for v in (_link_id(item, "conflict_link_ids") for item in value) if v is not None]


def _settings(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("settings")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _api_error(400, "bad-request", "settings must be a JSON object")
    return value


def _one(query: Any, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise _api_error(400, "bad-request", f"give {name} once")
    return values[0] if values else None


def _moment(
    raw: str | None, zone: Any, name: str, *, end_of_day: bool = False, strict: bool = False
) -> datetime | None:
    """A date-time with offset (``2026-03-30T09:00:00Z``), or (not ``strict``) a local
    date ``2026-03-30`` in ``zone`` (its start; with ``end_of_day`` the next day's)."""
    if raw is None:
        return None
    try:
        if len(raw) == 10 and not strict:
            day = date.fromisoformat(raw)
            if end_of_day:
                day += timedelta(days=1)
            return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _api_error(
            400, "bad-request", f"{name} must be a date-time such as 2026-03-30T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise _api_error(400, "bad-request", f"{name} needs an offset or Z")
    if not 2000 <= moment.year <= 2200:
        raise _api_error(400, "bad-request", f"{name} is out of range")
    return moment.astimezone(UTC)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
