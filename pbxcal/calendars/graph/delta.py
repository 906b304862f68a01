"""The pure parts of a ``calendarView/delta`` round: its cursor and its change set.

What it does: ``DeltaCursor`` is what pbxcal stores between rounds, as JSON opaque to
the rest of pbxcal (``{"v": 1, "start": ISO, "end": ISO, "delta": deltaLink}``;
``parse_cursor`` answers ``None`` for anything else, and the source then starts a new
round); ``change_set`` turns a round's items (translated one by one by
``events.translate``) into a ``ChangeSet``: the last word on an event wins, and a full
round removes nothing (its rows replace what was stored).

What it must not do: any I/O, or keep a credential in the cursor (the delta link
carries none: the token goes in a header). Start reading at ``change_set``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.calendars.graph.events import translate

__all__ = ["DeltaCursor", "change_set", "iso", "parse_cursor"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaCursor:
    """A round's window [``start``, ``end``) and the delta link that continues it."""

    start: datetime
    end: datetime
    delta: str

    def text(self) -> str:
        """The stored form (see the module docstring)."""
        return json.dumps({
            "v": 1, "start": iso(self.start), "end": iso(self.end), "delta": self.delta,
        })


def parse_cursor(cursor: str) -> DeltaCursor | None:
    """The stored cursor, or ``None`` (then a new round) when it is not one of ours."""
    try:
        data = json.loads(cursor)
        start = datetime.fromisoformat(data["start"])
        end = datetime.fromisoformat(data["end"])
        delta = data["delta"]
    except (ValueError, TypeError, KeyError):
        return None
    if data.get("v") != 1 or not isinstance(delta, str) or start.tzinfo is None:
        return None
    return DeltaCursor(start, end, delta)


def iso(moment: datetime) -> str:
    """``moment`` in UTC as Graph's query parameters and bodies take it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def change_set(items: list[Any], cursor: str, *, full: bool, where: str) -> ChangeSet:
    """The ``ChangeSet`` of a round's ``items``; ``where`` names the mailbox in the
    warning about an event left out."""
    rows: dict[str, EventRow] = {}
    removed: dict[str, None] = {}
    for item in items:
        translation = translate(item)
        if translation.row is not None:
            rows[translation.row.uid] = translation.row
            removed.pop(translation.row.uid, None)
        elif translation.removed is not None:
            removed[translation.removed] = None
            rows.pop(translation.removed, None)
        elif translation.problem is not None:
            _log.warning("%s: event left out: %s", where, translation.problem)
    return ChangeSet(
        cursor=cursor, full=full, upserted=tuple(rows.values()),
        removed=() if full else tuple(removed),
    )
