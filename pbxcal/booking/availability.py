"""Free slots of an agent or a group, from stored data only (no provider call).

What it does: an agent's busy time is the synced instances of its conflict links (the
saved expansions the sync wrote; for a range beyond them, the stored events expanded
again) minus what is not a meeting — forwarding appointments (titles the PBX's
``TitleParser`` reads as numbers), free/transparent events; declined and cancelled
invitations are already gone from the expansion; tentative ones stay busy; all-day
events block their whole local days unless transparent — plus the *blocked ranges* of
the agent's confirmed bookings (so a booking not yet synced back is busy too).
``free_slots`` of the core turns that and the agent's rules into slots (the ``pbxcal
slots`` semantics).

The buffer rule, the same one the database enforces (``pbxcal.store.booking``): a
booking blocks ``[start - buffer_before, end + buffer_after)`` with the buffers the
agent had when it was booked (stored with it). A slot ``s`` of length ``d`` is offered
when its own blocked range ``[s - buffer_before, s + d + buffer_after)`` (today's
buffers) meets no booking's blocked range and no busy calendar event, so a slot offered
here is one the database accepts, and one it refuses is never offered. The booking's
own event, synced back from the booking calendar, lies inside its blocked range (with
``buffers_in_event`` it *is* that range), so it never adds to it: the buffers are not
counted twice.

Fast path: each link's busy intervals are kept in memory per (link, expansion's
``computed_at``), so a request costs three small queries and the slot walk.

Start reading at ``available_slots``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pbxcal.booking.agents import SLUG, agent_from_row, load_group, with_mailbox_defaults
from pbxcal.booking.model import Agent, AgentNotFound, BookingRefused
from pbxcal.booking.settings import rules_for
from pbxcal.calendars.snapshot import join_calendar
from pbxcal.core.ical import EventInstance, expand_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.slots import Slot, free_slots
from pbxcal.core.targets import Reason, Rejection, TitleParser
from pbxcal.store import Store
from pbxcal.web import WebContext

Interval = tuple[datetime, datetime]
#: Longest range one availability request may ask for.
MAX_RANGE = timedelta(days=62)
#: Bookings and busy time are read this far around a request (a day for all-day events
#: in other zones, plus the largest buffers).
QUERY_MARGIN = timedelta(days=1, hours=1)
_CACHE_SIZE = 512
_cache: OrderedDict[tuple[int, int, datetime, str], list[Interval]] = OrderedDict()
#: How long one read of an agent's row, link stamps and bookings serves availability
#: requests. Bookings and agent changes of this process drop it at once; another
#: process's show within this time (a booking re-checks in the database anyway).
INPUTS_TTL = 1.0
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
#: Outside the daemon (no reconciler): one memoising parser per number policy.
_parsers: dict[NumberPolicy, TitleParser] = {}
_inputs: dict[
    tuple[int, str],
    tuple[float, Agent, dict[int, datetime], list[Interval], datetime],
] = {}
_cache_lock = threading.Lock()


async def available_slots(
    ctx: WebContext, agent_id: str, start: datetime, end: datetime, duration_minutes: int
) -> list[Slot]:
    """Bookable slots of ``agent_id`` starting in ``[start, end)`` (UTC datetimes)."""
    return await asyncio.to_thread(
        agent_slots, ctx.store, ctx, agent_id, start, end, duration_minutes
    )


async def group_slots(
    ctx: WebContext, group_id: str, start: datetime, end: datetime, duration_minutes: int
) -> list[Slot]:
    """Slots when at least one member of the group is free (each start once)."""

    def compute() -> list[Slot]:
        group = load_group(ctx.store, group_id)
        seen: dict[datetime, Slot] = {}
        for member in group.agent_ids:
            try:
                slots = agent_slots(ctx.store, ctx, member, start, end, duration_minutes)
            except BookingRefused:  # a member who does not offer this duration
                continue
            for slot in slots:
                seen.setdefault(slot.start, slot)
        return [seen[s] for s in sorted(seen)]

    return await asyncio.to_thread(compute)


def agent_slots(
    store: Store,
    ctx: WebContext,
    agent_id: str,
    start: datetime,
    end: datetime,
    duration_minutes: int,
    pbxes: Collection[str] | None = None,
) -> list[Slot]:
    """``available_slots`` in the calling thread."""
    return window_slots(store, ctx, agent_id, lambda _: (start, end, duration_minutes), pbxes)[1]


def window_slots(
    store: Store,
    ctx: WebContext,
    agent_id: str,
    window: Callable[[Agent], tuple[datetime, datetime, int]],
    pbxes: Collection[str] | None = None,
) -> tuple[Agent, list[Slot]]:
    """The agent and its slots in ``window(agent)`` = (start, end, duration), from one
    store transaction (agent, link stamps, bookings from a day ago on) kept for
    ``INPUTS_TTL`` seconds; busy time cached per link. ``pbxes``: only agents of these
    (others are ``AgentNotFound``, like unknown ones)."""
    if not SLUG.fullmatch(agent_id):
        raise AgentNotFound(f"no agent {agent_id[:40]!r}")
    now = ctx.clock.now()
    key = (id(store), agent_id)
    with _cache_lock:
        cached = _inputs.get(key)
    if cached is None or cached[0] < time.monotonic() - INPUTS_TTL:
        read_at = time.monotonic()
        since = now - QUERY_MARGIN
        inputs = store.availability_inputs(agent_id, lambda _: (since, _FAR_FUTURE))
        if inputs is None:
            raise AgentNotFound(f"no agent {agent_id[:40]!r}")
        row, stamps, bookings = inputs
        agent = with_mailbox_defaults(store, agent_from_row(row))
        cached = (read_at, agent, stamps, bookings, since)
        with _cache_lock:
            _inputs[key] = cached
            if len(_inputs) > _CACHE_SIZE:
                _inputs.pop(next(iter(_inputs)))
    return _window_slots(store, ctx, agent_id, window, pbxes, cached)


def cached_window_slots(
    store: Store,
    ctx: WebContext,
    agent_id: str,
    window: Callable[[Agent], tuple[datetime, datetime, int]],
    pbxes: Collection[str] | None = None,
) -> tuple[Agent, list[Slot]] | None:
    """``window_slots`` from memory only, or None when it would read the store (then
    call ``window_slots`` in a worker thread). The availability endpoint's fast path: no
    thread hop while the agent's inputs (``INPUTS_TTL``) and its links' busy time are
    cached, which is nearly always under load."""
    if not SLUG.fullmatch(agent_id):
        return None
    with _cache_lock:
        cached = _inputs.get((id(store), agent_id))
    if cached is None or cached[0] < time.monotonic() - INPUTS_TTL:
        return None
    _, agent, stamps, _, since = cached
    if pbxes is not None and agent.pbx not in pbxes:
        return None
    start, end, _ = window(agent)
    if start - QUERY_MARGIN < since:
        return None
    since_busy, until_busy = start - QUERY_MARGIN, end + QUERY_MARGIN
    with _cache_lock:
        for link_id in agent.conflict_link_ids:
            stamp = stamps.get(link_id)
            if stamp is None:
                continue
            if (id(store), link_id, stamp, "saved") not in _cache:
                return None
            covered = _cache.get((id(store), link_id, stamp, "range"), [])
            if not covered or not (covered[0][0] <= since_busy and until_busy <= covered[0][1]):
                return None
    return _window_slots(store, ctx, agent_id, window, pbxes, cached)


def _window_slots(
    store: Store,
    ctx: WebContext,
    agent_id: str,
    window: Callable[[Agent], tuple[datetime, datetime, int]],
    pbxes: Collection[str] | None,
    cached: tuple[float, Agent, dict[int, datetime], list[Interval], datetime],
) -> tuple[Agent, list[Slot]]:
    now = ctx.clock.now()
    _, agent, stamps, bookings, since = cached
    if pbxes is not None and agent.pbx not in pbxes:
        raise AgentNotFound(f"no agent {agent_id[:40]!r}")
    start, end, duration = window(agent)
    if start - QUERY_MARGIN < since:  # the past: read what the cache does not hold
        inputs = store.availability_inputs(
            agent_id, lambda _: (start - QUERY_MARGIN, end + QUERY_MARGIN)
        )
        if inputs is None:
            raise AgentNotFound(f"no agent {agent_id[:40]!r}")
        _, stamps, bookings = inputs
    parser = parser_of(ctx, agent)
    slots = slots_of(agent, store, parser, start, end, duration, now,
                     default_zone=ctx.config.timezone, prefetched=(stamps, bookings))  # fmt: skip
    return agent, slots


def forget_agent(store: Store, agent_id: str) -> None:
    """Drop the cached inputs of an agent (after this process booked or changed it)."""
    with _cache_lock:
        _inputs.pop((id(store), agent_id), None)


def slots_of(
    agent: Agent,
    store: Store,
    parser: TitleParser,
    start: datetime,
    end: datetime,
    duration_minutes: int,
    now: datetime,
    *,
    default_zone: str = "UTC",
    with_busy: bool = True,
    ignore: Interval | None = None,
    prefetched: tuple[dict[int, datetime], list[Interval]] | None = None,
    skip_uid: str | None = None,
) -> list[Slot]:
    """The agent's slots in ``[start, end)`` as of ``now``. ``default_zone``: the
    config's, for calendars that name none (all-day and floating events);
    ``with_busy`` False: working hours and rules only; ``ignore`` / ``skip_uid``: the
    booking being moved (its row's blocked range, its event in the calendar) does not
    count."""
    check_request(agent, start, end, duration_minutes)
    settings = agent.settings
    end = min(end, now + timedelta(days=settings.horizon_days))
    if end <= start:
        return []
    rules = rules_for(settings, duration_minutes)
    margin = timedelta(days=1) + rules.buffer_before + rules.buffer_after  # <= QUERY_MARGIN
    busy = (
        busy_of(agent, store, parser, start - margin, end + margin, default_zone, ignore,
                prefetched=prefetched, skip_uid=skip_uid, blocked=True)
        if with_busy
        else []
    )  # fmt: skip
    zone = ZoneInfo(settings.timezone)
    first_day = start.astimezone(zone).date()
    last_day = end.astimezone(zone).date()
    return [
        slot
        for slot in free_slots(busy, rules, first_day, last_day, now)
        if start <= slot.start < end
    ]


def check_request(agent: Agent, start: datetime, end: datetime, duration_minutes: int) -> None:
    if duration_minutes not in agent.settings.durations:
        offered = ", ".join(str(d) for d in agent.settings.durations)
        raise BookingRefused(f"duration must be one of {offered} minutes")
    if start.tzinfo is None or end.tzinfo is None:
        raise BookingRefused("from and to need a time zone")
    if end <= start:
        raise BookingRefused("to must be after from")
    if end - start > MAX_RANGE:
        raise BookingRefused(f"ask for at most {MAX_RANGE.days} days at once")


def parser_of(ctx: WebContext, agent: Agent) -> TitleParser:
    """The PBX's title parser (the daemon's, which knows the extensions) or one from the
    config's number policy."""
    if ctx.sync is not None:
        return ctx.sync.reconciler.parser_for(agent.pbx)
    return _parser_for_policy(ctx)


