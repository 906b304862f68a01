"""``pbxcal cluster status [--json]``: the processes sharing one PostgreSQL store.

Shows every member (live or dead, host, pid, seconds since its last heartbeat by the
database's clock, the leases it holds) and every lease (holder, epoch, expiry). The
store is migrated first like every other command's, so the tables exist. An SQLite
store has no cluster: a one-line error says so.

Must not write to the cluster's tables. Start reading at ``run_cluster``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pbxcal.cli.common import global_options, load, opened_store, store_url, wants_json
from pbxcal.errors import InputError


def add_cluster(sub: Any) -> None:
    common = global_options(json=True)
    p = sub.add_parser(
        "cluster",
        parents=[common],
        help="show the pbxcal processes sharing a PostgreSQL store",
        description="Show the members of the group of pbxcal processes on one "
        "PostgreSQL store, their last heartbeat, and the write lease of each PBX with its "
        "holder and epoch. --config, --store and --json may stand before or after status.",
    )
    actions = p.add_subparsers(
        dest="cluster_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    actions.add_parser(
        "status",
        parents=[common],
        help="members, heartbeats, leases with holders and epochs",
        description="Members (live or dead) with their last heartbeat by the database's "
        "clock and the leases they hold; every lease with its holder, epoch and expiry.",
    )
    p.set_defaults(handler=run_cluster)


def run_cluster(ns: argparse.Namespace) -> int:
    from pbxcal.cluster.connection import cluster_conninfo, is_postgres_url

    config = load(ns)
    url = store_url(ns, config)
    if not is_postgres_url(url):
        raise InputError(
            "cluster status needs a PostgreSQL store; an SQLite store serves one "
            "pbxcal process and has no cluster"
        )
    try:
        from pbxcal.cluster.status import read_status, status_json, status_lines
    except ImportError:
        raise InputError(
            "PostgreSQL support is not installed: pip install 'pbxcal[postgres]'"
        ) from None
    with opened_store(ns, config) as (_store, where):
        status = read_status(cluster_conninfo(url, application_name="pbxcal-cli"))
    if wants_json(ns):
        print(json.dumps({"store": where, **status_json(status)}, indent=2))
        return 0
    print(f"cluster on store {where}: " + "\n".join(status_lines(status)))
    return 0
