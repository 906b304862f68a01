"""The real ``pbxcal`` console script: JSON contracts, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEEK = ROOT / "examples" / "week.ics"
PBXCAL = Path(sys.executable).parent / "pbxcal"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PBXCAL.exists(), f"console script missing: {PBXCAL} (pip install -e .)"
    return subprocess.run(
        [str(PBXCAL), *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


#: What ``plan`` says on stderr when it has no list of the extensions that exist.
NO_DIRECTORY_NOTE = (
    "pbxcal: note: no known extensions (--extensions or [pbx.X] extensions): every title "
    "that matches the extension pattern counts as an extension\n"
)


def ok_json(*args: str) -> dict[str, object]:
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr in ("", NO_DIRECTORY_NOTE)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


PLAN_WEEK = [
    "plan",
    "--ics",
    str(WEEK),
    "--extension",
    "100",
    "--from",
    "2026-03-30T00:00:00Z",
    "--to",
    "2026-04-06T00:00:00Z",
    "--json",
]


def test_plan_json_on_example_week() -> None:
    # week.ics is in Europe/Amsterdam, CEST = UTC+2 from 2026-03-29 on.
    assert ok_json(*PLAN_WEEK) == {
        "extension": "100",
        "windows": [
            # 06-12345678 09:00-12:00 and 333 11:00-13:00 local overlap 11:00-12:00
            {
                "start": "2026-03-30T07:00:00Z",
                "end": "2026-03-30T09:00:00Z",
                "targets": ["+31612345678"],
            },
            {
                "start": "2026-03-30T09:00:00Z",
                "end": "2026-03-30T10:00:00Z",
                "targets": ["+31612345678", "333"],
            },
            {"start": "2026-03-30T10:00:00Z", "end": "2026-03-30T11:00:00Z", "targets": ["333"]},
            # early shift 08:00-09:00 daily x4: 31st; 1st moved to 07:30-08:30; 2nd excluded
            {
                "start": "2026-03-31T06:00:00Z",
                "end": "2026-03-31T07:00:00Z",
                "targets": ["+31201234567"],
            },
            {
                "start": "2026-04-01T05:30:00Z",
                "end": "2026-04-01T06:30:00Z",
                "targets": ["+31201234567"],
            },
            {
                "start": "2026-04-03T06:00:00Z",
                "end": "2026-04-03T07:00:00Z",
                "targets": ["+31201234567"],
            },
        ],
        "rejected": [
            {
                "uid": "lunch@example",
                "start": "2026-03-30T11:00:00Z",
                "title": "Lunch",
                "reason": "not-a-number",
            },
            {
                "uid": "premium@example",
                "start": "2026-03-30T13:00:00Z",
                "title": "0900 1234567",
                "reason": "blocked-by-policy",
            },
            {
                "uid": "customer-visit@example",
                "start": "2026-04-01T12:00:00Z",
                "title": "Customer visit",
                "reason": "not-a-number",
            },
        ],
    }


def test_plan_clips_to_range_and_accepts_local_dates() -> None:
    # dates are local midnight in --timezone: 2026-03-30 00:00 CEST = 2026-03-29T22:00Z
    result = ok_json(
        "plan",
        "--ics",
        str(WEEK),
        "--extension",
        "100",
        "--from",
        "2026-03-30T08:00:00Z",
        "--to",
        "2026-03-31",
        "--timezone",
        "Europe/Amsterdam",
        "--json",
    )
    assert result["windows"] == [
        {
            "start": "2026-03-30T08:00:00Z",
            "end": "2026-03-30T09:00:00Z",
            "targets": ["+31612345678"],
        },
        {
            "start": "2026-03-30T09:00:00Z",
            "end": "2026-03-30T10:00:00Z",
            "targets": ["+31612345678", "333"],
        },
        {"start": "2026-03-30T10:00:00Z", "end": "2026-03-30T11:00:00Z", "targets": ["333"]},
    ]
    assert [r["uid"] for r in result["rejected"]] == ["lunch@example", "premium@example"]  # type: ignore[index]


def test_plan_max_targets_from_config(tmp_path: Path) -> None:
    config = tmp_path / "pbxcal.toml"
    config.write_text("[policy]\nmax_targets = 1\n", encoding="utf-8")
    result = ok_json(*PLAN_WEEK, "--config", str(config))
    first_day = [w for w in result["windows"] if w["start"].startswith("2026-03-30")]  # type: ignore[attr-defined,index]
    assert first_day == [
        {
            "start": "2026-03-30T07:00:00Z",
            "end": "2026-03-30T10:00:00Z",
            "targets": ["+31612345678"],
        },
    ]
    assert {
        "uid": "colleague@example",
        "start": "2026-03-30T09:00:00Z",
        "title": "333",
        "reason": "too-many-targets",
    } in result["rejected"]  # type: ignore[operator]


def test_plan_region_us_rejects_dutch_national_numbers() -> None:
    result = ok_json(*PLAN_WEEK, "--region", "US")
    targets = {t for w in result["windows"] for t in w["targets"]}  # type: ignore[attr-defined,index]
    assert targets == {"333"}  # only the extension survives
    reasons = {r["uid"]: r["reason"] for r in result["rejected"]}  # type: ignore[attr-defined,index]
    assert reasons["mobile-morning@example"] == "invalid-number"
    assert reasons["early-shift@example"] == "blocked-by-policy"  # +31 is not US


def test_plan_text_output() -> None:
    proc = run(*PLAN_WEEK[:-1])
    assert proc.returncode == 0
    assert "6 forwarding windows" in proc.stdout
    assert "+31612345678 & 333" in proc.stdout


SLOTS_WEEK = [
    "slots",
    "--ics",
    str(WEEK),
    "--timezone",
    "Europe/Amsterdam",
    "--from",
    "2026-03-30",
    "--to",
    "2026-04-03",
    "--duration",
    "60",
    "--now",
    "2026-03-01T00:00:00Z",
    "--json",
]


def utc_slots(day: str, hours: list[int]) -> list[dict[str, str]]:
    # CEST: local hour h is UTC h-2
    return [
        {"start": f"{day}T{h - 2:02d}:00:00Z", "end": f"{day}T{h - 1:02d}:00:00Z"} for h in hours
    ]


def test_slots_json_on_example_week() -> None:
    # busy: Lunch 30 Mar 13-14, Customer visit 1 Apr 14-16; forwarding titles,
    # the blocked premium number and the cancelled event are not busy.
    result = ok_json(*SLOTS_WEEK)
    assert result == {
        "timezone": "Europe/Amsterdam",
        "slots": utc_slots("2026-03-30", [9, 10, 11, 12, 14, 15, 16])
        + utc_slots("2026-03-31", list(range(9, 17)))
        + utc_slots("2026-04-01", [9, 10, 11, 12, 13, 16])
        + utc_slots("2026-04-02", list(range(9, 17)))
        + utc_slots("2026-04-03", list(range(9, 17))),
    }


def test_slots_with_buffers_notice_and_break() -> None:
    result = ok_json(
        *SLOTS_WEEK[:5],
        "--from",
        "2026-03-30",
        "--to",
        "2026-03-30",
        "--duration",
        "60",
        "--buffer-before",
        "15",
        "--buffer-after",
        "15",
        "--break",
        "10:00-10:30",
        "--now",
        "2026-03-30T09:10:00+02:00",
        "--min-notice",
        "20",
        "--json",
    )
    # periods 09:00-10:00 and 10:30-17:00; 09:00 is before now+notice (09:30);
    # 11:30 would end at 12:30 (+15 ok), 12:30 ends 13:30 > lunch at 13:00; 14:30 needs 14:15
    expected = ["10:30", "11:30", "14:30", "15:30"]
    assert (
        [s["start"] for s in result["slots"]]
        == [  # type: ignore[index,attr-defined]
            f"2026-03-30T{int(t[:2]) - 2:02d}:{t[3:]}:00Z" for t in expected
        ]
    )


def test_slots_hours_option_and_step() -> None:
    result = ok_json(
        *SLOTS_WEEK[:5],
        "--from",
        "2026-04-04",
        "--to",
        "2026-04-05",
        "--duration",
        "30",
        "--step",
        "15",
        "--hours",
        "sat 10:00-11:00",
        "--hours",
        "sun 22:00-24:00",
        "--now",
        "2026-03-01T00:00:00Z",
        "--json",
    )
    starts = [s["start"] for s in result["slots"]]  # type: ignore[index,attr-defined]
    assert starts == [
        "2026-04-04T08:00:00Z",
        "2026-04-04T08:15:00Z",
        "2026-04-04T08:30:00Z",
        "2026-04-05T20:00:00Z",
        "2026-04-05T20:15:00Z",
        "2026-04-05T20:30:00Z",
        "2026-04-05T20:45:00Z",
        "2026-04-05T21:00:00Z",
        "2026-04-05T21:15:00Z",
        "2026-04-05T21:30:00Z",
    ]


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[pbxcal]\nregion = "US"\ntimezone = "America/New_York"\n', encoding="utf-8")
    proc = run("check-config", str(good))
    assert proc.returncode == 0 and "OK" in proc.stdout and "region US" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[pbxcal]\nregion = "XX"\ntimezone = "Nowhere"\n', encoding="utf-8")
    proc = run("check-config", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"pbxcal: error: {bad}: [pbxcal] ") for line in lines)


def _garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.ics"
    path.write_bytes(b"<html>Please log in</html>\n")
    return str(path)


def _bad_config(tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text('[policy]\nmax_targets = "lots"\n', encoding="utf-8")
    return str(path)


PLAN_BASE = [
    "plan",
    "--extension",
    "100",
    "--from",
    "2026-03-30T00:00:00Z",
    "--to",
    "2026-04-06T00:00:00Z",
    "--json",
]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("plan-missing-file", "nonexistent.ics"),
        ("plan-malformed-ics", "garbage.ics"),
        ("plan-bad-from", "--from"),
        ("plan-unknown-timezone", "Mars/Base"),
        ("plan-to-before-from", "--to"),
        ("plan-bad-config", "max_targets"),
        ("plan-bad-extension", "--extension"),
        ("plan-bad-region", "--region"),
        ("plan-missing-option", "--extension"),
        ("slots-missing-file", "nonexistent.ics"),
        ("slots-malformed-ics", "garbage.ics"),
        ("slots-bad-from", "--from"),
        ("slots-unknown-timezone", "Mars/Base"),
        ("slots-to-before-from", "--to"),
        ("slots-bad-config", "max_targets"),
        ("slots-bad-duration", "--duration"),
        ("slots-bad-hours", "--hours"),
        ("slots-bad-break", "--break"),
        ("check-config-missing", "nope.toml"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(tmp_path: Path, case: str, needle: str) -> None:
    week = str(WEEK)
    args = {
        "plan-missing-file": [*PLAN_BASE, "--ics", str(tmp_path / "nonexistent.ics")],
        "plan-malformed-ics": [*PLAN_BASE, "--ics", _garbage(tmp_path)],
        "plan-bad-from": [
            "plan",
            "--ics",
            week,
            "--extension",
            "100",
            "--from",
            "yesterday",
            "--to",
            "2026-04-06T00:00:00Z",
        ],
        "plan-unknown-timezone": [*PLAN_BASE, "--ics", week, "--timezone", "Mars/Base"],
        "plan-to-before-from": [
            "plan",
            "--ics",
            week,
            "--extension",
            "100",
            "--from",
            "2026-04-06T00:00:00Z",
            "--to",
            "2026-03-30T00:00:00Z",
        ],
        "plan-bad-config": [*PLAN_BASE, "--ics", week, "--config", _bad_config(tmp_path)],
        "plan-bad-extension": [
            "plan",
            "--ics",
            week,
            "--extension",
            "1\n00",
            "--from",
            "2026-03-30",
            "--to",
            "2026-04-06",
        ],
        "plan-bad-region": [*PLAN_BASE, "--ics", week, "--region", "XX"],
        "plan-missing-option": [
            "plan",
            "--ics",
            week,
            "--from",
            "2026-03-30",
            "--to",
            "2026-04-06",
        ],
        "slots-missing-file": [
            *SLOTS_WEEK[:1],
            "--ics",
            str(tmp_path / "nonexistent.ics"),
            *SLOTS_WEEK[3:],
        ],
        "slots-malformed-ics": [*SLOTS_WEEK[:1], "--ics", _garbage(tmp_path), *SLOTS_WEEK[3:]],
        "slots-bad-from": [*SLOTS_WEEK, "--from", "30-03-2026"],
        "slots-unknown-timezone": [*SLOTS_WEEK, "--timezone", "Mars/Base"],
        "slots-to-before-from": [*SLOTS_WEEK, "--from", "2026-04-03", "--to", "2026-03-30"],
        "slots-bad-config": [*SLOTS_WEEK, "--config", _bad_config(tmp_path)],
        "slots-bad-duration": [*SLOTS_WEEK, "--duration", "0"],
        "slots-bad-hours": [*SLOTS_WEEK, "--hours", "weekdays 9-5"],
        "slots-bad-break": [*SLOTS_WEEK, "--break", "14:00-13:00"],
        "check-config-missing": ["check-config", str(tmp_path / "nope.toml")],
    }[case]
    proc = run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pbxcal"), lines
    assert "error" in lines[0]
    assert needle in lines[0], lines[0]


def test_event_without_dtstart_does_not_hide_the_others() -> None:
    data = ROOT / "tests" / "data" / "missing_dtstart.ics"
    proc = run(
        "plan",
        "--ics",
        str(data),
        "--extension",
        "100",
        "--from",
        "2026-04-06T00:00:00Z",
        "--to",
        "2026-04-07T00:00:00Z",
        "--extensions",
        "333,666",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["windows"] == [
        {"start": "2026-04-06T08:00:00Z", "end": "2026-04-06T09:00:00Z", "targets": ["333"]},
        {"start": "2026-04-06T12:00:00Z", "end": "2026-04-06T13:00:00Z", "targets": ["666"]},
    ]
    # the admin is told, in one line, which event was left out and why
    assert proc.stderr.splitlines() == [
        f"pbxcal: warning: {data}: skipped event 'no-start@example': event has no DTSTART"
    ]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "plan",
            [
                "--ics",
                "--extension",
                "--from",
                "--to",
                "--region",
                "--timezone",
                "--config",
                "--json",
            ],
        ),
        (
            "slots",
            [
                "--ics",
                "--timezone",
                "--from",
                "--to",
                "--duration",
                "--step",
                "--buffer-before",
                "--buffer-after",
                "--hours",
                "--break",
                "--min-notice",
                "--now",
                "--region",
                "--config",
                "--json",
            ],
        ),
    ],
)
def test_help_mentions_every_option(command: str, options: list[str]) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0
    for option in options:
        assert option in proc.stdout, option


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pbxcal ")


def test_start_up_imports_no_heavy_module() -> None:
    """``pbxcal --version``/``--help`` load argparse, not the core, store or service."""
    heavy = ("icalendar", "sqlalchemy", "asyncio", "phonenumbers", "aiohttp", "httpx")
    code = (
        "import sys, pbxcal.cli.main as m; m.build_parser(); "
        f"print([n for n in {heavy!r} if n in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"