def _parser_for_policy(ctx: WebContext) -> TitleParser:
    policy = ctx.config.policy
    with _cache_lock:
        parser = _parsers.get(policy)
        if parser is None:
            parser = _parsers[policy] = TitleParser(policy, frozenset())
    return parser


def busy_of(
    agent: Agent,
    store: Store,
    parser: TitleParser,
    since: datetime,
    until: datetime,
    default_zone: str = "UTC",
    ignore: Interval | None = None,
    *,
    prefetched: tuple[dict[int, datetime], list[Interval]] | None = None,
    skip_uid: str | None = None,
    blocked: bool = False,
) -> list[Interval]:
    """Sorted, merged busy time of the agent overlapping ``[since, until)`` (without the
    booking at ``ignore``, and without calendar events of UID ``skip_uid``: the booking
    being moved, as synced back from its calendar). ``blocked``: the bookings' blocked
    ranges (buffers included: what slots are checked against), else their meetings
    (what "now" reports). ``prefetched``: the link stamps and blocked ranges already
    read (``Store.availability_inputs`` over a range covering this)."""
    spans: list[Interval] = []
    links = agent.conflict_link_ids
    if prefetched is not None:
        stamps, bookings = prefetched
    else:
        stamps = store.expansion_stamps(links) if links else {}
        read = store.blocked_ranges if blocked else store.confirmed_bookings
        bookings = [(s, e) for _, s, e in read((agent.id,), since, until)]
    for link_id in links:
        stamp = stamps.get(link_id)
        if stamp is None:
            continue  # never synced: nothing known (the booking re-checks fresh data)
        if skip_uid is not None:
            spans.extend(_busy_without(store, parser, link_id, since, until, default_zone,
                                       skip_uid))  # fmt: skip
        else:
            spans.extend(_link_busy(store, parser, link_id, stamp, since, until, default_zone))
    spans.extend((s, e) for s, e in bookings if (s, e) != ignore)
    return merge(s for s in spans if s[0] < until and s[1] > since)


