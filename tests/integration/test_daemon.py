"""``pbxcal run`` as a real subprocess against a real (sandboxed) Asterisk 22.

Each test writes a config with ``[sync] interval = 1`` and ``[[link]]`` entries to
``.ics`` files in ``tmp_path``, runs the daemon with a SQLite store there, and checks
what Asterisk really holds through its own CLI (``database get pbxcal fwd/<ext>``,
``devstate list``): boundaries hit on time, kill -9 and Asterisk restarts converge,
calendar edits and corrupt calendars, probes, and start-up errors.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    PBXCAL,
    DaemonRun,
    Event,
    Link,
    blf,
    forwarding,
    wait_for,
    wait_forwarding,
    whole_second,
    write_calendar,
    write_file_atomically,
)

from pbxcal.testing.asterisk import AsteriskSandbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

S = timedelta(seconds=1)


def start_daemon(
    daemons: list[DaemonRun], tmp_path: Path, ast: AsteriskSandbox, links: list[Link], **kw: object
) -> DaemonRun:
    daemon = DaemonRun(tmp_path, ast, links, **kw)  # type: ignore[arg-type]
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    return daemon


def now() -> datetime:
    return datetime.now(UTC)


def test_window_applied_and_cleared_at_its_boundaries(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    write_calendar(cal, [])
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    assert forwarding(ast, "100") is None

    start = whole_second(now() + 2 * S)
    end = start + 3 * S
    write_calendar(
        cal,
        [
            Event("a", "201", start, end),
            Event("b", "06-12345678", start, end),
            Event("lunch", "Lunch", start - 10 * S, end + 10 * S),
        ],
    )
    samples: list[tuple[datetime, str | None]] = []
    deadline = end + 3 * S
    while now() < deadline:
        value = forwarding(ast, "100")
        samples.append((now(), value))
        if value is None and samples[-1][0] > end + 1.5 * S:
            break
        time.sleep(0.05)
    daemon.check_alive()

    expected = "+31612345678&201"
    on = [t for t, v in samples if v == expected]
    assert on, f"never applied; last samples: {samples[-5:]}"
    assert {v for _, v in samples} <= {None, expected}, samples
    # first sample showing it on / first sample after that showing it off again
    applied = on[0]
    cleared = next((t for t, v in samples if t > on[-1] and v is None), None)
    assert cleared is not None, f"never cleared; last samples: {samples[-5:]}"
    assert all(v == expected for t, v in samples if applied <= t <= on[-1]), "flapped"
    lag_on, lag_off = (applied - start).total_seconds(), (cleared - end).total_seconds()
    print(f"applied seen {lag_on:+.3f}s after the start, cleared {lag_off:+.3f}s after the end")
    assert 0.0 <= lag_on < 1.0, "applied before the window started" if lag_on < 0 else lag_on
    assert 0.0 <= lag_off < 1.0, "cleared before the window ended" if lag_off < 0 else lag_off


def test_blf_in_use_during_window_not_in_use_after(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    start = whole_second(now())
    end = start + 6 * S
    write_calendar(cal, [Event("a", "201", start - 2 * S, end)])
    start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    wait_forwarding(ast, "100", "201", timeout=5)
    assert blf(ast, "100") == "INUSE"
    wait_forwarding(ast, "100", None, timeout=(end - now()).total_seconds() + 2)
    wait_for(lambda: blf(ast, "100"), lambda s: s == "NOT_INUSE", 2, what="BLF NOT_INUSE")


def test_kill9_window_ends_while_down_cleared_on_restart(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    end = whole_second(now() + 6 * S)
    write_calendar(cal, [Event("a", "201", end - 60 * S, end)])
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    wait_forwarding(ast, "100", "201", timeout=5)
    daemon.kill9()
    assert now() < end, "test setup too slow: the window ended before the kill"
    time.sleep(max(0.0, (end - now()).total_seconds()) + 1.0)
    # nobody cleared it: Asterisk still holds the stale forwarding
    assert forwarding(ast, "100") == "201"
    assert blf(ast, "100") == "INUSE"

    restarted = time.monotonic()
    daemon.start()
    wait_forwarding(ast, "100", None, timeout=10)
    took = time.monotonic() - restarted
    print(f"stale forwarding cleared {took:.2f}s after the restart")
    # includes the interpreter's start (~1.5 s); the clear itself is the first AMI action
    assert took < 6.0, daemon.log()
    assert blf(ast, "100") == "NOT_INUSE"
    daemon.wait_ready()


def test_kill9_and_restart_mid_window_keeps_state_and_serves_the_end(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    end = whole_second(now() + 9 * S)
    write_calendar(
        cal, [Event("a", "201", end - 60 * S, end), Event("b", "202", end, end + 60 * S)]
    )
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    wait_forwarding(ast, "100", "201", timeout=5)
    daemon.kill9()
    daemon.start()
    daemon.wait_ready()
    assert now() < end, "test setup too slow: the window ended before the restart"
    assert forwarding(ast, "100") == "201"
    assert blf(ast, "100") == "INUSE"
    # the restarted daemon serves the next boundary on time
    seen = wait_forwarding(ast, "100", "202", timeout=(end - now()).total_seconds() + 2)
    assert abs((seen - end).total_seconds()) < 1.0, seen - end
    assert blf(ast, "100") == "INUSE"


def test_asterisk_restart_mid_window_reapplies(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    write_calendar(cal, [Event("a", "201", now() - 60 * S, now() + 120 * S)])
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    wait_forwarding(ast, "100", "201", timeout=5)
    connects_before = daemon.metric("pbxcal_ami_connected", pbx="main")
    assert connects_before == 1.0
    # lose the state behind pbxcal's back (AstDB survives a restart otherwise)
    ast.cli("database del pbxcal fwd/100")
    ast.cli("devstate change Custom:pbxcal100 NOT_INUSE")
    ast.restart()  # returns once Asterisk accepts AMI connections again
    restarted = time.monotonic()
    # pbxcal may already have logged in again and re-applied by now (issue #7.7: within 2 s)
    wait_forwarding(ast, "100", "201", timeout=2)
    print(f"re-applied {time.monotonic() - restarted:.2f}s after Asterisk came back")
    wait_for(lambda: blf(ast, "100"), lambda s: s == "INUSE", 2, what="BLF INUSE")
    wait_for(lambda: daemon.http("/readyz")[0], lambda s: s == 200, 5, what="readyz 200")
    daemon.check_alive()


def test_calendar_edits_are_reflected_on_the_next_read(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    start, end = now() - 60 * S, now() + 300 * S
    write_calendar(cal, [Event("a", "201", start, end)])
    start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    wait_forwarding(ast, "100", "201", timeout=5)

    steps = [
        ("title changed", [Event("a", "202", start, end)], "202"),
        ("moved later", [Event("a", "202", end, end + 60 * S)], None),
        ("moved back", [Event("a", "202", start, end)], "202"),
        ("second target", [Event("a", "202", start, end), Event("c", "201", start, end)],
         "201&202"),
        ("cancelled", [Event("a", "202", start, end, "CANCELLED"), Event("c", "201", start, end)],
         "201"),
        ("all cancelled", [Event("a", "202", start, end, "CANCELLED"),
                           Event("c", "201", start, end, "CANCELLED")], None),
    ]  # fmt: skip
    for what, events, expected in steps:
        edited = time.monotonic()
        write_calendar(cal, events)
        wait_forwarding(ast, "100", expected, timeout=3.5)
        print(f"{what}: seen after {time.monotonic() - edited:.2f}s")
    assert blf(ast, "100") == "NOT_INUSE"


def test_corrupt_calendar_keeps_last_known_events(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    anna, bob = tmp_path / "anna.ics", tmp_path / "bob.ics"
    start, end = now() - 60 * S, now() + 300 * S
    write_calendar(anna, [Event("a", "201", start, end)])
    write_calendar(bob, [Event("b", "202", start, end)])
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", anna), Link("101", bob)])
    wait_forwarding(ast, "100", "201", timeout=5)
    wait_forwarding(ast, "101", "202", timeout=5)
    invalid = {"provider": "ics-file", "result": "invalid"}
    before = daemon.metric("pbxcal_calendar_syncs_total", **invalid)

    write_file_atomically(anna, b"\x00garbage, not iCalendar\r\nBEGIN:VEVENT\r\n")

    def anna_link() -> dict[str, object]:
        return next(link for link in daemon.links() if link["extension"] == "100")

    link, _ = wait_for(anna_link, lambda r: r["last_result"] == "invalid", 5, 0.2, "invalid")
    assert isinstance(link["message"], str) and link["message"], link
    print("links list says:", link["last_result"], "-", link["message"])
    assert daemon.metric("pbxcal_calendar_syncs_total", **invalid) > before
    # the last known events keep driving the forwarding, through further reads too
    seen = daemon.metric("pbxcal_calendar_syncs_total", **invalid)
    wait_for(
        lambda: daemon.metric("pbxcal_calendar_syncs_total", **invalid),
        lambda n: n >= seen + 2,
        5,
        what="two more reads of the corrupt calendar",
    )
    assert forwarding(ast, "100") == "201"
    assert blf(ast, "100") == "INUSE"
    # the other link is unaffected: it still follows its calendar
    bob_link = next(r for r in daemon.links() if r["extension"] == "101")
    assert bob_link["last_result"] in ("changed", "unchanged"), bob_link
    write_calendar(bob, [Event("b", "0612345678", start, end)])
    wait_forwarding(ast, "101", "+31612345678", timeout=3.5)
    assert forwarding(ast, "100") == "201"
    # a repaired calendar is taken again
    write_calendar(anna, [Event("a", "202", start, end)])
    wait_forwarding(ast, "100", "202", timeout=3.5)
    daemon.check_alive()


def test_health_and_readiness_follow_the_pbx(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    cal = tmp_path / "anna.ics"
    write_calendar(cal, [])
    daemon = start_daemon(daemons, tmp_path, ast, [Link("100", cal)])
    assert daemon.http("/healthz")[0] == 200
    status, body = daemon.http("/readyz")
    assert status == 200, body
    assert "1/1 PBX connected" in body
    ast.stop()
    reply, _ = wait_for(lambda: daemon.http("/readyz"), lambda r: r[0] == 503, 5, 0.1, "503")
    assert '"pbx_down": ["main"]' in reply[1], reply
    assert daemon.metric("pbxcal_ami_connected", pbx="main") == 0.0
    assert daemon.http("/healthz")[0] == 200  # the loop is fine; only the PBX is gone
    ast.start()
    wait_for(lambda: daemon.http("/readyz")[0], lambda s: s == 200, 10, 0.1, "readyz 200")
    assert daemon.metric("pbxcal_ami_connected", pbx="main") == 1.0
    assert daemon.terminate() == 0


# -- start-up errors: exit 2, one line per problem, never a traceback ---------------------


def run_pbxcal(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        check=False,
    )  # fmt: skip


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pbxcal: error:")]
    assert lines, result.stderr
    return lines


def test_broken_config_exits_2_naming_file_section_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[sync]\ninterval = "fast"\n\n[pbx.main]\nport = 99999\nsecret_file = "/nonexistent"\n\n'
        '[[link]]\nextension = "x1"\nsource = "/tmp/a.ics"\n'
    )
    result = run_pbxcal("run", "--config", str(bad), cwd=tmp_path)
    lines = assert_clean_error(result)
    assert len(lines) == len(result.stderr.strip().splitlines()), result.stderr
    expected = ["[sync] interval", "[pbx.main] port", "[link #1] extension"]
    for where in expected:
        assert any(f"{bad}: {where}:" in line for line in lines), (where, lines)

    missing = run_pbxcal("run", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    nope = tmp_path / "nope.toml"
    assert assert_clean_error(missing) == [f"pbxcal: error: {nope}: file not found"]
    (tmp_path / "syntax.toml").write_text("[sync\n")
    lines = assert_clean_error(run_pbxcal("run", "--config", str(tmp_path / "syntax.toml"),
                                          cwd=tmp_path))  # fmt: skip
    assert len(lines) == 1 and "not valid TOML" in lines[0], lines


def test_unusable_store_exits_2_with_one_line(ast: AsteriskSandbox, tmp_path: Path) -> None:
    daemon = DaemonRun(tmp_path, ast, [])
    (tmp_path / "a-file").write_text("")
    for url, fragment in [
        (f"sqlite:///{tmp_path / 'a-file' / 'x.sqlite3'}", "not a directory"),
        ("sqlite:////proc/pbxcal-test/x.sqlite3", "cannot create directory"),
        ("sqlite:////sys/pbxcal.sqlite3", "cannot write store"),
        ("mysql://nobody@127.0.0.1/x", ""),
    ]:
        result = run_pbxcal("run", "--config", str(daemon.config), "--store", url, cwd=tmp_path)
        lines = assert_clean_error(result)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert fragment in lines[0], lines


def test_wrong_ami_secret_exits_2(ast: AsteriskSandbox, tmp_path: Path) -> None:
    cal = tmp_path / "anna.ics"
    write_calendar(cal, [])
    daemon = DaemonRun(tmp_path, ast, [Link("100", cal)], secret="not-the-secret")
    started = time.monotonic()
    result = run_pbxcal("run", "--config", str(daemon.config), "--store", daemon.store,
                        cwd=tmp_path)  # fmt: skip
    print(f"exited after {time.monotonic() - started:.2f}s: {result.stderr.strip()}")
    lines = [line for line in result.stderr.splitlines() if line.startswith("pbxcal: error:")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "[pbx.main]" in lines[0], result.stderr
    assert "not-the-secret" not in result.stderr
    assert any(w in lines[0].lower() for w in ("auth", "login", "secret")), lines
