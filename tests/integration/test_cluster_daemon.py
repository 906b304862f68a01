"""Three real ``pbxcal run`` processes on one PostgreSQL, two real (sandboxed) Asterisks.

The group (``pbxcal.cluster``) shares the PBXes ``a`` and ``b``: each is written by the
holder of its lease. What Asterisk holds is read through its own CLI, and *who* wrote it
is read from Asterisk's own manager log: every process logs in with an AMI user of its
own (``pbxcal-p1`` ...), the sandboxes run with ``manager debug`` on, so Asterisk logs
every AMI action it receives in the thread of the session that sent it, and that
session's ``Login`` names the user. No pbxcal code is trusted to say what it sent.

Lease times are short here (ttl 4 s, margin 1 s) to keep the module fast; the protocol
does not depend on the values. Every wait has a deadline and waits for a condition.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    DaemonRun,
    Event,
    blf,
    forwarding,
    wait_for,
    wait_forwarding,
    whole_second,
    write_calendar,
)
from postgres import PostgresUnavailable, running_postgres, start_postgres, stop_postgres

from pbxcal.cluster.connection import cluster_conninfo
from pbxcal.cluster.status import ClusterStatus, read_status
from pbxcal.errors import StoreError
from pbxcal.testing.asterisk import AsteriskSandbox, SandboxError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

S = timedelta(seconds=1)
TTL = 4.0
MARGIN = 1.0
USERS = ("pbxcal-p1", "pbxcal-p2", "pbxcal-p3")
#: AMI actions that change something on the PBX
WRITES = frozenset({"dbput", "dbdel", "dbdeltree", "setvar"})


class LoggingAsterisk(AsteriskSandbox):
    """A sandbox with one AMI user per pbxcal process that logs every AMI action."""

    def __init__(self, root: Path, name: str, users: dict[str, str]) -> None:
        super().__init__(root, name)
        self.users = users

    def _manager_conf(self) -> str:
        conf = super()._manager_conf().replace("displayconnects = no", "displayconnects = yes")
        conf = conf.replace("enabled = yes\n", "enabled = yes\ndebug = on\n", 1)
        for user, secret in self.users.items():  # the shipped pbxcal user's privileges
            conf += (
                f"\n[{user}]\nsecret = {secret}\ndeny = 0.0.0.0/0.0.0.0\n"
                "permit = 127.0.0.1/255.255.255.255\nread = system\nwrite = system,call\n"
                "writetimeout = 5000\n"
            )
        return conf


@dataclass(frozen=True)
class AmiAction:
    user: str
    action: str
    headers: dict[str, str]
    #: position in the manager log (compare with ``log_mark``)
    at: int


_ACTION_HEAD = re.compile(r"^\[[^\]]*\] VERBOSE\[(\d+)\]\S* manager\.c: <--- Examining AMI action")


def log_mark(ast: AsteriskSandbox) -> int:
    return len(ast.log_path.read_bytes())


def ami_actions(ast: AsteriskSandbox) -> list[AmiAction]:
    """Every AMI action Asterisk logged, with the AMI user of the session that sent it."""
    text = ast.log_path.read_bytes().decode(errors="replace")
    users: dict[str, str] = {}  # session thread -> user of its Login
    found: list[AmiAction] = []
    position = 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        start = position
        position += len(line.encode()) + 1
        i += 1
        head = _ACTION_HEAD.match(line)
        if head is None:
            continue
        headers: dict[str, str] = {}
        while i < len(lines) and lines[i].strip():
            key, _, value = lines[i].partition(":")
            headers[key.strip().lower()] = value.strip()
            position += len(lines[i].encode()) + 1
            i += 1
        thread, action = head.group(1), headers.get("action", "").lower()
        if action == "login":
            users[thread] = headers.get("username", "?")
            continue
        found.append(AmiAction(users.get(thread, "?"), action, headers, start))
    return found


def writes(ast: AsteriskSandbox, since: int = 0, key: str | None = None) -> list[AmiAction]:
    return [
        a
        for a in ami_actions(ast)
        if a.at >= since and a.action in WRITES and (key is None or a.headers.get("key") == key)
    ]


@dataclass
class Group:
    url: str
    conninfo: str
    asts: dict[str, LoggingAsterisk]
    runs: list[DaemonRun]
    calendars: dict[tuple[str, str], Path]

    def status(self) -> ClusterStatus:
        return read_status(self.conninfo)

    def holder_run(self, pbx: str) -> DaemonRun:
        """The process holding ``pbx``'s lease now."""
        run = self.holder_or_none(pbx)
        assert run is not None, f"nobody holds pbx:{pbx}: {self.status()}"
        return run

    def holder_or_none(self, pbx: str) -> DaemonRun | None:
        status = self.status()
        lease = next((r for r in status.leases if r.name == f"pbx:{pbx}" and r.live), None)
        if lease is None:
            return None
        pids = [m.pid for m in status.members if m.member_id == lease.holder and m.live]
        runs = [r for r in self.runs if r.proc is not None and r.proc.pid in pids]
        return runs[0] if runs else None

    def user_of(self, run: DaemonRun) -> str:
        return USERS[self.runs.index(run)]


