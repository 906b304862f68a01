"""Several ``pbxcal run`` processes on one PostgreSQL: one writer per PBX, work shared.

What it does: the processes sharing a PostgreSQL store form a group by themselves,
through three tables of that store and no coordinator: ``members`` (heartbeats),
``leases`` (one per PBX, with a fencing epoch) and ``pbx_epochs`` (the newest epoch that
wrote about a PBX). The protocol, its invariant and why it holds are in docs/cluster.md.

What it must not do: run on SQLite (one process per SQLite store, enforced by
``pbxcal.store.process_lock``), trust a wall clock, or write to a PBX itself (the
daemon does, through ``FencedPbx``).

The map::

    lease.py        acquire / renew / release as single SQL statements judged by the
                    database's clock; Lease; Fence (the writer's check, local clock)
    members.py      heartbeats, live members, member ids
    ownership.py    pure: balanced, sticky assignment (rendezvous hashing), hysteresis
    keeper.py       LeaseKeeper: one round = beat, renew, plan, release, acquire
    fenced_pbx.py   FencedPbx: the Pbx port, refused unless the lease is valid
    writers.py      PbxWriters: FencedPbx per PBX + the keeper; what the daemon wires in
    notify.py       LISTEN/NOTIFY "link N changed", reconnecting, resync after a gap
    status.py       what ``pbxcal cluster status`` shows
    connection.py   store URL -> libpq conninfo that notices a dead server in seconds

Start reading at ``lease``, then ``keeper.LeaseKeeper.round``, then ``writers``.
"""
