"""`pbxcal links show|sync` and `pbxcal plan --link` through the real console script.

A link to a calendar file in a SQLite store: `links sync` reads it now (the service's own
sync code), `links show` gives its status, last good sync, last error and sync log, and
`plan --link` plans from what was stored, exactly as `plan --ics` plans from the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

PBXCAL = Path(sys.executable).parent / "pbxcal"
NOW = datetime.now(UTC).replace(microsecond=0)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *argv], capture_output=True, text=True, timeout=60, check=False
    )


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def write_calendar(path: Path, *events: tuple[str, timedelta, timedelta]) -> None:
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:e{i}@t\r\nDTSTAMP:{stamp(NOW)}\r\nDTSTART:{stamp(NOW + a)}\r\n"
        f"DTEND:{stamp(NOW + b)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\n"
        for i, (title, a, b) in enumerate(events)
    )
    path.write_text(f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n{body}END:VCALENDAR\r\n")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], Path, str]:
    secret = tmp_path / "ami.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = tmp_path / "pbxcal.toml"
    config.write_text(
        f'[pbxcal]\ntimezone = "UTC"\n\n[pbx.main]\nsecret_file = "{secret}"\n'
        'extensions = ["201"]\n'
    )
    options = ["--config", str(config), "--store", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    calendar = tmp_path / "anna.ics"
    write_calendar(
        calendar,
        ("201", timedelta(hours=1), timedelta(hours=2)),
        ("0612345678", timedelta(hours=1, minutes=30), timedelta(hours=3)),
        ("Lunch", timedelta(hours=4), timedelta(hours=5)),
        ("333", timedelta(hours=4), timedelta(hours=5)),  # no extension on this PBX
    )
    added = run("links", "add", *options, "--extension", "100", "--source", str(calendar), "--json")
    assert added.returncode == 0, added.stderr
    return options, calendar, str(json.loads(added.stdout)["added"])


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def test_links_sync_reads_now_and_show_reports_it(setup: tuple[list[str], Path, str]) -> None:
    options, calendar, link = setup
    shown = as_json(run("links", "show", link, *options, "--json"))
    assert shown["status"] == "pending" and shown["sync_log"] == []

    synced = run("links", "sync", link, *options, "--json")
    assert synced.returncode == 0, synced.stderr
    data = as_json(synced)
    assert data["result"] == "changed" and data["status"] == "connected"
    assert data["accepted"] == 2
    assert data["rejected"] == {"not-a-number": 1, "unknown-extension": 1}
    assert [w["targets"] for w in data["windows_next_7_days"]] == [
        ["201"], ["+31612345678", "201"], ["+31612345678"]
    ]

    shown = as_json(run("links", "show", link, *options, "--json"))
    assert shown["status"] == "connected"
    assert shown["last_successful_sync"] is not None and shown["last_error"] is None
    assert [e["result"] for e in shown["sync_log"]] == ["changed"]

    calendar.write_text("garbage, not iCalendar")
    broken = run("links", "sync", link, *options, "--json")
    assert broken.returncode == 1
    assert as_json(broken)["status"] == "invalid"
    shown = as_json(run("links", "show", link, *options, "--json"))
    assert shown["status"] == "invalid"
    assert "not valid iCalendar" in shown["last_error"]
    assert shown["last_successful_sync"] is not None  # the earlier good read
    listed = as_json(run("links", "list", *options, "--json"))["links"]
    assert listed[0]["status"] == "invalid"
    text = run("links", "show", link, *options)
    assert text.returncode == 0 and "status    invalid" in text.stdout


def test_plan_from_a_links_stored_events_equals_plan_from_the_file(
    setup: tuple[list[str], Path, str],
) -> None:
    options, calendar, link = setup
    assert run("links", "sync", link, *options).returncode == 0
    window = ["--from", stamp(NOW)[:8], "--to", stamp(NOW + timedelta(days=2))[:8]]
    from_file = run("plan", "--ics", str(calendar), "--extension", "100", *window,
                    "--config", options[1], "--json")  # fmt: skip
    from_link = run("plan", "--link", link, *options, *window, "--json")
    assert from_link.returncode == 0, from_link.stderr
    assert as_json(from_link) == as_json(from_file)
    assert as_json(from_link)["extension"] == "100"


def test_plan_needs_exactly_one_kind_of_input(setup: tuple[list[str], Path, str]) -> None:
    options, calendar, link = setup
    both = run("plan", "--ics", str(calendar), "--link", link, *options,
               "--from", "2026-01-01", "--to", "2026-01-02")  # fmt: skip
    assert both.returncode == 2 and "either --ics" in both.stderr
    unknown = run("plan", "--link", "999", *options, "--from", "2026-01-01", "--to", "2026-01-02")
    assert unknown.returncode == 2 and "no link 999" in unknown.stderr
