"""iCalendar data → concrete event instances in a time range (pure: bytes in, values out).

``parse_calendar(data)`` turns bytes into an ``icalendar.Calendar`` (``InputError`` on
garbage, with a line number but never the document's content: the file might be a
secret). ``count_events(data)`` counts VEVENTs without parsing, so a caller refuses an
oversized document before paying for it. ``expand_calendar(calendar, start, end,
default_tz)`` expands recurrences ourselves (never trusting a server's expansion) and
returns every instance that overlaps ``[start, end)`` with its times in UTC:

* single events (no RRULE/RDATE/EXDATE, no overrides sharing their UID) are read
  directly; repeating ones go through ``recurrence`` (recurring-ical-events: RRULE,
  RDATE, EXDATE, RECURRENCE-ID overrides and RANGE=THISANDFUTURE), lazily;
* all-day events are whole local days in the calendar's zone (a 25-hour day on the DST
  change stays 25 hours); floating times are read in the calendar's zone;
* the calendar's zone is its ``X-WR-TIMEZONE`` if that is a real zone, else
  ``default_tz``; DURATION instead of DTEND and Outlook's Windows zone names work;
* cancelled events and cancelled instances are dropped, and so are events the owner
  (one of ``owner_emails``) declined.

Bounded work (``ExpansionLimits``): more than ``max_events`` VEVENTs, more than
``max_instances_per_link`` occurrences, or repeat rules that would need too many
occurrences to expand, raise ``OverLimit`` for the whole calendar; an event with more
than ``max_instances_per_event`` occurrences in the range, or one that cannot be read
(bad zone, ``INTERVAL=0``, year 1 to 9999, ``DURATION:P99999999W``, ...), is reported
in ``Expansion.skipped`` in plain words and the other events still count. Nothing
else is raised for any calendar. ``checkpoint()`` is called every ~1,000 events or
instances so a caller can abort (it raises; that exception passes through).

Must not do I/O (zone data aside) or read the clock. Start reading at
``expand_calendar``; one event's reading is in ``vevent``, repeat rules in
``recurrence``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from pbxcal.core.recurrence import (
    RuleTooCostly,
    StepBudget,
    occurrences,
    rule_problem,
    rule_work,
)
from pbxcal.core.vevent import EventInstance, event_problem, instance_of, one_line, safe_zone
from pbxcal.errors import InputError

__all__ = [
    "EventInstance",
    "Expansion",
    "ExpansionLimits",
    "OverLimit",
    "SkippedEvent",
    "calendar_timezone",
    "count_events",
    "expand_calendar",
    "parse_calendar",
]

#: How far around the requested range we ask the expander, so that floating and
#: all-day instances whose zone shifts them across the edge are not missed.
_EXPANSION_MARGIN = timedelta(days=2)
#: ``checkpoint()`` is called after this many events or instances.
_CHECKPOINT_EVERY = 1000
#: Repeat rules: occurrences generated from DTSTART that one event, and one calendar,
#: may cost, as multiples of the per-event and per-link caps (about 2 µs each).
_RULE_WORK_PER_EVENT = 50
_RULE_WORK_PER_LINK = 80
#: Interpreter calls (about 0.5 µs each, counted) that a filtered repeat rule may take
#: beyond its estimated work to find its next occurrence after the range, per event
#: and for all of a calendar's: a rule whose filters never match again would
#: otherwise walk to the year 9999.
_STEPS_PER_EVENT = 500_000
_STEPS_PER_LINK = 10_000_000


@dataclass(frozen=True)
class ExpansionLimits:
    """How much one calendar may cost to expand (``[sync]`` options of the config)."""

    max_events: int = 20_000  # VEVENTs per calendar document
    max_instances_per_event: int = 5_000  # per event over the expanded range
    max_instances_per_link: int = 50_000  # per calendar over the expanded range


class OverLimit(InputError):
    """A whole calendar is over one of the ``ExpansionLimits``; the message says which."""


@dataclass(frozen=True)
class SkippedEvent:
    """An event that could not be read, with a one-line reason in plain words."""

    uid: str
    detail: str


@dataclass(frozen=True)
class Expansion:
    """The result of expanding one calendar over a range."""

    instances: list[EventInstance] = field(default_factory=list)
    skipped: list[SkippedEvent] = field(default_factory=list)


_FOLD = re.compile(rb"\r?\n[ \t]")
_BEGIN_VEVENT = re.compile(
    rb"^[ \t]*BEGIN[ \t]*:[ \t]*VEVENT[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_CONTENT_LINE = re.compile(r"[A-Za-z0-9-]+[;:]")


#: Bytes counted per step: a regular expression holds the GIL for a whole call, so a
#: 20 MB calendar is counted in pieces and other threads (the event loop) run between.
_COUNT_CHUNK = 256 * 1024


def count_events(data: bytes | str) -> int:
    """How many ``BEGIN:VEVENT`` lines ``data`` has (folded lines included), unparsed."""
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    count, start, size = 0, 0, len(raw)
    while start < size:
        end = size
        if start + _COUNT_CHUNK < size:  # cut after a line end that no folded line continues
            cut = raw.find(b"\n", start + _COUNT_CHUNK)
            while cut != -1 and raw[cut + 1 : cut + 2] in (b" ", b"\t"):
                cut = raw.find(b"\n", cut + 1)
            end = size if cut == -1 else cut + 1
        piece = _FOLD.sub(b"", raw[start:end])
        count += sum(1 for _ in _BEGIN_VEVENT.finditer(piece))
        start = end
    return count


def parse_calendar(
    data: bytes | str, *, source: str = "calendar", limits: ExpansionLimits | None = None
) -> icalendar.Calendar:
    """Parse iCalendar data; raise ``InputError`` naming ``source`` when it is not one.

    The message says where the data stops being iCalendar (a line number), never what
    is written there. With ``limits``, a document with more than ``limits.max_events``
    VEVENTs raises ``OverLimit`` before it is parsed.
    """
    if limits is not None:
        check_event_count(data, limits, source=source)
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except Exception:  # noqa: BLE001 - icalendar raises many kinds; its text holds the data
        raise InputError(f"{source}: not valid iCalendar data{_where(data)}") from None
    if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
        raise InputError(f"{source}: not valid iCalendar data (no VCALENDAR)")
    return calendar


def check_event_count(
    data: bytes | str, limits: ExpansionLimits, *, source: str = "calendar"
) -> int:
    """``count_events(data)``, or ``OverLimit`` when that is over ``limits.max_events``."""
    count = count_events(data)
    if count > limits.max_events:
        raise OverLimit(_too_many_events(source, count, limits))
    return count


def calendar_timezone(calendar: icalendar.Calendar) -> ZoneInfo | None:
    """The zone the calendar names for itself (``X-WR-TIMEZONE``), if it is a real one."""
    name = calendar.get("X-WR-TIMEZONE")
    return safe_zone(name) if name else None


def expand_calendar(
    calendar: icalendar.Calendar,
    start: datetime,
    end: datetime,
    default_tz: tzinfo,
    *,
    owner_emails: Iterable[str] = (),
    limits: ExpansionLimits = ExpansionLimits(),
    checkpoint: Callable[[], None] | None = None,
) -> Expansion:
    """Every instance of every event in ``calendar`` that overlaps ``[start, end)``."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    own_zone = calendar_timezone(calendar)
    zone = own_zone or default_tz
    owners = {e.lower().removeprefix("mailto:") for e in owner_emails}
    events = [c for c in calendar.subcomponents if getattr(c, "name", None) == "VEVENT"]
    if len(events) > limits.max_events:
        raise OverLimit(_too_many_events("calendar", len(events), limits))
    run = _Run(limits, checkpoint)
    uids = Counter(str(c.get("UID", "")) for c in events)
    repeating: dict[str, list[Any]] = {}
    for component in events:
        run.tick()
        uid = str(component.get("UID", ""))
        problem = event_problem(component)
        if problem is not None:
            run.skip(uid or "?", problem)
        elif uids[uid] == 1 and not _repeats(component):
            run.add(component, uid, zone, owners, start, end)
        else:
            repeating.setdefault(uid, []).append(component)
    lo = (start - _EXPANSION_MARGIN).astimezone(zone)
    hi = (end + _EXPANSION_MARGIN).astimezone(zone)
    for uid, components in repeating.items():
        run.expand(uid, components, lo, hi, own_zone, zone, owners, start, end)
    run.instances.sort(key=lambda i: (i.start, i.end, i.uid))
    return Expansion(run.instances, run.skipped)


