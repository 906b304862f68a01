"""In-memory fakes of pbxcal's ports, shipped for tests of code that uses them.

* ``FakePbx`` implements ``pbxcal.pbx.Pbx`` over a dict (extension -> targets). It
  validates like the real adapter (the wire rule, per extension), records every
  ``apply``, and can be told to refuse given extensions, to be unavailable
  (``PbxUnavailable``), and which extensions exist. ``await fake.next_apply()`` waits
  for the next ``apply`` without polling or sleeping.
* ``FakeClock`` implements the clock port (``now()``) and only moves when told:
  ``advance(seconds | timedelta)`` or ``set(moment)``.

Must not do I/O or touch a real PBX; no sleeping anywhere. Start reading at ``FakePbx``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pbxcal.errors import PbxUnavailable, UnsafeValue
from pbxcal.pbx import ApplyResult, ForwardingState
from pbxcal.pbx.values import validate_forwarding

__all__ = ["AppliedBatch", "FakeClock", "FakePbx"]


@dataclass(frozen=True)
class AppliedBatch:
    """One ``apply`` call as the fake saw it."""

    #: What the caller asked for (extension -> targets, as given).
    changes: dict[str, tuple[str, ...]]
    #: The extensions refused, with their reasons (as in ``ApplyResult``).
    refused: dict[str, str]

    @property
    def applied(self) -> dict[str, tuple[str, ...]]:
        """The changes that took effect (sorted, de-duplicated targets; () = cleared)."""
        return {ext: tuple(sorted(set(t))) for ext, t in self.changes.items()
                if ext not in self.refused}


class FakePbx:
    """The ``Pbx`` port in memory. Attributes are meant to be set by the test.

    ``state`` is what the PBX holds; ``extensions`` what ``read_extensions`` reports;
    ``refuse`` maps an extension to the reason it will be refused with (a PBX error
    answer); ``unavailable = True`` makes every method raise ``PbxUnavailable``.
    """

    def __init__(self, name: str = "main", *, state: Mapping[str, Iterable[str]] | None = None,
                 extensions: Collection[str] = ()) -> None:
        self.name = name
        self.state: ForwardingState = {
            ext: tuple(sorted(set(t))) for ext, t in (state or {}).items()}
        self.extensions: frozenset[str] = frozenset(extensions)
        self.refuse: dict[str, str] = {}
        self.unavailable = False
        #: Every ``apply`` call, in order.
        self.batches: list[AppliedBatch] = []
        #: How often each method was called (``read_applied``, ``apply``...).
        self.calls: dict[str, int] = {"read_applied": 0, "apply": 0, "read_extensions": 0}
        self._waiters: list[asyncio.Future[AppliedBatch]] = []

    def __repr__(self) -> str:
        return f"FakePbx({self.name!r}, {len(self.state)} forwardings)"

    def _check(self, method: str) -> None:
        self.calls[method] += 1
        if self.unavailable:
            raise PbxUnavailable(f"{self.name}: not connected (FakePbx.unavailable)")

    async def read_applied(self) -> ForwardingState:
        self._check("read_applied")
        return dict(self.state)

    async def read_extensions(self) -> frozenset[str]:
        self._check("read_extensions")
        return self.extensions

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        """Apply like ``AmiPbx``: per extension, unsafe values and ``refuse`` refused."""
        self._check("apply")
        refused: dict[str, str] = {}
        for ext, targets in changes.items():
            try:
                _, checked = validate_forwarding(ext, targets)
            except UnsafeValue as exc:
                refused[ext] = str(exc)
                continue
            if ext in self.refuse:
                refused[ext] = self.refuse[ext]
            elif checked:
                self.state[ext] = checked
            else:
                self.state.pop(ext, None)
        batch = AppliedBatch({ext: tuple(t) for ext, t in changes.items()}, refused)
        self.batches.append(batch)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(batch)
        return ApplyResult(refused=refused)

    async def next_apply(self) -> AppliedBatch:
        """Wait for the next ``apply`` call and return what it did.

        Bound it with ``asyncio.timeout`` in a test. Create the wait *before* the action
        that should cause the apply (``waiter = asyncio.ensure_future(pbx.next_apply())``)
        when that action may apply at once.
        """
        future: asyncio.Future[AppliedBatch] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return await future

    @property
    def applied(self) -> list[dict[str, tuple[str, ...]]]:
        """The effective changes of every ``apply`` so far (refused ones left out)."""
        return [batch.applied for batch in self.batches]


class FakeClock:
    """The clock port, moved by hand. Always tz-aware UTC."""

    def __init__(self, start: datetime | None = None) -> None:
        moment = start if start is not None else datetime(2026, 1, 1, tzinfo=UTC)
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs a tz-aware datetime")
        self.moment = moment.astimezone(UTC)

    def now(self) -> datetime:
        return self.moment

    def advance(self, delta: float | timedelta) -> datetime:
        """Move forward by ``delta`` (seconds or a ``timedelta``); the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("FakeClock.advance: time does not go backwards; use set()")
        self.moment += step
        return self.moment

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (either way, like a wall-clock step by NTP)."""
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs a tz-aware datetime")
        self.moment = moment.astimezone(UTC)
