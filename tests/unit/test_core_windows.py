"""plan_windows: event instances → sorted, merged, clipped forwarding windows."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Target, parse_title
from pbxcal.core.windows import Plan, Window, plan_windows

NL = NumberPolicy.default("NL")
T0 = datetime(2026, 4, 6, tzinfo=UTC)
MOBILE = "+31612345678"


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ev(uid: str, start: float, end: float, title: str) -> EventInstance:
    return EventInstance(uid, h(start), h(end), title)


def plan(
    *instances: EventInstance, start: float = 0, end: float = 24, max_targets: int = 5
) -> Plan:
    policy = NumberPolicy(region="NL", allowed_countries=frozenset({"NL"}), max_targets=max_targets)
    return plan_windows(list(instances), h(start), h(end), policy)


def test_overlap_gives_parallel_targets_split_where_set_changes() -> None:
    result = plan(ev("a", 8, 10, "0612345678"), ev("b", 9, 11, "333"))
    assert result.windows == (
        Window(h(8), h(9), (MOBILE,)),
        Window(h(9), h(10), (MOBILE, "333")),
        Window(h(10), h(11), ("333",)),
    )
    assert result.rejected == ()


def test_targets_are_sorted_strings() -> None:
    result = plan(ev("a", 8, 9, "444"), ev("b", 8, 9, "333"), ev("c", 8, 9, "020 1234567"))
    assert result.windows == (Window(h(8), h(9), ("+31201234567", "333", "444")),)


def test_duplicate_targets_collapse() -> None:
    result = plan(
        ev("a", 8, 10, "0612345678"),
        ev("b", 9, 11, "06-12345678"),
        ev("c", 9, 9.5, "+31 6 1234 5678"),
    )
    assert result.windows == (Window(h(8), h(11), (MOBILE,)),)


def test_adjacent_equal_sets_merge_and_different_ones_do_not() -> None:
    assert plan(ev("a", 8, 9, "333"), ev("b", 9, 10, "333")).windows == (
        Window(h(8), h(10), ("333",)),
    )
    assert plan(ev("a", 8, 9, "333"), ev("b", 9, 10, "444")).windows == (
        Window(h(8), h(9), ("333",)),
        Window(h(9), h(10), ("444",)),
    )
    # a gap keeps two windows even with the same targets
    assert plan(ev("a", 8, 9, "333"), ev("b", 9.5, 10, "333")).windows == (
        Window(h(8), h(9), ("333",)),
        Window(h(9.5), h(10), ("333",)),
    )


def test_set_returning_to_an_earlier_value_is_split_correctly() -> None:
    result = plan(ev("a", 8, 12, "333"), ev("b", 9, 10, "444"))
    assert result.windows == (
        Window(h(8), h(9), ("333",)),
        Window(h(9), h(10), ("333", "444")),
        Window(h(10), h(12), ("333",)),
    )


def test_clipping_to_range() -> None:
    result = plan(ev("a", 6, 9, "333"), ev("b", 11, 14, "444"), start=7, end=12)
    assert result.windows == (Window(h(7), h(9), ("333",)), Window(h(11), h(12), ("444",)))


def test_instances_outside_range_or_empty_are_ignored() -> None:
    result = plan(
        ev("before", 1, 2, "333"),
        ev("touch-start", 2, 3, "444"),
        ev("touch-end", 10, 11, "555"),
        ev("empty", 5, 5, "666"),
        ev("junk-outside", 11, 12, "Lunch"),
        start=3,
        end=10,
    )
    assert result.windows == ()
    assert result.rejected == ()


def test_rejected_titles_with_reasons_sorted_by_start() -> None:
    result = plan(
        ev("p", 12, 13, "0900 1234567"),
        ev("l", 11, 12, "Lunch"),
        ev("i", 13, 14, "1234567"),
        ev("e", 10, 11, "112"),
        ev("ok", 9, 10, "333"),
    )
    assert [(r.uid, r.reason) for r in result.rejected] == [
        ("e", Reason.BLOCKED_BY_POLICY),
        ("l", Reason.NOT_A_NUMBER),
        ("p", Reason.BLOCKED_BY_POLICY),
        ("i", Reason.INVALID_NUMBER),
    ]
    assert result.rejected[1].start == h(11) and result.rejected[1].title == "Lunch"
    assert result.windows == (Window(h(9), h(10), ("333",)),)


def test_too_many_targets_is_deterministic() -> None:
    instances = [
        ev("a", 8, 10, "301"),
        ev("b", 8, 10, "302"),
        ev("c", 8, 10, "303"),
        ev("d", 9, 10, "301"),  # a target already ringing never counts twice
        ev("e", 9, 11, "304"),  # rejected: the set is full at 09:00
        ev("f", 10, 11, "305"),  # accepted: a, b, c ended at 10:00
    ]
    expected_windows = (
        Window(h(8), h(10), ("301", "302")),
        Window(h(10), h(11), ("305",)),
    )
    for seed in range(10):
        shuffled = instances[:]
        random.Random(seed).shuffle(shuffled)
        result = plan(*shuffled, max_targets=2)
        assert result.windows == expected_windows
        assert [(r.uid, r.reason) for r in result.rejected] == [
            ("c", Reason.TOO_MANY_TARGETS),
            ("e", Reason.TOO_MANY_TARGETS),
        ]


def test_too_many_targets_prefers_earliest_then_shortest_then_uid() -> None:
    result = plan(
        ev("z-long", 8, 12, "301"),
        ev("y-short", 8, 9, "302"),
        ev("a-late", 8.5, 9, "303"),
        max_targets=1,
    )
    # at 08:00 the shorter y-short wins over z-long; at 08:30 y-short still rings
    assert result.windows == (Window(h(8), h(9), ("302",)),)
    assert sorted(r.uid for r in result.rejected) == ["a-late", "z-long"]


def test_plan_helpers() -> None:
    result = plan(ev("a", 8, 10, "0612345678"), ev("b", 9, 11, "333"))
    assert result.targets_at(h(7.99)) == ()
    assert result.targets_at(h(8)) == (MOBILE,)
    assert result.targets_at(h(9.5)) == (MOBILE, "333")
    assert result.targets_at(h(11)) == ()
    assert result.next_boundary_after(h(7)) == h(8)
    assert result.next_boundary_after(h(9)) == h(10)
    assert result.next_boundary_after(h(11)) is None


# -- properties ---------------------------------------------------------------------------

TITLES = [
    "333",
    "444",
    "201",
    "0612345678",
    "06-12345678",
    "+31 20 123 4567",
    "020 7654321",
    "Lunch",
    "112",
    "0900 1234567",
    "1234567",
    "",
    "Call 333",
    "+32 470 12 34 56",
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[EventInstance], datetime, datetime, int]:
    count = draw(st.integers(0, 25))
    instances = []
    for n in range(count):
        start = draw(st.integers(0, 96)) * 15
        length = draw(st.integers(0, 24)) * 15
        title = draw(st.sampled_from(TITLES))
        instances.append(
            EventInstance(
                f"e{n:02d}",
                T0 + timedelta(minutes=start),
                T0 + timedelta(minutes=start + length),
                title,
            )
        )
    lo = draw(st.integers(-4, 60)) * 15
    hi = lo + draw(st.integers(1, 100)) * 15
    max_targets = draw(st.integers(1, 6))
    return instances, T0 + timedelta(minutes=lo), T0 + timedelta(minutes=hi), max_targets


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_windows_properties(
    scenario: tuple[list[EventInstance], datetime, datetime, int],
) -> None:
    instances, start, end, max_targets = scenario
    policy = NumberPolicy(region="NL", allowed_countries=frozenset({"NL"}), max_targets=max_targets)
    result = plan_windows(instances, start, end, policy)
    windows = result.windows

    # shape: sorted, non-overlapping, inside range, merged
    for w in windows:
        assert start <= w.start < w.end <= end
        assert w.targets and list(w.targets) == sorted(set(w.targets))
        assert len(w.targets) <= max_targets
    for a, b in itertools.pairwise(windows):
        assert a.end <= b.start
        assert not (a.end == b.start and a.targets == b.targets)

    # which instances forward, according to the rejections
    too_many = {r.uid for r in result.rejected if r.reason is Reason.TOO_MANY_TARGETS}
    in_range = [i for i in instances if i.end > start and i.start < end and i.end > i.start]
    accepted: list[tuple[EventInstance, str]] = []
    for i in in_range:
        parsed = parse_title(i.title, policy)
        listed = [r for r in result.rejected if r.uid == i.uid]
        if isinstance(parsed, Target):
            assert len(listed) == (1 if i.uid in too_many else 0)
            if i.uid not in too_many:
                accepted.append((i, parsed.value))
        else:
            assert [(r.reason, r.title) for r in listed] == [(parsed.reason, i.title)]
    assert {r.uid for r in result.rejected} <= {i.uid for i in in_range}

    # exact coverage on every elementary piece of time
    moments = {start, end} | {w.start for w in windows} | {w.end for w in windows}
    moments |= {t for i, _ in accepted for t in (i.start, i.end) if start <= t <= end}
    cuts = sorted(moments)
    for a, b in itertools.pairwise(cuts):
        expected = tuple(sorted({t for i, t in accepted if i.start <= a < i.end}))
        assert result.targets_at(a) == expected, (a, b)
        # every instant of [a, b) is the same as a
        assert result.targets_at(b - timedelta(seconds=1)) == expected
    # outside the range nothing rings
    assert result.targets_at(start - timedelta(seconds=1)) == ()
    assert result.targets_at(end) == ()

    # a too-many rejection only happens when the set at its start is full without it
    # (checked where the start is inside the range, as windows are clipped)
    for r in result.rejected:
        if r.reason is Reason.TOO_MANY_TARGETS and r.start >= start:
            parsed = parse_title(r.title, policy)
            assert isinstance(parsed, Target)
            ringing = result.targets_at(r.start)
            assert parsed.value not in ringing
            assert len(ringing) >= max_targets

    # input order does not matter
    assert plan_windows(list(reversed(instances)), start, end, policy) == result
