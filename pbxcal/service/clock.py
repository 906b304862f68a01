"""The clock port: the only place the daemon reads the wall clock.

The core never reads a clock; the reconciler asks ``Clock.now()`` and hands ``now`` on.
Timers sleep on the event loop's monotonic clock but aim at wall-clock boundaries, and
re-check ``now()`` after waking, so a wall-clock step (NTP) cannot make them fire late.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, tz-aware UTC."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)
