"""What a link does, as the CLI, the admin API and the portal show it: its overview and
its sync log.

What it does: ``link_overview`` / ``link_overviews`` give a link's status
(``calendars.health``), last successful sync, last error, the forwardings coming up in
the next 7 days and the appointments ignored with their reason code (the core's
``Reason``), planned by the core's ``plan_windows`` with the PBX's ``TitleParser``
exactly as ``pbxcal plan --link`` does. One link is expanded fresh from its stored
events; a list uses the expansions the service saved (one query for all links).
``sync_log`` gives a link's newest log entries, their messages made safe to show.

What it must not do: change anything stored, print, or show a message that did not go
through ``rules.shown_message``. Every function is blocking; async callers use
``asyncio.to_thread``. All names here are importable from ``operations`` too.
Start reading at ``link_overview``, then ``_overview``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pbxcal.admin.rules import shown_message, visible_link
from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.core.ical import EventInstance
    from pbxcal.core.targets import TitleParser
    from pbxcal.store import Link, Store, SyncLogEntry

__all__ = [
    "OVERVIEW_DAYS",
    "Forwarding",
    "Ignored",
    "LinkOverview",
    "default_parser",
    "link_overview",
    "link_overviews",
    "sync_log",
]

#: How far ahead an overview looks.
OVERVIEW_DAYS = 7
#: How far back a window that is running now may have started and still show its start.
_LOOK_BACK = timedelta(days=1)


@dataclass(frozen=True)
class Forwarding:
    """From ``start`` to ``end`` (UTC) the extension rings ``targets`` in parallel."""

    start: datetime
    end: datetime
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Ignored:
    """An appointment that does not forward; ``reason`` is a core ``Reason`` code."""

    title: str
    start: datetime
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class LinkOverview:
    """What a link does: its health and its next week as pbxcal understood it."""

    link: Link
    status: str
    last_sync: datetime | None
    last_error: str | None
    upcoming: list[Forwarding]
    ignored: list[Ignored]
    account: str | None
    last_result: str | None = None
    last_attempt: datetime | None = None
    #: Why the week could not be planned (a calendar over a limit), else None.
    problem: str | None = None



def default_parser(config: Config, pbx: str) -> TitleParser:
    """The PBX's title parser from the config (its listed extensions; none listed: every
    pattern match counts, as offline ``pbxcal plan``). The service passes its own, which
    also knows the extensions read from Asterisk."""
    from pbxcal.core.targets import TitleParser

    listed = config.pbxes[pbx].extensions if pbx in config.pbxes else frozenset()
    return TitleParser(config.policy, listed or None)


def link_overview(
    store: Store,
    config: Config,
    link_id: int,
    now: datetime,
    *,
    pbxes: Collection[str] | None = None,
    parser: TitleParser | None = None,
) -> LinkOverview:
    """One link's overview, its week expanded fresh from its stored events."""
    from pbxcal.calendars.snapshot import join_calendar
    from pbxcal.core.ical import OverLimit, expand_calendar

    link = visible_link(store, link_id, pbxes)
    log = store.sync_log(link_id, 200)
    events, state = store.load_events(link_id)
    instances: list[EventInstance] = []
    problem = None
    if state is not None:
        try:
            calendar = join_calendar(
                events, state.timezones, state.calendar_tz, source=f"link {link_id}"
            )
            expansion = expand_calendar(
                calendar,
                now - _LOOK_BACK,
                now + timedelta(days=OVERVIEW_DAYS),
                _zone(link, config),
                owner_emails=[str(o) for o in link.settings.get("owner_emails") or []],
                limits=config.limits,
            )
            instances = list(expansion.instances)
        except (OverLimit, InputError) as exc:
            problem = shown_message(str(exc))
    return _overview(link, log, instances, now, parser or default_parser(config, link.pbx), problem)


def link_overviews(
    store: Store,
    config: Config,
    now: datetime,
    *,
    pbxes: Collection[str] | None = None,
    parser_for: Any = None,
) -> list[LinkOverview]:
    """Every link's overview (of ``pbxes`` only, if given), from the saved expansions.

    ``parser_for(pbx)`` gives a PBX's parser (the service's ``Reconciler.parser_for``);
    default ``default_parser``. Links without a saved expansion show no forwardings.
    """
    links = [link for link in store.list_links() if pbxes is None or link.pbx in pbxes]
    if not links:
        return []
    last = store.last_sync()
    successes = _last_successes(store, links, last)
    expansions = store.load_expansions()
    parsers: dict[str, TitleParser] = {}
    result = []
    for link in links:
        if link.pbx not in parsers:
            parsers[link.pbx] = (
                parser_for(link.pbx) if parser_for else default_parser(config, link.pbx)
            )
        record = expansions.get(link.id)
        instances = list(record.instances) if record is not None else []
        log = [e for e in (last.get(link.id), successes.get(link.id)) if e is not None]
        result.append(_overview(link, log, instances, now, parsers[link.pbx], None))
    return result


def _last_successes(
    store: Store, links: Iterable[Link], last: Mapping[int, SyncLogEntry]
) -> dict[int, SyncLogEntry]:
    """The newest successful entry of links whose newest entry is a failure."""
    from pbxcal.calendars.health import SUCCESS_RESULTS

    found = {}
    for link in links:
        newest = last.get(link.id)
        if newest is not None and newest.result not in SUCCESS_RESULTS:
            good = next((e for e in store.sync_log(link.id, 200) if e.result in SUCCESS_RESULTS),
                        None)  # fmt: skip
            if good is not None:
                found[link.id] = good
    return found


def _overview(
    link: Link,
    log: list[SyncLogEntry],
    instances: list[EventInstance],
    now: datetime,
    parser: TitleParser,
    problem: str | None,
) -> LinkOverview:
    from pbxcal.calendars.health import SUCCESS_RESULTS, link_status
    from pbxcal.core.windows import plan_windows

    log = sorted(log, key=lambda e: e.at, reverse=True)
    newest = log[0] if log else None
    success = next((e for e in log if e.result in SUCCESS_RESULTS), None)
    failure = next((e for e in log if e.result not in SUCCESS_RESULTS), None)
    end = now + timedelta(days=OVERVIEW_DAYS)
    current = [i for i in instances if i.end > now]
    plan = plan_windows(current, now - _LOOK_BACK, end, parser.policy, parser=parser)
    account = link.settings.get("account")
    return LinkOverview(
        link=link,
        status=link_status(newest.result if newest else None, active=link.active),
        last_sync=success.at if success else None,
        last_error=shown_message(failure.message or failure.result) if failure else None,
        upcoming=[Forwarding(w.start, w.end, w.targets) for w in plan.windows if w.end > now],
        ignored=[Ignored(r.title, r.start, r.reason.value, r.detail) for r in plan.rejected],
        account=str(account) if account else None,
        last_result=newest.result if newest else None,
        last_attempt=newest.at if newest else None,
        problem=problem,
    )


def _zone(link: Link, config: Config) -> Any:
    from zoneinfo import ZoneInfo

    name = link.settings.get("timezone")
    return ZoneInfo(str(name)) if name else config.zone


def sync_log(
    store: Store, link_id: int, limit: int = 20, *, pbxes: Collection[str] | None = None
) -> list[SyncLogEntry]:
    """A link's newest ``limit`` (1-200) sync log entries, newest first, messages shown."""
    from dataclasses import replace

    visible_link(store, link_id, pbxes)
    entries = store.sync_log(link_id, max(1, min(limit, 200)))
    return [replace(e, message=shown_message(e.message)) for e in entries]