def _link_busy(
    store: Store,
    parser: TitleParser,
    link_id: int,
    stamp: datetime,
    since: datetime,
    until: datetime,
    default_zone: str,
) -> list[Interval]:
    key = (id(store), link_id, stamp, "saved")
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        record = store.load_link_expansions((link_id,)).get(link_id)
        if record is None:
            return []
        cached = meeting_intervals(record.instances, parser)
        _remember(key, cached)
        # the range the record covers, kept beside it
        _remember((id(store), link_id, stamp, "range"), [(record.range_start, record.range_end)])
    with _cache_lock:
        covered = _cache.get((id(store), link_id, stamp, "range"), [])
    if covered and covered[0][0] <= since and until <= covered[0][1]:
        return cached
    return _expanded_busy(store, parser, link_id, stamp, since, until, default_zone)


def _busy_without(
    store: Store, parser: TitleParser, link_id: int, since: datetime, until: datetime,
    default_zone: str, skip_uid: str,
) -> list[Interval]:  # fmt: skip
    """A link's busy time without the events of one UID (not cached: moves are rare)."""
    record = store.load_link_expansions((link_id,)).get(link_id)
    if record is not None and record.range_start <= since and until <= record.range_end:
        return meeting_intervals((i for i in record.instances if i.uid != skip_uid), parser)
    return _expanded_busy(store, parser, link_id, None, since, until, default_zone, skip_uid)


