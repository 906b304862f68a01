"""``pbxcal cluster status [--json]`` through the real console script, on a real PostgreSQL
where two members beat and one holds a lease."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_postgres import *  # noqa: F403 - fixtures
from cluster_postgres import Connect, wait_for

from pbxcal.cluster.lease import acquire
from pbxcal.cluster.members import heartbeat, list_members
from pbxcal.core.redact import redact_url

pytestmark = pytest.mark.integration

PBXCAL = Path(sys.executable).parent / "pbxcal"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), *argv], capture_output=True, text=True, timeout=60, check=False
    )


async def test_status_shows_members_heartbeats_and_leases(
    cluster_url: str, connections: Connect, tmp_path: Path
) -> None:
    conn = await connections()
    await heartbeat(conn, "member-a", 10.0)
    await heartbeat(conn, "member-b", 0.5)  # a tiny ttl: dead by the time we look
    lease = await acquire(conn, "pbx:main", "member-a", 10.0)
    assert lease is not None
    config = tmp_path / "pbxcal.toml"
    config.write_text("", encoding="utf-8")
    options = ["--config", str(config), "--store", cluster_url]

    async def b_is_dead() -> bool:
        return [m.live for m in await list_members(conn, live_only=False)] == [True, False]

    await wait_for(b_is_dead, 5, "member-b's 0.5 s to pass")
    result = run("cluster", "status", "--json", *options)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["store"] == redact_url(cluster_url)
    a, b = shown["members"]
    assert (a["member_id"], a["live"], a["leases"]) == ("member-a", True, ["pbx:main"])
    assert (b["member_id"], b["live"], b["leases"]) == ("member-b", False, [])
    assert a["heartbeat_age_seconds"] < 10
    [row] = shown["leases"]
    assert (row["name"], row["holder"], row["epoch"], row["live"]) == (
        "pbx:main",
        "member-a",
        1,
        True,
    )
    assert 0 < row["expires_in_seconds"] <= 10

    text = run("cluster", *options, "status")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].endswith(": 1 live member(s), 1 lease(s)")
    assert any(line.startswith("  member-a  live  ") and "pbx:main" in line for line in lines)
    assert any(line.startswith("  member-b  DEAD  ") for line in lines)
    assert any(
        line.startswith("  pbx:main  epoch 1  holder member-a  expires in") for line in lines
    )


def test_status_of_an_sqlite_store_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "pbxcal.toml"
    config.write_text("", encoding="utf-8")
    store = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    result = run("cluster", "status", "--config", str(config), "--store", store)
    assert result.returncode == 2
    assert result.stderr == (
        "pbxcal: error: cluster status needs a PostgreSQL store; an SQLite store serves "
        "one pbxcal process and has no cluster\n"
    )
