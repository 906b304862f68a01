"""Benchmark of the pure core on a large synthetic calendar.

Run: ``.venv/bin/python bench/bench_core.py [--repeat N]``

* plan:  one calendar, 5,000 VEVENTs over 90 days (3,800 single events, 1,000 recurring
  weekly/daily, a third with an EXDATE, and 200 RECURRENCE-ID overrides); parse alone (baseline) vs
  parse + expand_calendar + plan_windows over the 90 days.
* slots: one agent calendar with 1,000 busy events over 31 days; parse + expand alone
  (baseline) vs parse + expand + busy_intervals + free_slots over the 31 days.
* plan_windows alone over the plan calendar's already-expanded instances (17,813):
  every title parsed (``parse_title`` per instance, the old way; baseline) vs a fresh
  memoising ``TitleParser`` per call, and vs one kept across calls (the daemon's way).
* hostile calendars, time and peak memory (tracemalloc, separate run): one
  ``RRULE:FREQ=SECONDLY`` event without end over a 14-day horizon, against the capped
  path as baseline (the same event with ``COUNT`` = max_instances_per_event, i.e.
  exactly the cap expanded); and a 100,000-event document refused by
  ``count_events`` before parsing, against parse + expand of a document at the
  ``max_events`` cap (20,000 events) as baseline; and 1,000 events whose rule never
  matches again (``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30``: dateutil would walk to the
  year 9999 for each), against the same events with a rule that matches monthly
  (``FREQ=DAILY;BYMONTHDAY=28``).
  Goal: each ≤ 10 s and ≤ 400 MiB.

Prints the median wall time per call of ``--repeat`` runs (default 3; ~1 min).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from pbxcal.core.ical import (
    Expansion,
    ExpansionLimits,
    OverLimit,
    check_event_count,
    expand_calendar,
    parse_calendar,
)
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.slots import AvailabilityRules, Slot, busy_intervals, free_slots
from pbxcal.core.targets import Rejection, Target, TitleParser, parse_title
from pbxcal.core.windows import Plan, plan_windows

AMS = ZoneInfo("Europe/Amsterdam")
START = datetime(2026, 3, 2, tzinfo=UTC)  # spans the spring DST change
TITLES = [
    "333",
    "201",
    "0612345678",
    "06-23456789",
    "+31 20 123 4567",
    "020 7654321",
    "Lunch",
    "Customer visit",
    "0900 1234567",
    "112",
    "Team meeting",
    "+32 470 12 34 56",
]
MEETINGS = ["Team meeting", "1:1", "Customer call", "Review", "Planning", "Interview"]


def _fmt(moment: datetime) -> str:
    return moment.astimezone(AMS).strftime("%Y%m%dT%H%M%S")


def _event(uid: str, start: datetime, minutes: int, title: str, extra: str = "") -> str:
    end = start + timedelta(minutes=minutes)
    return (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260301T000000Z\r\n"
        f"DTSTART;TZID=Europe/Amsterdam:{_fmt(start)}\r\n"
        f"DTEND;TZID=Europe/Amsterdam:{_fmt(end)}\r\nSUMMARY:{title}\r\n{extra}END:VEVENT\r\n"
    )


def _calendar(parts: list[str]) -> bytes:
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//bench//EN\r\n"
    return (head + "".join(parts) + "END:VCALENDAR\r\n").encode()


def _slot_start(rng: random.Random, days: int) -> datetime:
    day = START + timedelta(days=rng.randrange(days))
    return day.replace(hour=rng.randrange(6, 17), minute=rng.choice([0, 15, 30, 45]))


def plan_calendar(rng: random.Random, singles: int = 3800, recurring: int = 1000) -> bytes:
    parts = [
        _event(
            f"s{n}@bench",
            _slot_start(rng, 90),
            rng.choice([15, 30, 60, 120, 240]),
            rng.choice(TITLES),
        )
        for n in range(singles)
    ]
    for n in range(recurring):
        uid = f"r{n}@bench"
        first = _slot_start(rng, 14)
        minutes = rng.choice([30, 60, 90])
        title = rng.choice(TITLES)
        if n % 4 == 0:
            rule, step = "FREQ=DAILY;COUNT=20", timedelta(days=1)
        else:
            rule, step = "FREQ=WEEKLY;UNTIL=20260531T000000Z", timedelta(weeks=1)
        extra = f"RRULE:{rule}\r\n"
        if n % 3 == 0:
            extra += f"EXDATE;TZID=Europe/Amsterdam:{_fmt(first + 2 * step)}\r\n"
        parts.append(_event(uid, first, minutes, title, extra))
        if n % 5 == 0:  # an override moved by an hour, with another title
            moved = first + 3 * step
            parts.append(
                _event(
                    uid,
                    moved + timedelta(hours=1),
                    minutes,
                    rng.choice(TITLES),
                    f"RECURRENCE-ID;TZID=Europe/Amsterdam:{_fmt(moved)}\r\n",
                )
            )
    return _calendar(parts)


def slots_calendar(rng: random.Random, events: int = 1000) -> bytes:
    return _calendar(
        [
            _event(
                f"b{n}@bench",
                _slot_start(rng, 31),
                rng.choice([15, 30, 45, 60, 90]),
                rng.choice(MEETINGS),
            )
            for n in range(events)
        ]
    )


class UnmemoisedParser(TitleParser):
    """Parses every title again, as ``plan_windows`` did before the cache."""

    def parse(self, title: str) -> Target | Rejection:
        return parse_title(title, self.policy, self.known_extensions)


def secondly_calendar(count: int | None) -> bytes:
    extra = "RRULE:FREQ=SECONDLY" + (f";COUNT={count}" if count else "") + "\r\n"
    return _calendar(
        [_event("secondly@bench", START + timedelta(days=1), 1, "333", extra)]
        + [_event(f"s{n}@bench", START + timedelta(hours=n), 30, "0612345678") for n in range(50)]
    )


def rare_rule_calendar(rule: str, events: int = 1000) -> bytes:
    rule = f"RRULE:{rule}\r\n"
    return _calendar(
        [
            _event(f"rare{n}@bench", START + timedelta(hours=n), 30, "333", rule)
            for n in range(events)
        ]
    )


def peak_mib(call: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def median_seconds(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    rng = random.Random(20260301)
    policy = NumberPolicy.default("NL")

    big = plan_calendar(rng)
    end90 = START + timedelta(days=90)

    def parse_only() -> object:
        return parse_calendar(big)

    def plan_90() -> tuple[Expansion, Plan]:
        expansion = expand_calendar(parse_calendar(big), START, end90, AMS)
        return expansion, plan_windows(expansion.instances, START, end90, policy)

    expansion, plan = plan_90()
    print(
        f"plan calendar: {big.count(b'BEGIN:VEVENT')} VEVENTs, {len(big) / 1e6:.1f} MB, "
        f"{len(expansion.instances)} instances in 90 days, {len(plan.windows)} windows, "
        f"{len(plan.rejected)} rejected, {len(expansion.skipped)} skipped"
    )

    agent = slots_calendar(rng)
    first_day, last_day = date(2026, 3, 2), date(2026, 4, 1)
    lo = START - timedelta(days=1)
    hi = datetime.combine(last_day + timedelta(days=2), dtime(0), tzinfo=UTC)
    rules = AvailabilityRules(
        timezone=AMS,
        duration=timedelta(minutes=30),
        hours={d: [(dtime(9), dtime(17))] for d in range(5)},
        breaks=[(dtime(12, 30), dtime(13))],
        step=timedelta(minutes=15),
        buffer_before=timedelta(minutes=10),
        buffer_after=timedelta(minutes=10),
        min_notice=timedelta(hours=4),
    )
    now = START + timedelta(hours=8)

    def expand_agent() -> object:
        return expand_calendar(parse_calendar(agent), lo, hi, AMS)

    def slots_31() -> list[Slot]:
        instances = expand_calendar(parse_calendar(agent), lo, hi, AMS).instances
        return free_slots(busy_intervals(instances, policy), rules, first_day, last_day, now)

    slots = slots_31()
    print(
        f"slots calendar: {agent.count(b'BEGIN:VEVENT')} VEVENTs, "
        f"{len(slots)} free slots in 31 days"
    )

    instances = expansion.instances
    kept = TitleParser(policy)

    def plan_unmemoised() -> object:
        return plan_windows(instances, START, end90, policy, parser=UnmemoisedParser(policy))

    def plan_memoised() -> object:
        return plan_windows(instances, START, end90, policy)

    def plan_kept_parser() -> object:
        return plan_windows(instances, START, end90, policy, parser=kept)

    assert plan_unmemoised() == plan_memoised() == plan_kept_parser()

    limits = ExpansionLimits()
    horizon = START + timedelta(days=14)
    forever = secondly_calendar(None)
    capped = secondly_calendar(limits.max_instances_per_event)
    at_cap = plan_calendar(random.Random(7), singles=limits.max_events, recurring=0)
    huge = plan_calendar(random.Random(8), singles=100_000, recurring=0)

    def expand_secondly(data: bytes) -> Callable[[], Expansion]:
        def run() -> Expansion:
            return expand_calendar(parse_calendar(data), START, horizon, AMS, limits=limits)

        return run

    never = rare_rule_calendar("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30")
    monthly = rare_rule_calendar("FREQ=DAILY;BYMONTHDAY=28")

    def expand_rare(data: bytes) -> Callable[[], object]:
        def run() -> object:
            try:
                return expand_calendar(parse_calendar(data), START, horizon, AMS, limits=limits)
            except OverLimit as exc:
                return exc

        return run

    def refuse_huge() -> object:
        try:
            check_event_count(huge, limits, source="huge.ics")
        except OverLimit as exc:
            return exc
        raise AssertionError("100,000 events were not refused")

    def read_at_cap() -> object:
        calendar = parse_calendar(at_cap, limits=limits)
        return expand_calendar(calendar, START, end90, AMS, limits=limits)

    skipped = expand_secondly(forever)().skipped
    print(f"hostile: FREQ=SECONDLY over 14 days -> skipped: {skipped[0].detail}")
    print(f"hostile: 100,000 events ({len(huge) / 1e6:.0f} MB) -> {refuse_huge()}")

    print(f"hostile: 1,000 never-matching rules -> {expand_rare(never)()}")
    hostile = [
        (
            "SECONDLY, no end, 14 days",
            "COUNT=cap",
            expand_secondly(capped),
            "no end (skipped)",
            expand_secondly(forever),
        ),
        (
            "100,000 events",
            "20,000 read",
            read_at_cap,
            "refused",
            refuse_huge,
        ),
        (
            "1,000 rules never matching",
            "BYMONTHDAY=28",
            expand_rare(monthly),
            "Feb 30 rule",
            expand_rare(never),
        ),
    ]

    rows = [
        (
            "plan: 5,000 events, 90 days",
            "parse only",
            median_seconds(parse_only, repeat),
            "parse+expand+plan_windows",
            median_seconds(plan_90, repeat),
        ),
        (
            "slots: 1,000 events, 31 days",
            "parse+expand",
            median_seconds(expand_agent, repeat),
            "parse+expand+busy+free_slots",
            median_seconds(slots_31, repeat),
        ),
        (
            "plan_windows: 17,813 instances",
            "unmemoised",
            median_seconds(plan_unmemoised, repeat),
            "memoised (fresh TitleParser)",
            median_seconds(plan_memoised, repeat),
        ),
        (
            "plan_windows: 17,813 instances",
            "unmemoised",
            median_seconds(plan_unmemoised, repeat),
            "memoised (kept TitleParser)",
            median_seconds(plan_kept_parser, repeat),
        ),
    ]
    print(f"\nmedian of {repeat} runs per call")
    print(f"{'workload':30} {'baseline':>14} {'s':>8}   {'measured':>30} {'s':>8} {'ratio':>6}")
    for name, base_name, base, what, measured in rows:
        print(
            f"{name:30} {base_name:>14} {base:8.3f}   {what:>30} {measured:8.3f} "
            f"{measured / base:6.1f}x"
        )
    print("\nhostile calendars (goal: each <= 10 s and <= 400 MiB; memory: tracemalloc peak)")
    print(
        f"{'workload':30} {'baseline':>14} {'s':>8} {'MiB':>7}   {'measured':>18} "
        f"{'s':>8} {'MiB':>7}"
    )
    for name, base_name, base_call, what, call in hostile:
        base_s, base_mib = median_seconds(base_call, repeat), peak_mib(base_call)
        s, mib = median_seconds(call, repeat), peak_mib(call)
        print(
            f"{name:30} {base_name:>14} {base_s:8.3f} {base_mib:7.1f}   {what:>18} "
            f"{s:8.3f} {mib:7.1f}"
        )


if __name__ == "__main__":
    main()