def _expanded_busy(
    store: Store, parser: TitleParser, link_id: int, stamp: datetime | None, since: datetime,
    until: datetime, default_zone: str, skip_uid: str | None = None,
) -> list[Interval]:  # fmt: skip
    """Beyond the saved expansion (a horizon longer than the daemon's): expand the stored
    events over whole weeks around the range, cached like the saved ones (``stamp``
    None: not cached)."""
    week_start = since - timedelta(days=since.weekday() + 7)
    week_start = week_start.replace(hour=0, minute=0, second=0, microsecond=0)
    week_end = week_start + timedelta(weeks=((until - week_start).days // 7) + 2)
    key = None
    if stamp is not None:
        key = (id(store), link_id, stamp, f"{week_start.isoformat()}/{week_end.isoformat()}")
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
    events, state = store.load_events(link_id)
    link = store.get_link(link_id)
    if state is None or link is None:
        return []
    calendar = join_calendar(events, state.timezones, state.calendar_tz, source=f"link {link_id}")
    zone = ZoneInfo(str(link.settings.get("timezone") or default_zone))
    owners = [str(o) for o in link.settings.get("owner_emails") or []]
    expansion = expand_calendar(calendar, week_start, week_end, zone, owner_emails=owners)
    result = meeting_intervals((i for i in expansion.instances if i.uid != skip_uid), parser)
    if key is not None:
        _remember(key, result)
    return result


def meeting_intervals(instances: Iterable[EventInstance], parser: TitleParser) -> list[Interval]:
    """Busy time of instances: opaque ones that are not forwarding appointments, merged."""
    meeting: dict[str, bool] = {}
    spans = []
    for instance in instances:
        if instance.transparent or instance.end <= instance.start:
            continue
        is_meeting = meeting.get(instance.title)
        if is_meeting is None:
            parsed = parser.parse(instance.title)
            is_meeting = isinstance(parsed, Rejection) and parsed.reason == Reason.NOT_A_NUMBER
            meeting[instance.title] = is_meeting
        if is_meeting:
            spans.append((instance.start, instance.end))
    return merge(spans)


def merge(spans: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def is_free(busy: Sequence[Interval], start: datetime, end: datetime) -> bool:
    return all(e <= start or s >= end for s, e in busy)


def _remember(key: tuple[int, int, datetime, str], value: list[Interval]) -> None:
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
