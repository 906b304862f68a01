"""Benchmark of scale-out: N links and E extensions on one ``pbxcal run`` and on several
sharing one PostgreSQL and the machine.

Run (root, like the integration tests)::

    .venv/bin/python bench/bench_cluster_scale.py [--links 30000] [--extensions 3000]
        [--processes 1 3]

Starts a private PostgreSQL (``tests/integration/postgres.py``) and one sandboxed
Asterisk (``pbxcal.testing.asterisk``: the real AMI, no fake PBX), writes N small ICS
files on local disk (link i belongs to extension i mod E; the first link of every
extension has a 30 s window every minute for the next half hour, the others one event
tomorrow), and for each process count P (a fresh database each time) starts P ``pbxcal
run`` processes at once on the links in the store (put there first, in one transaction,
as links added by ``pbxcal links add`` or the portal: a config file holds at most 1 MB,
about 12,000 ``[[link]]`` tables), ``[sync] interval = 3600`` and the default lease
times. It measures:

* **full sync round** -- from the start of the processes until the first read of every
  link has finished (``pbxcal_calendar_syncs_total`` summed over the processes), with
  the CPU seconds the pbxcal processes and the PostgreSQL server used meanwhile (from
  ``/proc``), per link;
* **boundary lag** -- at the first window start B at least 10 s after the round, Asterisk's
  AstDB (``database show pbxcal``, polled back to back through the CLI) is read until every
  extension holds its forwarding; per extension the first poll that saw it, minus B.
  p50/p99/max (one PBX: one process writes it, whatever P is). The poll takes tens of
  milliseconds for thousands of keys: that is the resolution.

Each figure is printed for every P beside the first P (the baseline) of the same run.
``--profile DIR`` runs each ``pbxcal run`` under cProfile and writes
``DIR/p<P>-<k>.prof`` when it stops (read with ``python -m pstats``); the figures are
then those of profiled processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import sqlalchemy
from postgres import _SERVERS, create_database, running_postgres

from pbxcal.store import Store
from pbxcal.testing.asterisk import AsteriskSandbox, ensure_root

PBXCAL = Path(sys.executable).parent / "pbxcal"
TARGET = "0612345678"
ROUTED = "+31612345678"
WINDOWS = 30  # one a minute


@dataclass
class Figures:
    processes: int
    round_seconds: float
    pbxcal_cpu: float
    postgres_cpu: float
    lags: list[float]


def ext_name(i: int) -> str:
    return str(100000 + i)


def ics(events: list[tuple[datetime, datetime, str]], uid: str) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//pbxcal//bench-scale//EN"]
    for k, (start, end, title) in enumerate(events):
        lines += [
            "BEGIN:VEVENT", f"UID:{uid}-{k}", "DTSTAMP:20260101T000000Z",
            f"DTSTART:{start:%Y%m%dT%H%M%SZ}", f"DTEND:{end:%Y%m%dT%H%M%SZ}",
            f"SUMMARY:{title}", "END:VEVENT",
        ]  # fmt: skip
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def write_calendars(cals: Path, n: int, e: int, first_window: datetime) -> list[Path]:
    tomorrow = first_window + timedelta(days=1)
    paths = []
    for i in range(n):
        if i < e:  # the first link of extension i: a window every minute
            events = [
                (first_window + timedelta(minutes=k),
                 first_window + timedelta(minutes=k, seconds=30), TARGET)
                for k in range(WINDOWS)
            ]  # fmt: skip
        else:
            start = tomorrow + timedelta(minutes=i % 600)
            events = [(start, start + timedelta(minutes=30), "0201234567")]
        path = cals / f"{i}.ics"
        path.write_text(ics(events, f"l{i}"))
        paths.append(path)
    return paths


def config(listen: str, ast: AsteriskSandbox, secret: Path) -> str:
    return (
        f'[pbxcal]\nregion = "NL"\ntimezone = "UTC"\n\n[http]\nlisten = "{listen}"\n\n'
        "[sync]\ninterval = 3600\n\n"
        f'[pbx.main]\nhost = "{ast.ami_host}"\nport = {ast.ami_port}\n'
        f'username = "{ast.ami_username}"\nsecret_file = "{secret}"\n'
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def postgres_pids(url: str) -> list[int]:
    """The postmaster of ``url``'s server and its children."""
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    data = _SERVERS[host_port][3]
    master = int((data / "postmaster.pid").read_text().splitlines()[0])
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == master:
                pids.append(int(entry.name))
    return pids


