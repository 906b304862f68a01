"""Calendar sources: where a link's events come from.

``CalendarSource`` is the port the daemon talks to: one method, ``fetch(previous)``,
that returns ``NotModified`` or a ``Fetched`` iCalendar document, using the previous
sync state for conditional requests. Adapters map their library's errors to
``CalendarUnavailable`` (try again later, keep the last known events) or
``CalendarError`` (the source answered with something unusable).

Adapters: ``ics.IcsFileSource`` (a local file), ``ics.IcsHttpSource`` (http(s) and
webcal URLs with ETag / Last-Modified). ``source_for(link)`` picks one. The cloud
providers (Google, Microsoft 365, Exchange, CalDAV) slot in here as more adapters.
``snapshot.py`` turns a document into the per-event rows the store keeps, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Validators:
    """What a source said about the version it sent (for conditional requests)."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class NotModified:
    """The source has not changed since ``previous``."""


@dataclass(frozen=True)
class Fetched:
    """A new version of the calendar: an iCalendar document and its validators."""

    body: bytes
    validators: Validators


class CalendarSource(Protocol):
    """One calendar a link reads from."""

    provider: str

    async def fetch(self, previous: Validators | None) -> Fetched | NotModified:
        """Fetch the calendar unless it is unchanged since ``previous``."""
        ...
