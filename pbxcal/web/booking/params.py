"""What a guest asked for in the booking link, read safely: dates, subject, duration,
time zone, the chosen slot; and the slots grouped by day in the guest's zone.

What it does: ``read_query`` turns the query string of ``/book/{agent}`` (the link
format agents already share: ``?start=dd.mm.yyyy&end=dd.mm.yyyy&subject=...``, plus the
page's own ``duration``, ``tz``, ``from`` and ``at``) into a ``GuestQuery``. Nothing in
it raises: a value that cannot be used is replaced by its default and listed in
``problems`` (a message for the page, one line each, translated by the template).
``guess_zone`` picks the guest's time zone when the link names none: the region of
``Accept-Language`` when that region has one zone (``nl-NL`` → Europe/Amsterdam), else
the agent's zone. ``by_day`` groups UTC slots by the guest's local date.

Pure: no I/O, no clock (``now`` is an argument). Start at ``read_query``.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Protocol, TypeVar

from babel.core import get_global

from pbxcal.web.i18n import accepted_languages

#: The days one page shows (the rest behind "later times").
DAYS_PER_PAGE = 7
#: A subject longer than this is not one.
MAX_SUBJECT = 200
_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")


def _(message: str) -> str:
    """Marks a msgid for extraction; the template translates it."""
    return message


@dataclass(frozen=True)
class Problem:
    """One value of the link that was not used: a msgid with ``%(value)s``."""

    message: str
    value: str = ""


class HasStart(Protocol):
    @property
    def start(self) -> datetime: ...


S = TypeVar("S", bound=HasStart)


@dataclass(frozen=True)
class GuestQuery:
    """The guest's choices: local dates ``first_day`` .. ``last_day`` (inclusive) in
    ``zone``, the page's first day ``page_day``, and what the link preset."""

    zone: zoneinfo.ZoneInfo
    duration: int
    first_day: date
    last_day: date
    page_day: date
    subject: str = ""
    #: The slot start picked (UTC), or None while the guest is still choosing.
    at: datetime | None = None
    #: The dates the link asked for (to carry them over in the page's links and forms).
    start_text: str = ""
    end_text: str = ""
    problems: tuple[Problem, ...] = field(default=())

    @property
    def zone_name(self) -> str:
        return self.zone.key

    @property
    def page_last_day(self) -> date:
        return min(self.last_day, self.page_day + timedelta(days=DAYS_PER_PAGE - 1))

    def window(self) -> tuple[datetime, datetime]:
        """The UTC span of this page's days (``page_day`` .. ``page_last_day``)."""
        return (
            _midnight(self.page_day, self.zone),
            _midnight(self.page_last_day + timedelta(days=1), self.zone),
        )

    def later_day(self) -> date | None:
        """The first day of the next page, or None on the last page."""
        following = self.page_last_day + timedelta(days=1)
        return following if following <= self.last_day else None

    def earlier_day(self) -> date | None:
        if self.page_day <= self.first_day:
            return None
        return max(self.first_day, self.page_day - timedelta(days=DAYS_PER_PAGE))


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def parse_date(text: str) -> date | None:
    """``dd.mm.yyyy`` (``d.m.yyyy`` too) as a date, or None."""
    found = _DATE.fullmatch(text.strip())
    if found is None:
        return None
    day, month, year = (int(part) for part in found.groups())
    try:
        return date(year, month, day)
    except ValueError:
        return None


def format_date(day: date) -> str:
    """The link's date format, ``dd.mm.yyyy``."""
    return f"{day.day:02d}.{day.month:02d}.{day.year:04d}"


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    if not name or len(name) > 64 or name not in _all_zones():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


@cache
def _all_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@cache
def zone_names() -> tuple[str, ...]:
    """The IANA zones a guest can choose: ``Area/City`` names, sorted, plus UTC; no
    ``Etc/*``, no ``US/Eastern``-style names and no old spellings CLDR lists as aliases
    (``America/Buenos_Aires``). A zone not listed still works as ``?tz=``."""
    areas = ("Africa/", "America/", "Antarctica/", "Asia/", "Atlantic/", "Australia/",
             "Europe/", "Indian/", "Pacific/")  # fmt: skip
    aliases: Mapping[str, str] = get_global("zone_aliases")
    names = {name for name in _all_zones() if name.startswith(areas) and name not in aliases}
    return ("UTC", *sorted(names))


def zone_choices(current: str) -> tuple[str, ...]:
    """``zone_names`` with ``current`` in it (an alias an agent or a link named)."""
    names = zone_names()
    return names if current in names else tuple(sorted({*names, current}))