class _Run:
    """The running state of one ``expand_calendar`` call: results, counts, checkpoints."""

    def __init__(self, limits: ExpansionLimits, checkpoint: Callable[[], None] | None) -> None:
        self.limits = limits
        self.checkpoint = checkpoint
        self.instances: list[EventInstance] = []
        self.skipped: list[SkippedEvent] = []
        self.produced = 0
        self.rule_work = 0
        self.steps = StepBudget(_STEPS_PER_EVENT, _STEPS_PER_LINK)
        self._ticks = 0

    def tick(self) -> None:
        self._ticks += 1
        if self.checkpoint is not None and self._ticks % _CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def skip(self, uid: str, detail: str) -> None:
        self.skipped.append(SkippedEvent(uid, detail))

    def count_instances(self, n: int) -> None:
        self.produced += n
        if self.produced > self.limits.max_instances_per_link:
            raise OverLimit(
                f"the calendar has more than {self.limits.max_instances_per_link} "
                "appointments in the planning range (limit max_instances_per_link)"
            )

    def add(
        self,
        component: Any,
        uid: str,
        zone: tzinfo,
        owners: set[str],
        start: datetime,
        end: datetime,
    ) -> None:
        try:
            instance = instance_of(component, zone, owners)
        except OverflowError:
            self.skip(uid or "?", "the event's dates are out of range")
            return
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.skip(uid or "?", one_line(exc))
            return
        if instance is not None and instance.end > start and instance.start < end:
            self.count_instances(1)
            self.instances.append(instance)

    def expand(
        self,
        uid: str,
        components: list[Any],
        lo: datetime,
        hi: datetime,
        own_zone: ZoneInfo | None,
        zone: tzinfo,
        owners: set[str],
        start: datetime,
        end: datetime,
    ) -> None:
        shown = uid or "?"
        problem = rule_problem(components)
        if problem is not None:
            self.skip(shown, problem)
            return
        per_event = self.limits.max_instances_per_event
        try:
            work = rule_work(components, hi)
        except Exception as exc:  # noqa: BLE001 - any unreadable rule skips only this event
            self.skip(shown, f"cannot read the repeat rule: {one_line(exc)}")
            return
        if work > _RULE_WORK_PER_EVENT * per_event:
            self.skip(
                shown,
                f"repeats too often (about {work} times from its start to the end of the "
                f"planning range; at most {_RULE_WORK_PER_EVENT * per_event} are expanded)",
            )
            return
        self.rule_work += work
        if self.rule_work > _RULE_WORK_PER_LINK * self.limits.max_instances_per_link:
            raise OverLimit(
                "the calendar's repeating appointments repeat too often to expand "
                f"(more than {_RULE_WORK_PER_LINK * self.limits.max_instances_per_link} "
                "occurrences; limit max_instances_per_link)"
            )
        found: list[EventInstance] = []
        count = 0
        zone_name = own_zone.key if own_zone is not None else None
        iterator = occurrences(components, lo, hi, zone_name, self.steps, work)
        while True:
            try:  # only the expander's own errors are caught: a checkpoint's pass through
                occurrence = next(iterator, None)
            except RuleTooCostly:
                if self.steps.exhausted():
                    raise OverLimit(
                        "the calendar's repeating appointments take too long to expand "
                        "(their repeat rules match too rarely)"
                    ) from None
                self.skip(
                    shown,
                    "its repeat rule matches too rarely to expand (no occurrence found "
                    "within the work allowed for one event)",
                )
                return
            except Exception as exc:  # noqa: BLE001 - the expander raises many kinds
                self.skip(shown, f"cannot expand this event: {one_line(exc)}")
                return
            if occurrence is None:
                break
            count += 1
            self.tick()
            self.count_instances(1)
            if count > per_event:
                self.skip(
                    shown,
                    f"has more than {per_event} occurrences in the planning range "
                    "(limit max_instances_per_event)",
                )
                return
            try:
                instance = instance_of(occurrence, zone, owners)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                self.skip(shown, one_line(exc))
                continue
            if instance is not None and instance.end > start and instance.start < end:
                found.append(instance)
        self.instances.extend(found)


def _repeats(component: Any) -> bool:
    return any(
        component.get(name) is not None for name in ("RRULE", "RDATE", "EXDATE", "RECURRENCE-ID")
    )


def _too_many_events(source: str, count: int, limits: ExpansionLimits) -> str:
    return (
        f"{source}: {count} events, more than the limit of {limits.max_events} "
        "(max_events); the calendar is not read"
    )


def _where(data: bytes | str) -> str:
    """`` (line N)`` for the first line that is not an iCalendar content line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for number, line in enumerate(text.splitlines(), start=1):
        if number == 1 and line.strip().upper() != "BEGIN:VCALENDAR":
            return " (line 1: it does not start with BEGIN:VCALENDAR)"
        if line and line[0] not in " \t" and _CONTENT_LINE.match(line) is None:
            return f" (line {number})"
    return " (its BEGIN/END structure or a value is broken)" if text.strip() else " (empty)"


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
