"""Event instances → forwarding windows for one extension (the heart of ``pbxcal plan``).

``plan_windows(instances, start, end, policy)`` parses every instance's title into a
target (``targets.parse_title``), applies the parallel-target limit, and sweeps the
accepted instances into windows that are sorted, never overlap, are clipped to
``[start, end)``, split wherever the set of targets changes and merge where adjacent
windows have the same set. Duplicate targets collapse.

The limit is decided per instance, earliest start first (then shortest, then UID): an
instance is accepted when, at its start, the distinct targets already ringing plus its
own stay within ``policy.max_targets``; otherwise it is rejected as
``too-many-targets``. Because every earlier-accepted instance started no later, the
moment it starts is the busiest moment of its whole duration, so one check suffices.

Titles repeat (a weekly appointment, the same mobile number every day), so titles are
parsed through a memoising ``targets.TitleParser``: pass one (per policy and PBX) to
reuse it across calls; it also carries the PBX's known extensions. Pure: no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Rejection, TitleParser


@dataclass(frozen=True)
class Window:
    """From ``start`` to ``end`` (UTC) the extension rings ``targets`` (sorted) in parallel."""

    start: datetime
    end: datetime
    targets: tuple[str, ...]


@dataclass(frozen=True)
class RejectedEvent:
    """An event instance that does not forward, and why."""

    uid: str
    start: datetime
    title: str
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Plan:
    """The forwarding plan of one extension over a range."""

    windows: tuple[Window, ...]
    rejected: tuple[RejectedEvent, ...]

    def targets_at(self, moment: datetime) -> tuple[str, ...]:
        """The targets that ring at ``moment`` (empty when no window covers it)."""
        for window in self.windows:
            if window.start <= moment < window.end:
                return window.targets
        return ()

    def next_boundary_after(self, moment: datetime) -> datetime | None:
        """The first window start or end strictly after ``moment``, if any."""
        later = [t for w in self.windows for t in (w.start, w.end) if t > moment]
        return min(later, default=None)


def plan_windows(
    instances: Iterable[EventInstance],
    start: datetime,
    end: datetime,
    policy: NumberPolicy,
    *,
    parser: TitleParser | None = None,
) -> Plan:
    """Plan the forwarding windows of one extension from its event instances.

    ``parser`` parses the titles (its policy should be ``policy``; the limit on parallel
    targets is ``policy.max_targets``); without one, a fresh ``TitleParser(policy)``
    is used, i.e. no known extensions.
    """
    parse = (parser if parser is not None else TitleParser(policy)).parse
    accepted: list[tuple[EventInstance, str]] = []
    rejected: list[RejectedEvent] = []
    # (start, end, uid, target, index, instance): sorts natively, index breaks full ties
    candidates: list[tuple[datetime, datetime, str, str, int, EventInstance]] = []
    for index, instance in enumerate(instances):
        if instance.end <= start or instance.start >= end or instance.end <= instance.start:
            continue
        parsed = parse(instance.title)
        if isinstance(parsed, Rejection):
            rejected.append(
                RejectedEvent(
                    instance.uid, instance.start, instance.title, parsed.reason, parsed.detail
                )
            )
        else:
            candidates.append(
                (instance.start, instance.end, instance.uid, parsed.value, index, instance)
            )
    candidates.sort()

    ringing: Counter[str] = Counter()
    ending: list[tuple[datetime, int, str]] = []  # heap of (end, seq, target)
    for seq, (begins, ends, _, target, _, instance) in enumerate(candidates):
        while ending and ending[0][0] <= begins:
            _, _, gone = heapq.heappop(ending)
            ringing[gone] -= 1
            if ringing[gone] == 0:
                del ringing[gone]
        if target not in ringing and len(ringing) >= policy.max_targets:
            detail = f"more than {policy.max_targets} parallel targets"
            rejected.append(_rejected(instance, Reason.TOO_MANY_TARGETS, detail))
            continue
        ringing[target] += 1
        heapq.heappush(ending, (ends, seq, target))
        accepted.append((instance, target))

    rejected.sort(key=lambda r: (r.start, r.uid, r.title))
    return Plan(_sweep(accepted, start, end), tuple(rejected))


def _sweep(
    accepted: list[tuple[EventInstance, str]], start: datetime, end: datetime
) -> tuple[Window, ...]:
    # Plain dicts and counts, and a new target tuple only when the set of targets
    # changes: this loop runs for every boundary of every instance.
    deltas: dict[datetime, dict[str, int]] = {}
    for instance, target in accepted:
        for moment, step in ((max(instance.start, start), 1), (min(instance.end, end), -1)):
            at = deltas.get(moment)
            if at is None:
                deltas[moment] = {target: step}
            else:
                at[target] = at.get(target, 0) + step
    spans: list[list[Any]] = []  # [start, end, targets], merged as we go
    active: dict[str, int] = {}
    targets: tuple[str, ...] = ()
    for here, following in itertools.pairwise(sorted(deltas)):
        changed = False
        for target, step in deltas[here].items():
            if step:
                count = active.get(target, 0) + step
                if count:
                    changed = changed or target not in active
                    active[target] = count
                else:
                    del active[target]
                    changed = True
        if changed:
            targets = tuple(sorted(active))
        if not targets:
            continue
        if spans and spans[-1][1] == here and spans[-1][2] == targets:
            spans[-1][1] = following
        else:
            spans.append([here, following, targets])
    return tuple(Window(s, e, t) for s, e, t in spans)


def _rejected(instance: EventInstance, reason: Reason, detail: str) -> RejectedEvent:
    return RejectedEvent(instance.uid, instance.start, instance.title, reason, detail)