def guess_zone(accept_language: str | None, agent_zone: str) -> str:
    """The guest's zone from the region of their language (one zone in that region),
    else ``agent_zone``."""
    territory_zones: Mapping[str, Sequence[str]] = get_global("territory_zones")
    for tag in accepted_languages(accept_language or ""):
        parts = tag.replace("_", "-").split("-")
        regions = [part.upper() for part in parts[1:] if len(part) == 2 and part.isalpha()]
        for region in regions[:1]:
            zones = [name for name in territory_zones.get(region, ()) if name in _all_zones()]
            if len(zones) == 1:
                return zones[0]
            if agent_zone in zones:
                return agent_zone
    return agent_zone


def read_query(
    query: Mapping[str, str],
    *,
    now: datetime,
    horizon_days: int,
    durations: Sequence[int],
    default_zone: str,
) -> GuestQuery:
    """The guest's ``GuestQuery``; see the module docstring."""
    problems: list[Problem] = []
    zone_text = query.get("tz", "").strip()
    zone = _zone(zone_text) if zone_text else None
    if zone_text and zone is None:
        problems.append(
            Problem(_("'%(value)s' is not a time zone this page knows."), _short(zone_text))
        )
    zone = zone or _zone(default_zone) or zoneinfo.ZoneInfo("UTC")

    offered = list(durations) or [30]
    duration = offered[0]
    duration_text = query.get("duration", "").strip()
    if duration_text:
        if duration_text.isdigit() and int(duration_text) in offered:
            duration = int(duration_text)
        else:
            problems.append(
                Problem(
                    _("%(value)s minutes is not a meeting length offered here."),
                    _short(duration_text),
                )
            )

    today = now.astimezone(zone).date()
    horizon_end = (now + timedelta(days=horizon_days)).astimezone(zone).date()
    first_day, last_day = today, horizon_end
    start_text, end_text = query.get("start", "").strip(), query.get("end", "").strip()
    start = _read_day(
        start_text, _("The start date '%(value)s' is not a date like 31.12.2026."), problems
    )
    end = _read_day(
        end_text, _("The end date '%(value)s' is not a date like 31.12.2026."), problems
    )
    if start is not None and end is not None and end < start:
        problems.append(Problem(_("The end date is before the start date."), end_text))
        start = end = None
    if start is not None:
        first_day = max(first_day, start)
    if end is not None:
        last_day = min(last_day, end)
    if end is not None and end < today:
        problems.append(
            Problem(_("The dates in this link (until %(value)s) have passed."), end_text)
        )
        first_day, last_day = today, horizon_end
    elif start is not None and start > horizon_end:
        problems.append(
            Problem(
                _("Meetings can be booked until %(value)s; the dates in this link are later."),
                format_date(horizon_end),
            )
        )
        first_day, last_day = today, horizon_end
    kept_start = start_text if start is not None else ""
    kept_end = end_text if end is not None else ""

    page_day = first_day
    from_text = query.get("from", "").strip()
    if from_text:
        asked = parse_date(from_text)
        if asked is not None and first_day <= asked <= last_day:
            page_day = asked

    subject = query.get("subject", "")
    if len(subject) > MAX_SUBJECT or _has_control(subject):
        problems.append(
            Problem(
                _("The subject in this link was too long or not plain text; please type it below.")
            )
        )
        subject = ""

    at = parse_moment(query.get("at", ""))
    if query.get("at") and at is None:
        problems.append(Problem(_("The chosen time could not be read; please pick a time.")))

    return GuestQuery(
        zone=zone,
        duration=duration,
        first_day=first_day,
        last_day=last_day,
        page_day=page_day,
        subject=subject.strip(),
        at=at,
        start_text=kept_start,
        end_text=kept_end,
        problems=tuple(problems),
    )


def _read_day(text: str, message: str, problems: list[Problem]) -> date | None:
    if not text:
        return None
    day = parse_date(text)
    if day is None:
        problems.append(Problem(message, _short(text)))
    return day


def _short(text: str) -> str:
    """A bad value as the page may quote it: short, printable."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= 40 else cleaned[:39] + "…"


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def parse_moment(text: str) -> datetime | None:
    """A slot start as the page writes it (``2026-11-24T09:00Z``), UTC, or None."""
    text = text.strip()
    if not text or len(text) > 32 or not text.endswith("Z"):
        return None
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        return None
    return moment.astimezone(UTC)


def format_moment(moment: datetime) -> str:
    """The page's way of writing a slot start into a link or form (UTC, minutes)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def by_day(slots: Iterable[S], zone: zoneinfo.ZoneInfo) -> list[tuple[date, list[S]]]:
    """``slots`` (sorted, UTC) grouped by the guest's local date, in order."""
    days: list[tuple[date, list[S]]] = []
    for slot in slots:
        day = slot.start.astimezone(zone).date()
        if not days or days[-1][0] != day:
            days.append((day, []))
        days[-1][1].append(slot)
    return days