def make_run(work: Path, asts: dict[str, LoggingAsterisk], url: str, user: str,
             calendars: dict[tuple[str, str], Path]) -> DaemonRun:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    first = asts["a"]
    run = DaemonRun(work, first, [], store=url)
    text = (
        f'[pbxcal]\nregion = "NL"\ntimezone = "UTC"\n\n[http]\nlisten = "{run.listen}"\n\n'
        f"[sync]\ninterval = 1\n\n[cluster]\nttl = {TTL}\nmargin = {MARGIN}\nsettle = 1\n"
    )
    for name, ast in asts.items():
        secret_file = work / f"ami-{name}.secret"
        secret_file.write_text(ast.users[user])
        secret_file.chmod(0o600)
        text += (
            f'\n[pbx.{name}]\nhost = "{ast.ami_host}"\nport = {ast.ami_port}\n'
            f'username = "{user}"\nsecret_file = "{secret_file}"\n'
            "ping_interval = 1\nping_timeout = 1\nbackoff_max = 1\n"
        )
    for (pbx, extension), path in calendars.items():
        text += f'\n[[link]]\nextension = "{extension}"\npbx = "{pbx}"\nsource = "{path}"\n'
    run.config.write_text(text)
    return run


def stop_run(run: DaemonRun) -> None:
    if run.proc is not None and run.proc.poll() is None:
        run.proc.send_signal(signal.SIGCONT)  # a frozen process cannot take SIGTERM
        run.proc.kill()
        run.proc.wait(timeout=10)


def spread(group: Group) -> bool:
    """Three live members, both leases live, held by two different live members."""
    status = group.status()
    live = {m.member_id for m in status.members if m.live}
    holders = [row.holder for row in status.leases if row.live and row.holder in live]
    return len(live) == 3 and len(holders) == 2 and len(set(holders)) == 2


