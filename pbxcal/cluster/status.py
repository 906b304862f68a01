"""What ``pbxcal cluster status`` (and later the admin API) shows: members and leases.

What it does: ``read_status(conninfo)`` reads every ``members`` row (live or dead, with
the seconds since its last beat by the database's clock) and every ``leases`` row (holder,
epoch, seconds to expiry) in one snapshot; ``status_json`` and ``status_lines`` render
it. Read-only, one short synchronous connection.

What it must not do: write anything, or judge liveness by this host's clock (the
database's clock is the only one the group shares).

Start reading at ``read_status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from pbxcal.cluster.lease import LEASES_QUERY, LeaseRow, lease_row
from pbxcal.cluster.members import MEMBERS_QUERY, Member, member_row
from pbxcal.errors import StoreError
from pbxcal.store.engine import one_line


@dataclass(frozen=True)
class ClusterStatus:
    members: list[Member]
    leases: list[LeaseRow]

    def held_by(self, member_id: str) -> list[str]:
        return [row.name for row in self.leases if row.live and row.holder == member_id]


def read_status(conninfo: str) -> ClusterStatus:
    """Members and leases as the database sees them now. ``StoreError`` if unreadable."""
    try:
        with psycopg.connect(conninfo) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            members = [member_row(row) for row in conn.execute(MEMBERS_QUERY).fetchall()]
            leases = [lease_row(row) for row in conn.execute(LEASES_QUERY).fetchall()]
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the cluster's status: {one_line(exc)}") from exc
    return ClusterStatus(members, leases)


def status_json(status: ClusterStatus) -> dict[str, object]:
    return {
        "members": [
            {
                "member_id": m.member_id,
                "host": m.host,
                "pid": m.pid,
                "live": m.live,
                "ttl_seconds": m.ttl,
                "started_at": _iso(m.started_at),
                "alive_since": _iso(m.alive_since),
                "heartbeat_at": _iso(m.heartbeat_at),
                "heartbeat_age_seconds": round(m.heartbeat_age, 3),
                "leases": status.held_by(m.member_id),
            }
            for m in status.members
        ],
        "leases": [
            {
                "name": row.name,
                "holder": row.holder,
                "epoch": row.epoch,
                "live": row.live,
                "acquired_at": _iso(row.acquired_at),
                "renewed_at": _iso(row.renewed_at),
                "expires_at": _iso(row.expires_at),
                "expires_in_seconds": round(row.expires_in, 3),
            }
            for row in status.leases
        ],
    }


def status_lines(status: ClusterStatus) -> list[str]:
    live = [m for m in status.members if m.live]
    lines = [f"{len(live)} live member(s), {len(status.leases)} lease(s)"]
    if status.members:
        lines.append("members:")
    for m in status.members:
        state = "live" if m.live else "DEAD"
        held = status.held_by(m.member_id)
        lines.append(
            f"  {m.member_id}  {state}  {m.host} pid {m.pid}  last heartbeat "
            f"{m.heartbeat_age:.1f}s ago  leases: {', '.join(held) or '-'}"
        )
    if status.leases:
        lines.append("leases:")
    for row in status.leases:
        when = f"expires in {row.expires_in:.1f}s" if row.live else "free"
        lines.append(f"  {row.name}  epoch {row.epoch}  holder {row.holder}  {when}")
    return lines


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
