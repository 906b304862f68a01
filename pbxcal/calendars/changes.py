"""The incremental calendar port: what changed since a cursor.

``IncrementalSource.changes(cursor)`` answers with a ``ChangeSet`` (VEVENT rows upserted,
events removed, the new cursor, and whether this is a full resync) or ``None`` when
nothing changed. The store applies one change set and its cursor in one transaction, so
a crash between fetching and committing never loses or skips a change: the next sync
starts from the cursor that was committed with the rows.

Every provider delivers the same rows: one ``EventRow`` per (UID, RECURRENCE-ID), each an
iCalendar VEVENT block, so the core expands every provider the same way (recurrence
lines, exceptions with their RECURRENCE-ID, cancelled instances as ``STATUS:CANCELLED``
overrides, all-day ``VALUE=DATE``, time zones, the owner's own declined response as the
ATTENDEE's PARTSTAT, transparency as TRANSP). Adapters translate their provider's JSON
or XML into these rows and map their library's errors into pbxcal's error tree:

* ``CalendarUnavailable`` – try again later (network, 5xx, timeouts); the last known
  events keep driving the forwardings. ``CalendarRateLimited`` says how long to wait.
* ``CalendarAuthFailed`` – the credentials were refused (wrong password): "auth failed".
* ``CalendarNeedsRelink`` – the grant was revoked or expired (OAuth ``invalid_grant``):
  the customer must link again.
* ``CalendarError`` – the source answered with something unusable.

Must not do: blocking I/O on the event loop (blocking client libraries go through
``pbxcal.calendars.blocking.BlockingCalls``), or put a secret into an error message.
Start reading at ``IncrementalSource``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class EventRow:
    """One VEVENT as the store keeps it.

    ``recurrence_id`` is the RECURRENCE-ID property's value as iCalendar text (e.g.
    ``"20260330T070000Z"``, or with its parameters ``"TZID=Europe/Amsterdam:20260330T090000"``
    / ``"VALUE=DATE:20260330"``) for an overridden or cancelled instance, ``None`` for a
    single event or the master of a series. ``ical`` is one ``BEGIN:VEVENT``..``END:VEVENT``
    block with CRLF line ends, holding at least UID and DTSTART.
    """

    uid: str
    recurrence_id: str | None
    ical: str


@dataclass(frozen=True)
class ChangeSet:
    """What changed in one calendar since the cursor the source was given.

    ``full``: ``upserted`` is the whole calendar (everything stored before is replaced);
    otherwise rows are upserted by (uid, recurrence_id), ``removed`` drops a UID with all
    its instances and ``removed_instances`` drops single (uid, recurrence_id) overrides.
    ``cursor`` is opaque to pbxcal and handed back on the next call (a sync token, a
    delta link, an ETag...). ``timezones`` holds VTIMEZONE blocks the rows need
    (iCalendar text; ``""`` keeps what is stored), ``calendar_tz`` the calendar's own
    IANA zone if it names one; ``working_hours`` the owner's working hours where the
    provider reports them (``{"time_zone": IANA, "days": ["monday", ...], "start":
    "08:00", "end": "17:00"}``; Microsoft 365's mailboxSettings; ``None`` keeps what is
    stored), for the availability feature.
    """

    cursor: str
    full: bool
    upserted: tuple[EventRow, ...] = ()
    removed: tuple[str, ...] = ()
    removed_instances: tuple[tuple[str, str], ...] = ()
    timezones: str = ""
    calendar_tz: str | None = None
    working_hours: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Translation:
    """What one provider item means for the stored calendar: ``row`` to upsert, or
    ``removed`` (a UID), or neither (``problem`` says why when it could not be read; an
    item with nothing to store, such as a Graph series master, has none)."""

    row: EventRow | None = None
    removed: str | None = None
    problem: str | None = None


def translate_item(item: Any, translate: Callable[[dict[str, Any]], Translation]) -> Translation:
    """``translate(item)`` for a JSON object with a non-empty string ``id``; anything else,
    or an item ``translate`` cannot read, is a ``problem`` (one bad event never fails a
    sync). The Google and Graph adapters' ``events.translate``."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        return Translation(problem="event without an id")
    try:
        return translate(item)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        short = " ".join(str(exc).split())[:120]
        return Translation(problem=f"event {item['id']!r} cannot be read: {short}")


def retry_after_seconds(value: Any) -> float | None:
    """A ``Retry-After`` header in seconds (0 to a day) for ``CalendarRateLimited``;
    ``None`` when absent or not a number of seconds."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds <= 86_400 else None


class IncrementalSource(Protocol):
    """One calendar of one provider account, read incrementally.

    Optional members (looked up with ``getattr``; a source without them has neither):

    * ``throttle_key: str | None`` – links whose sources have the same key share one
      provider quota (Graph: the app, or the app and the signed-in account, and the
      mailbox). When one is rate limited (``CalendarRateLimited.retry_after``), the
      scheduler holds back every link with that key until then, not only the one.
    * ``updated_secret() -> tuple[str, bytes] | None`` – a credential the source changed
      while it worked (an OAuth token cache whose refresh token rotated), as ``(secret
      kind, value)`` for the link's encrypted secrets, or ``None``. Blocking (it may wait
      for a token request in progress): ``CalendarSync`` calls it in a worker thread
      after every sync and stores the value (``store.save_secret``), so the newest
      credential survives a restart; a value that could not be stored is kept and
      stored at the next try. Others that use the source's credential (the push keeper)
      ask ``CalendarSync.save_updated_secret(link_id)`` to do the same.
    """

    provider: str

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        """What changed since ``cursor`` (``None``: never synced, so a full read).

        Returns ``None`` when nothing changed. A cursor the provider no longer accepts
        (Google's 410, Graph's ``syncStateNotFound``, an expired CalDAV sync token)
        is handled inside: the adapter answers with a full change set.
        """
        ...