@pytest.fixture(scope="module")
def group(asterisk_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    base = tmp_path_factory.mktemp("cluster-daemon")
    calendars = {
        ("a", "201"): base / "a-201.ics",
        ("b", "202"): base / "b-202.ics",
    }
    for path in calendars.values():
        write_calendar(path, [])
    try:
        pg = running_postgres(tmp_path_factory.mktemp("postgres"))
        url = pg.__enter__()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    asts: dict[str, LoggingAsterisk] = {}
    runs: list[DaemonRun] = []
    try:
        for name in ("a", "b"):  # two sandboxes at once, each on its own free ports
            users = {user: secrets.token_hex(16) for user in USERS}
            asts[name] = LoggingAsterisk(asterisk_root, f"cluster-{name}", users)
            try:
                asts[name].start()
            except SandboxError as exc:
                pytest.fail(f"Asterisk sandbox did not start: {exc}", pytrace=False)
        for i, user in enumerate(USERS):
            run = make_run(base / f"p{i + 1}", asts, url, user, calendars)
            runs.append(run)
            run.start()  # one after the other: each writes the config links at start
            run.wait_ready()
        group = Group(url, cluster_conninfo(url), asts, runs, calendars)
        wait_for(lambda: spread(group), bool, 20, 0.1, "leases spread over the members")
        yield group
    finally:
        for run in runs:
            stop_run(run)
        for ast in asts.values():
            ast.close()
        pg.__exit__(None, None, None)


@pytest.fixture
def cluster(group: Group) -> Iterator[Group]:
    """The group with all three processes running and the leases spread."""
    for run in group.runs:
        if run.proc is None or run.proc.poll() is not None:
            run.start()
            run.wait_ready()
    for path in group.calendars.values():
        write_calendar(path, [])
    for pbx, ext in group.calendars:  # what the last test set is cleared, lamps included
        wait_settled(group.asts[pbx], ext, None)
    wait_for(lambda: spread(group), bool, 20, 0.1, "leases spread over the members")
    yield group


def wait_settled(ast: AsteriskSandbox, ext: str, value: str | None, timeout: float = 10) -> None:
    """Wait until Asterisk holds ``value`` for ``ext`` and the lamp follows (the batch
    that wrote it is complete, so its actions are all in the manager log)."""
    wait_forwarding(ast, ext, value, timeout=timeout, interval=0.02)
    lamp = "INUSE" if value else ("NOT_INUSE", "UNKNOWN")
    wait_for(lambda: blf(ast, ext), lambda s: s in lamp, 5, 0.02, f"lamp of {ext}")


def now() -> datetime:
    return datetime.now(UTC)


def wait_until(moment: datetime) -> None:
    """Wait for a moment of the wall clock (a boundary), not for a result."""
    wait_for(lambda: now() >= moment, bool, (moment - now()).total_seconds() + 5, 0.02,
             f"the clock to reach {moment}")  # fmt: skip


def test_boundaries_are_applied_on_time_by_each_pbx_s_lease_holder(cluster: Group) -> None:
    start = whole_second(now() + 4 * S)
    end = start + 3 * S
    marks = {name: log_mark(ast) for name, ast in cluster.asts.items()}
    write_calendar(cluster.calendars[("a", "201")], [Event("w", "300", start, end)])
    write_calendar(cluster.calendars[("b", "202")], [Event("w", "201", start, end)])
    for (pbx, ext), value in ((("a", "201"), "300"), (("b", "202"), "201")):
        seen = wait_forwarding(cluster.asts[pbx], ext, value, timeout=10, interval=0.02)
        assert start - 0.1 * S <= seen <= start + 1.5 * S, (pbx, seen, start)
    for pbx, ext in (("a", "201"), ("b", "202")):
        seen = wait_forwarding(cluster.asts[pbx], ext, None, timeout=10, interval=0.02)
        assert end - 0.1 * S <= seen <= end + 1.5 * S, (pbx, seen, end)
    for pbx, ext in (("a", "201"), ("b", "202")):
        wait_settled(cluster.asts[pbx], ext, None)
        owner = cluster.user_of(cluster.holder_run(pbx))
        sent = writes(cluster.asts[pbx], marks[pbx], key=f"fwd/{ext}")
        assert [(w.user, w.action) for w in sent] == [(owner, "dbput"), (owner, "dbdel")], sent
        others = [w for w in writes(cluster.asts[pbx], marks[pbx]) if w.user != owner]
        assert others == [], others


def test_kill_9_of_an_owner_just_before_a_boundary_the_boundary_is_applied_by_one_successor(
    cluster: Group,
) -> None:
    ast = cluster.asts["a"]
    boundary = whole_second(now() + 4 * S)
    write_calendar(
        cluster.calendars[("a", "201")],
        [Event("w1", "300", boundary - 60 * S, boundary), Event("w2", "202", boundary,
                                                               boundary + 600 * S)],
    )  # fmt: skip
    victim = cluster.holder_run("a")
    wait_forwarding(ast, "201", "300", timeout=10)  # mid-window W1
    wait_until(boundary - 1 * S)
    mark = log_mark(ast)
    victim.kill9()
    killed_at = now()
    seen = wait_forwarding(ast, "201", "202", timeout=TTL + 8, interval=0.02)
    assert seen <= max(boundary, killed_at) + (TTL + 1.5) * S, (seen, boundary, killed_at)
    successor = cluster.holder_run("a")
    assert successor is not victim
    sent = writes(ast, mark, key="fwd/201")
    assert [(w.user, w.action, w.headers.get("val")) for w in sent] == [
        (cluster.user_of(successor), "dbput", "202")
    ], sent
    assert "took over pbx:a" in successor.log()
    assert forwarding(ast, "201") == "202"


def test_a_frozen_owner_writes_nothing_to_its_pbx_after_sigcont(cluster: Group) -> None:
    ast = cluster.asts["b"]
    frozen = cluster.holder_run("b")
    user = cluster.user_of(frozen)
    boundary = whole_second(now() + (TTL + 4) * S)
    write_calendar(
        cluster.calendars[("b", "202")],
        [Event("w1", "300", boundary - 60 * S, boundary), Event("w2", "201", boundary,
                                                               boundary + 600 * S)],
    )  # fmt: skip
    wait_settled(ast, "202", "300")
    mark = log_mark(ast)
    applied_w1 = writes(ast, 0, key="fwd/202")
    assert applied_w1[-1].user == user  # so the frozen process knows the boundary too
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        wait_forwarding(ast, "202", "201", timeout=(boundary - now()).total_seconds() + TTL + 4)
        successor = cluster.holder_run("b")
        assert successor is not frozen
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    # it has run since: its keeper noticed, its reconciler passed the overdue boundary
    wait_for(frozen.log, lambda text: "stopped writing for pbx:b" in text, 10, 0.05,
             "the resumed process to give its lease up")  # fmt: skip
    wait_for(
        lambda: frozen.http("/healthz"),
        lambda r: r[0] == 200 and _tick_age(r[1]) < time.monotonic() - resumed,
        10,
        0.05,
        "the resumed process's reconciler to run a pass",
    )
    wait_for(lambda: frozen.metric("pbxcal_pbx_leases_held"), lambda n: n == 0, 5, 0.05,
             "the resumed process to hold nothing")  # fmt: skip
    assert cluster.holder_run("b") is successor
    stale = [w for w in writes(ast, mark) if w.user == user]
    assert stale == [], stale
    sent = writes(ast, mark, key="fwd/202")
    assert [(w.user, w.headers.get("val")) for w in sent] == [
        (cluster.user_of(successor), "201")
    ], sent
    assert forwarding(ast, "202") == "201"


class Watcher:
    """Polls what both Asterisks hold (their CLI) in a thread; records every change."""

    def __init__(self, group: Group, keys: list[tuple[str, str]]) -> None:
        self.group = group
        self.keys = keys
        self.changes: dict[tuple[str, str], list[tuple[datetime, str | None]]] = {
            key: [] for key in keys
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pbx, ext in self.keys:
                value = forwarding(self.group.asts[pbx], ext)
                seen = self.changes[(pbx, ext)]
                if not seen or seen[-1][1] != value:
                    seen.append((now(), value))
            self._stop.wait(0.05)  # the polling period, not synchronisation

    def first(self, key: tuple[str, str], value: str, after: datetime) -> datetime | None:
        return next((t for t, v in self.changes[key] if v == value and t >= after), None)


def test_processes_leave_and_join_ownership_rebalances_and_no_boundary_is_missed(
    cluster: Group,
) -> None:
    keys = [("a", "201"), ("b", "202")]
    targets = {("a", "201"): ["300", "202", "100"], ("b", "202"): ["300", "201", "100"]}
    first = whole_second(now() + 3 * S)
    windows = [(first + 2 * k * S, first + 2 * (k + 1) * S) for k in range(12)]
    for key in keys:
        events = [
            Event(f"w{k}", targets[key][k % 3], start, end)
            for k, (start, end) in enumerate(windows)
        ]
        write_calendar(cluster.calendars[key], events)
    stayer = cluster.holder_run("b")
    leavers = [run for run in cluster.runs if run is not stayer]
    epochs_before = {row.name: row.epoch for row in cluster.status().leases}
    with Watcher(cluster, keys) as watcher:
        wait_until(first + 1 * S)
        for run in leavers:  # two leave (SIGTERM: they hand their leases back)
            assert run.terminate() == 0
        wait_for(lambda: cluster.holder_or_none("a") is stayer, bool, TTL + 2, 0.05,
                 "the one left to hold both PBXes")  # fmt: skip
        for run in leavers:  # and come back: the newcomers get their share, gradually
            run.start()
        for run in leavers:
            run.wait_ready()
        wait_for(lambda: spread(cluster), bool, 20, 0.1, "the leases spread again")
        wait_until(windows[-1][1] + 1 * S)
    for key in keys:
        for k, (start, _) in enumerate(windows):
            seen = watcher.first(key, targets[key][k % 3], start - 0.1 * S)
            assert seen is not None and seen <= start + TTL * S, (key, k, start, seen)
        wait_forwarding(cluster.asts[key[0]], key[1], None, timeout=TTL)  # the last ended
    epochs_after = {row.name: row.epoch for row in cluster.status().leases}
    assert epochs_after["pbx:a"] > epochs_before["pbx:a"]  # it moved, and moved back
    assert any("handed over to member" in run.log() for run in cluster.runs)


def test_postgresql_restarted_the_group_recovers_without_restarting_pbxcal(
    cluster: Group,
) -> None:
    pids = [run.proc.pid for run in cluster.runs if run.proc is not None]
    stop_postgres(cluster.url)
    try:
        for run in cluster.runs:
            wait_for(run.log, lambda text: text.count("PostgreSQL unreachable") >= 1, 15, 0.1,
                     "every process to notice PostgreSQL is gone")  # fmt: skip
    finally:
        start_postgres(cluster.url)
    wait_for(lambda: _status_or_none(cluster) is not None and spread(cluster), bool, 30, 0.1,
             "the group to form again")  # fmt: skip
    for run in cluster.runs:  # notifications sent while away are lost: all re-read
        wait_for(run.log, lambda text: "listening for link changes again" in text, 15, 0.1,
                 "every process to listen for link changes again")  # fmt: skip
    start = whole_second(now() + 4 * S)
    write_calendar(cluster.calendars[("a", "201")], [Event("w", "100", start, start + 600 * S)])
    write_calendar(cluster.calendars[("b", "202")], [Event("w", "100", start, start + 600 * S)])
    for pbx, ext in (("a", "201"), ("b", "202")):
        seen = wait_forwarding(cluster.asts[pbx], ext, "100", timeout=10, interval=0.02)
        assert seen <= start + 1.5 * S, (pbx, seen, start)
    assert [run.proc.pid for run in cluster.runs if run.proc is not None] == pids
    for run in cluster.runs:
        run.check_alive()
        assert "PostgreSQL reachable again" in run.log()


def test_links_added_while_the_group_runs_are_applied_whoever_reads_them(
    cluster: Group, tmp_path: Path
) -> None:
    run = cluster.runs[1]
    added: list[str] = []
    try:
        for pbx, target in (("a", "202"), ("b", "201")):  # one link per PBX: the reader and
            calendar = tmp_path / f"{pbx}-100.ics"  # the PBX's owner differ for some
            start = whole_second(now() - 60 * S)
            write_calendar(calendar, [Event("w", target, start, start + 600 * S)])
            made = subprocess.run(
                run.command("links", "add", "--json", "--extension", "100", "--pbx", pbx,
                            "--source", str(calendar)),
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            added.append(str(json.loads(made.stdout)["added"]))
        for pbx, target in (("a", "202"), ("b", "201")):
            wait_settled(cluster.asts[pbx], "100", target, timeout=15)
    finally:
        for link_id in added:
            subprocess.run(run.command("links", "remove", link_id), capture_output=True,
                           timeout=60, check=False)  # fmt: skip
    for pbx in ("a", "b"):
        wait_settled(cluster.asts[pbx], "100", None, timeout=15)


def test_the_group_is_visible_in_the_cli_the_admin_api_and_the_metrics(cluster: Group) -> None:
    run = cluster.runs[0]
    tokens = {}
    for name, scope in (("ops", ()), ("tenant", ("--pbx", "a"))):
        made = subprocess.run(run.command("admin-token", "create", "--name", name, *scope),
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert made.returncode == 0, made.stderr
        tokens[name] = made.stdout.strip()
    status, body = _get(run, "/api/v1/cluster", tokens["ops"])
    assert status == 200, body
    shown = json.loads(body)
    pids = {r.proc.pid for r in cluster.runs if r.proc is not None}
    assert {m["pid"] for m in shown["members"] if m["live"]} == pids
    leases = {row["name"]: row for row in shown["leases"]}
    assert sorted(leases) == ["pbx:a", "pbx:b"] and all(r["live"] for r in leases.values())
    holder = cluster.holder_run("a")
    by_pid = {m["pid"]: m for m in shown["members"] if m["live"]}
    assert holder.proc is not None
    assert "pbx:a" in by_pid[holder.proc.pid]["leases"]
    assert leases["pbx:a"]["holder"] == by_pid[holder.proc.pid]["member_id"]
    status, body = _get(run, "/api/v1/cluster", tokens["tenant"])
    assert status == 404 and json.loads(body)["error"] == "not-found", body
    cli = subprocess.run(run.command("cluster", "status", "--json"), capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert {m["pid"] for m in json.loads(cli.stdout)["members"] if m["live"]} == pids
    assert [r.metric("pbxcal_cluster_members") for r in cluster.runs] == [3.0, 3.0, 3.0]
    assert sum(r.metric("pbxcal_pbx_leases_held") for r in cluster.runs) == 2.0


def _get(run: DaemonRun, path: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{run.listen}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - http://loopback
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_second_service_on_one_sqlite_store_is_refused_in_one_line(
    group: Group, tmp_path: Path
) -> None:
    ast = group.asts["a"]
    store = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first = DaemonRun(first_dir, ast, [], store=store, secret=ast.users[USERS[0]])
    first.config.write_text(first.config.read_text().replace('"pbxcal"', f'"{USERS[0]}"'))
    second = DaemonRun(second_dir, ast, [], store=store, secret=ast.users[USERS[1]])
    second.config.write_text(second.config.read_text().replace('"pbxcal"', f'"{USERS[1]}"'))
    try:
        first.start()
        first.wait_ready()
        second.start()
        assert second.proc is not None
        code = second.proc.wait(timeout=30)
        assert code != 0
        output = second.log().strip().splitlines()
        assert output[-1] == (
            f"pbxcal: error: store {tmp_path / 'one.sqlite3'} is in use by another pbxcal "
            f"service process (pid {first.proc.pid if first.proc else '?'}); an SQLite "
            "store serves one process, use PostgreSQL to run several"
        ), output
        first.check_alive()
    finally:
        stop_run(second)
        stop_run(first)


def _tick_age(body: str) -> float:
    match = re.search(r'"reconciler_tick_age_seconds":\s*([0-9.]+)', body)
    return float(match.group(1)) if match else float("inf")


def _status_or_none(group: Group) -> ClusterStatus | None:
    try:
        return group.status()
    except StoreError:
        return None
