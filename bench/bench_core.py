"""Benchmark of the pure core on a large synthetic calendar.

Run: ``.venv/bin/python bench/bench_core.py [--repeat N]``

* plan:  one calendar, 5,000 VEVENTs over 90 days (3,800 single events, 1,000 recurring
  weekly/daily, a third with an EXDATE, and 200 RECURRENCE-ID overrides); parse alone (baseline) vs
  parse + expand_calendar + plan_windows over the 90 days.
* slots: one agent calendar with 1,000 busy events over 31 days; parse + expand alone
  (baseline) vs parse + expand + busy_intervals + free_slots over the 31 days.

Prints the median wall time per call of ``--repeat`` runs (default 3; ~1 min).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from pbxcal.core.ical import expand_calendar, parse_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.core.slots import AvailabilityRules, busy_intervals, free_slots
from pbxcal.core.windows import plan_windows

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

    def plan_90() -> object:
        expansion = expand_calendar(parse_calendar(big), START, end90, AMS)
        return expansion, plan_windows(expansion.instances, START, end90, policy)

    expansion, plan = plan_90()  # type: ignore[misc]
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

    def slots_31() -> object:
        instances = expand_calendar(parse_calendar(agent), lo, hi, AMS).instances
        return free_slots(busy_intervals(instances, policy), rules, first_day, last_day, now)

    slots = slots_31()
    print(
        f"slots calendar: {agent.count(b'BEGIN:VEVENT')} VEVENTs, "
        f"{len(slots)} free slots in 31 days"
    )  # type: ignore[arg-type]

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
    ]
    print(f"\nmedian of {repeat} runs per call")
    print(f"{'workload':30} {'baseline':>14} {'s':>8}   {'measured':>30} {'s':>8} {'ratio':>6}")
    for name, base_name, base, what, measured in rows:
        print(
            f"{name:30} {base_name:>14} {base:8.3f}   {what:>30} {measured:8.3f} "
            f"{measured / base:6.1f}x"
        )


if __name__ == "__main__":
    main()
