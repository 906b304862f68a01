"""What a worker thread makes of one calendar version: parsed, limited, expanded, counted,
committed (pure CPU and store writes; never on the event loop).

``CalendarWork.on_fetched`` takes a whole iCalendar document (ICS), ``on_changes`` a
provider's change set (applied to the stored rows), ``on_stored`` re-expands the stored
rows when the horizon moved. Each expands over ``[now - 1 day, now + 2 × horizon)`` with
the instance caps, counts what the sync log reports (instances ahead that forward, or
why not) and commits rows, cursor or validators and the expansion in one transaction
(``store.apply_changes``). A store that cannot be written is not an error here: the work
is returned with ``store_error`` set, so the calendar is still followed in memory.
``checkpoint`` is called every ~1,000 items; it raises ``Stopped`` when the daemon stops.

Start reading at ``CalendarWork.on_fetched``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar

from pbxcal.calendars import Fetched
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.calendars.snapshot import join_calendar, split_calendar
from pbxcal.config import Config
from pbxcal.core.ical import (
    EventInstance,
    Expansion,
    OverLimit,
    count_events,
    expand_calendar,
    parse_calendar,
)
from pbxcal.core.targets import Rejection, TitleParser
from pbxcal.errors import CalendarUnavailable, InputError, StoreError
from pbxcal.service.reconciler import PAST
from pbxcal.store import ExpansionRecord, Link, StoredEvent, SyncState
from pbxcal.store.ports import SyncStore

log = logging.getLogger(__name__)

#: Skipped events named one by one in the log per sync; the rest are counted.
_SKIPPED_LOGGED = 3


class Stopped(Exception):
    """Raised inside a worker when the daemon stops: the work is abandoned."""


@dataclass
class Work:
    """What a worker made of one calendar version."""

    instances: tuple[EventInstance, ...]
    since: datetime
    until: datetime
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    store_error: StoreError | None = None


class CalendarWork:
    """The worker-thread half of the sync. See the module docstring."""

    def __init__(self, store: SyncStore, checkpoint: Callable[[], None]) -> None:
        self.store = store
        self.checkpoint = checkpoint

    def on_fetched(
        self, config: Config, link: Link, fetched: Fetched, now: datetime, parser: TitleParser
    ) -> Work:
        limits = config.limits
        count = count_events(fetched.body)
        if count > limits.max_events:
            raise OverLimit(
                f"the calendar has {count} events, more than the limit of "
                f"{limits.max_events} ([sync] max_events)"
            )
        calendar = parse_calendar(fetched.body, source=f"link {link.id}")
        self.checkpoint()
        events, timezones, calendar_tz = split_calendar(calendar)
        expansion, since, until = self._expand(config, link, calendar, now)
        work = self._classified(config, expansion, since, until, now, parser, link)
        # a whole document is a full change set: rows, validators and expansion in one
        # transaction (one commit per new version instead of one per table)
        change = ChangeSet(
            cursor="",
            full=True,
            upserted=tuple(EventRow(e.uid, e.recurrence_id, e.ical) for e in events),
            timezones=timezones,
            calendar_tz=calendar_tz,
        )
        try:
            self.store.apply_changes(
                link.id,
                change,
                now,
                self._record(work, now),
                etag=fetched.validators.etag,
                last_modified=fetched.validators.last_modified,
            )
        except StoreError as exc:
            work.store_error = exc
        return work

    def on_changes(
        self, config: Config, link: Link, change: ChangeSet, now: datetime, parser: TitleParser
    ) -> Work:
        """The stored rows with ``change`` applied, expanded; then all of it committed."""
        stored: list[StoredEvent] = []
        state: SyncState | None = None
        if not change.full:
            stored, state = self.store.load_events(link.id)
        rows = {(e.uid, e.recurrence_id): e for e in stored}
        removed = set(change.removed)
        instances = {(uid, rid) for uid, rid in change.removed_instances}
        rows = {
            key: row
            for key, row in rows.items()
            if key[0] not in removed and (key[0], key[1] or "") not in instances
        }
        for row in change.upserted:
            rows[(row.uid, row.recurrence_id)] = StoredEvent(row.uid, row.recurrence_id, row.ical)
        self.checkpoint()
        timezones = change.timezones or (state.timezones if state is not None else "")
        calendar_tz = change.calendar_tz or (state.calendar_tz if state is not None else None)
        calendar = join_calendar(
            list(rows.values()), timezones, calendar_tz, source=f"link {link.id}"
        )
        expansion, since, until = self._expand(config, link, calendar, now)
        work = self._classified(config, expansion, since, until, now, parser, link)
        try:
            self.store.apply_changes(link.id, change, now, self._record(work, now))
        except StoreError as exc:
            work.store_error = exc
        return work

    def on_stored(
        self, config: Config, link: Link, now: datetime, parser: TitleParser
    ) -> Work:
        events, state = self.store.load_events(link.id)
        if state is None:
            raise CalendarUnavailable("no events stored yet")
        calendar = join_calendar(
            events, state.timezones, state.calendar_tz, source=f"link {link.id}"
        )
        expansion, since, until = self._expand(config, link, calendar, now)
        work = self._classified(config, expansion, since, until, now, parser, link)
        try:
            self.store.save_expansion(link.id, self._record(work, now))
        except StoreError as exc:
            work.store_error = exc
        return work

    def _expand(
        self, config: Config, link: Link, calendar: icalendar.Calendar, now: datetime
    ) -> tuple[Expansion, datetime, datetime]:
        since = now - PAST
        until = now + 2 * timedelta(days=config.horizon_days)
        expansion = expand_calendar(
            calendar,
            since,
            until,
            _zone(link, config.timezone),
            owner_emails=_owners(link),
            limits=config.limits,
            checkpoint=self.checkpoint,
        )
        return expansion, since, until

    def _classified(
        self,
        config: Config,
        expansion: Expansion,
        since: datetime,
        until: datetime,
        now: datetime,
        parser: TitleParser,
        link: Link,
    ) -> Work:
        """Count what the sync log reports: instances ahead that forward, or why not."""
        work = Work(tuple(expansion.instances), since, until, skipped=len(expansion.skipped))
        end = now + timedelta(days=config.horizon_days)
        for instance in expansion.instances:
            if instance.end <= now or instance.start >= end:
                continue
            parsed = parser.parse(instance.title)
            if isinstance(parsed, Rejection):
                work.rejected[parsed.reason.value] += 1
            else:
                work.accepted += 1
        for skipped in expansion.skipped[:_SKIPPED_LOGGED]:
            log.warning("link %d: skipped event %s: %s", link.id, skipped.uid, skipped.detail)
        if len(expansion.skipped) > _SKIPPED_LOGGED:
            more = len(expansion.skipped) - _SKIPPED_LOGGED
            log.warning("link %d: %d more events skipped", link.id, more)
        return work

    @staticmethod
    def _record(work: Work, now: datetime) -> ExpansionRecord:
        return ExpansionRecord(work.since, work.until, work.instances, now)


def _zone(link: Link, default: str) -> ZoneInfo:
    name = str(link.settings.get("timezone") or default)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"time zone {name[:64]!r} is not an IANA zone") from exc


def _owners(link: Link) -> list[str]:
    owners = link.settings.get("owner_emails") or []
    return [str(o) for o in owners] if isinstance(owners, list) else []