def metric_sum(listen: str, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=60) as reply:
            body = reply.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def own_lag(listens: list[str]) -> str:
    """Mean and p99 bucket of ``pbxcal_boundary_lag_seconds`` summed over the processes
    (only the PBX's writer observes it)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for listen in listens:
        try:
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=60) as reply:
                body = reply.read().decode()
        except OSError:
            continue
        for line in body.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("pbxcal_boundary_lag_seconds_bucket{"):
                bound = name.split('le="', 1)[1].split('"', 1)[0]
                le = float("inf") if bound == "+Inf" else float(bound)
                buckets[le] = buckets.get(le, 0.0) + float(value)
            elif name == "pbxcal_boundary_lag_seconds_sum":
                total += float(value)
            elif name == "pbxcal_boundary_lag_seconds_count":
                count += float(value)
    if not count:
        return "nothing observed"
    p99 = min(le for le, seen in buckets.items() if seen >= 0.99 * count)
    return f"mean {1000 * total / count:.0f} ms, p99 <= {1000 * p99:.0f} ms"


def forwardings(ast: AsteriskSandbox) -> dict[str, str]:
    """Every ``pbxcal/fwd/<ext>`` Asterisk holds."""
    found = {}
    for line in ast.cli("database show pbxcal fwd", timeout=30).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().startswith("/pbxcal/fwd/"):
            found[key.strip().removeprefix("/pbxcal/fwd/")] = value.strip()
    return found


def clear_forwardings(ast: AsteriskSandbox) -> None:
    ast.cli("database deltree pbxcal")


def run_group(
    work: Path,
    ast: AsteriskSandbox,
    url: str,
    processes: int,
    paths: list[Path],
    e: int,
    first_window: datetime,
    profile: Path | None = None,
) -> Figures:
    secret = work / "ami.secret"
    secret.write_text(ast.ami_secret)
    secret.chmod(0o600)
    specs: list[tuple[str, str, str, str, dict[str, object]]] = [
        (ext_name(i % e), "main", "ics", str(p), {"owner_emails": []}) for i, p in enumerate(paths)
    ]
    with Store.open(url) as store:  # the links in place before anybody starts
        store.sync_config_links(specs)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # not config links: the config file lists none
        conn.execute(sqlalchemy.text("UPDATE links SET origin = 'cli'"))
    engine.dispose()
    listens = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    procs: list[subprocess.Popen[bytes]] = []
    pg = postgres_pids(url)
    pg_cpu0 = sum(cpu_seconds(p) for p in pg)
    started = time.monotonic()
    try:
        for k, listen in enumerate(listens):
            (work / f"p{k}").mkdir()
            conf = work / f"p{k}" / "pbxcal.toml"
            conf.write_text(config(listen, ast, secret))
            log = (work / f"p{k}" / "pbxcal.log").open("wb")
            command = [str(PBXCAL), "run", "--config", str(conf), "--store", url]
            if profile is not None:
                out = profile / f"p{processes}-{k}.prof"
                command = [sys.executable, "-m", "cProfile", "-o", str(out), *command]
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        n = len(paths)
        while sum(metric_sum(listen, "pbxcal_calendar_syncs_total") for listen in listens) < n:
            for proc in procs:
                if proc.poll() is not None:
                    logs = sorted(work.glob("p*/pbxcal.log"))
                    tail = "\n".join(
                        p.read_text().splitlines()[-1] for p in logs if p.stat().st_size
                    )
                    raise SystemExit(f"pbxcal run exited {proc.returncode}:\n{tail}")
            if time.monotonic() - started > 3600:
                raise SystemExit("the first round did not finish within an hour")
            time.sleep(0.5)
        round_seconds = time.monotonic() - started
        pbxcal_cpu = sum(cpu_seconds(p.pid) for p in procs)
        postgres_cpu = sum(cpu_seconds(p) for p in postgres_pids(url)) - pg_cpu0
        print(
            f"  [{processes} process(es)] first read of {n} links: {round_seconds:.1f} s; "
            f"CPU pbxcal {pbxcal_cpu:.1f} s, PostgreSQL {postgres_cpu:.1f} s",
            flush=True,
        )
        reads = sum(metric_sum(listen, "pbxcal_calendar_syncs_total") for listen in listens)
        rss = sum(rss_bytes(p.pid) for p in procs) / len(procs)
        load = Path("/proc/loadavg").read_text().split()[:3]
        with Store.open(url) as store:  # links read at least once (a read twice counts once)
            distinct = len(store.expansion_computed_at())
        print(
            f"  [{processes} process(es)] then: {distinct} links read, {reads:.0f} reads in all; "
            f"RSS {rss / 2**20:.0f} MiB per process; load average {' '.join(load)}",
            flush=True,
        )
        lags = boundary_lags(ast, e, first_window)
        if lags:
            print(
                f"  [{processes} process(es)] boundary lag p50 "
                f"{1000 * statistics.median(lags):.0f} ms, p99 "
                f"{1000 * percentile(lags, 0.99):.0f} ms ({len(lags)}/{e}); the writer, "
                f"every boundary since its start (batch acknowledged): {own_lag(listens)}",
                flush=True,
            )
        return Figures(processes, round_seconds, pbxcal_cpu, postgres_cpu, lags)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def boundary_lags(ast: AsteriskSandbox, e: int, first_window: datetime) -> list[float]:
    """Wait for the next window start at least 10 s ahead; per extension, the first poll
    that saw it forwarded, minus that start."""
    now = datetime.now(UTC)
    k = max(0, int((now - first_window).total_seconds() // 60) + 1)
    boundary = first_window + timedelta(minutes=k)
    if boundary - now < timedelta(seconds=10):
        boundary += timedelta(minutes=1)
    if k >= WINDOWS:
        raise SystemExit("the round took longer than the calendars' half hour of windows")
    wanted = {ext_name(i) for i in range(e)}
    time.sleep(max(0.0, (boundary - datetime.now(UTC)).total_seconds() - 3))
    before = forwardings(ast)
    early = [x for x in wanted if before.get(x) == ROUTED]
    if early:
        print(f"  warning: {len(early)} extensions forwarded 3 s before the boundary")
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        held = forwardings(ast)
        at = (datetime.now(UTC) - boundary).total_seconds()
        for ext in wanted - set(seen):
            if held.get(ext) == ROUTED:
                seen[ext] = at
    missing = len(wanted) - len(seen)
    if missing:
        print(f"  warning: {missing} extensions not forwarded within 60 s of the boundary")
    return sorted(seen.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=30000)
    parser.add_argument("--extensions", type=int, default=3000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--profile", type=Path, help="cProfile each pbxcal run into DIR")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    n, e = args.links, args.extensions
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="pbxcal-bench-scale-") as tmp:
        base = Path(tmp)
        cals = base / "cals"
        cals.mkdir()
        with running_postgres(base) as root_url, AsteriskSandbox(ensure_root(), "scale") as ast:
            for processes in args.processes:
                clear_forwardings(ast)
                first_window = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(
                    minutes=1
                )
                paths = write_calendars(cals, n, e, first_window)
                url = create_database(root_url, f"scale_{processes}")
                work = base / f"run-{processes}"
                work.mkdir()
                print(f"{n} links, {e} extensions, {processes} process(es):", flush=True)
                results.append(
                    run_group(work, ast, url, processes, paths, e, first_window, args.profile)
                )
    baseline = results[0]
    print(f"\n{n} links, {e} extensions, one PBX; baseline = {baseline.processes} process(es)")
    print(f"{'figure':44} " + " ".join(f"{f.processes:>9} proc" for f in results))
    rows: list[tuple[str, list[str]]] = [
        ("full sync round, s", [f"{f.round_seconds:.1f}" for f in results]),
        ("links read per second", [f"{n / f.round_seconds:.0f}" for f in results]),
        ("pbxcal CPU per link, ms", [f"{1000 * f.pbxcal_cpu / n:.2f}" for f in results]),
        ("PostgreSQL CPU per link, ms", [f"{1000 * f.postgres_cpu / n:.2f}" for f in results]),
        ("boundary lag p50, ms", [f"{1000 * statistics.median(f.lags):.0f}" for f in results]),
        ("boundary lag p99, ms", [f"{1000 * percentile(f.lags, 0.99):.0f}" for f in results]),
        ("boundary lag max, ms", [f"{1000 * max(f.lags):.0f}" for f in results]),
        ("extensions seen forwarded", [f"{len(f.lags)}/{e}" for f in results]),
    ]
    for name, values in rows:
        print(f"{name:44} " + " ".join(f"{v:>14}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
