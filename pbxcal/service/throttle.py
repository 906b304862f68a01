"""``ThrottleBook``: when a shared provider quota may be used again (issue #10:
"Retry-After honoured per mailbox").

A source may name the quota it spends (``throttle_key``, see
``pbxcal.calendars.changes.IncrementalSource``: Graph throttles per app and mailbox, so
two links that read one mailbox through one app registration share it). When one of
them is answered 429/503 with ``Retry-After``, ``CalendarSync`` calls ``hold(key,
until)``; before it starts a sync of any link with that key (scheduled or pushed) it
asks ``until(key, now)`` and moves the read to then. Times are ``time.monotonic()``
seconds, given by the caller (no clock read here). Expired entries are dropped when
looked at, so the book stays as small as the set of keys being throttled right now.

Must not do: know providers, or block anything but the links of the key.
"""

from __future__ import annotations


class ThrottleBook:
    """Key → the monotonic time before which no link with that key is read."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def hold(self, key: str | None, until: float) -> None:
        """No read with ``key`` before ``until`` (a later hold wins; ``None``: nothing)."""
        if key is not None and until > self._until.get(key, 0.0):
            self._until[key] = until

    def until(self, key: str | None, now: float) -> float | None:
        """When ``key`` may be used again, or ``None`` when it may now."""
        if key is None:
            return None
        until = self._until.get(key)
        if until is None:
            return None
        if until <= now:
            del self._until[key]
            return None
        return until

    def __len__(self) -> int:
        return len(self._until)
