"""Extreme but syntactically valid dates on the command line: exit 2, one line, no traceback.

Found as bugs while writing the core tests (a silent empty plan, an OverflowError).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PBXCAL = Path(sys.executable).parent / "pbxcal"
WEEK = str(ROOT / "examples" / "week.ics")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_plan_from_year_1_does_not_silently_drop_the_calendar() -> None:
    # the expander's margin before year 1 overflows; it must not become a silent empty plan
    proc = run(
        "plan",
        "--ics",
        WEEK,
        "--extension",
        "100",
        "--from",
        "0001-01-03T00:00:00Z",
        "--to",
        "2026-04-06T00:00:00Z",
        "--json",
    )
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "year must be" in proc.stderr


def test_slots_now_in_year_1_is_no_traceback() -> None:
    # naive 0001-01-01T00:00 in Europe/Amsterdam (LMT +00:18) cannot become UTC
    proc = run(
        "slots",
        "--ics",
        WEEK,
        "--timezone",
        "Europe/Amsterdam",
        "--from",
        "2026-03-30",
        "--to",
        "2026-03-30",
        "--duration",
        "60",
        "--now",
        "0001-01-01T00:00:00",
        "--json",
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
