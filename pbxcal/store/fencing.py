"""Fencing of state written about a PBX: a write carries its lease epoch, stale ones fail.

What it does: ``claim_pbx_epoch(conn, pbx, epoch)`` runs inside the transaction that
writes state about ``pbx`` (the applied forwardings) and refuses it with ``LeaseLost``
unless ``epoch`` is the current epoch of the PBX's write lease (``leases`` row
``pbx:<name>``, see ``pbxcal.cluster.lease``) and no newer epoch has written about the
PBX yet (``pbx_epochs``: a compare-and-set that only moves forward). The lease row is
read ``FOR SHARE``, so a takeover (an ``UPDATE`` of that row) waits until this write is
committed or rolled back: a write and a takeover never interleave, and every write a
stale holder could still commit is ordered before the takeover.

What it must not do: judge time (the lease protocol does, with the database's clock)
or write anything but the ``pbx_epochs`` row; the caller's own writes follow in the
same transaction.

Start reading at ``claim_pbx_epoch``.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from pbxcal.errors import LeaseLost
from pbxcal.store import schema as db

#: A PBX's write lease is named ``pbx:<name>``.
PBX_LEASE_PREFIX = "pbx:"


def pbx_lease_name(pbx: str) -> str:
    """The name of ``pbx``'s write lease in the ``leases`` table."""
    return f"{PBX_LEASE_PREFIX}{pbx}"


def claim_pbx_epoch(conn: Connection, pbx: str, epoch: int) -> None:
    """Refuse (``LeaseLost``) a write about ``pbx`` unless ``epoch`` is still current.

    Call first thing in the transaction that writes about ``pbx``; on ``LeaseLost`` the
    transaction rolls back and nothing of it is stored.
    """
    lease = pbx_lease_name(pbx)
    current = conn.execute(
        select(db.leases.c.epoch).where(db.leases.c.name == lease).with_for_update(read=True)
    ).scalar_one_or_none()
    if current is None:
        raise LeaseLost(f"PBX {pbx}: no write lease exists; epoch {epoch} may not write")
    if current != epoch:
        raise LeaseLost(
            f"PBX {pbx}: write lease epoch is {current}; a write of epoch {epoch} is refused"
        )
    statement: postgresql.Insert | sqlite.Insert
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(db.pbx_epochs)
    else:
        statement = sqlite.insert(db.pbx_epochs)
    written = conn.execute(
        statement.values(pbx=pbx, epoch=epoch, written_at=func.now())
        .on_conflict_do_update(
            index_elements=[db.pbx_epochs.c.pbx],
            set_={"epoch": statement.excluded.epoch, "written_at": statement.excluded.written_at},
            where=db.pbx_epochs.c.epoch <= statement.excluded.epoch,
        )
        .returning(db.pbx_epochs.c.epoch)
    ).scalar_one_or_none()
    if written is None:
        raise LeaseLost(f"PBX {pbx}: a newer epoch already wrote; epoch {epoch} is refused")
