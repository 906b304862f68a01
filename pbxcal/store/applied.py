"""Applied state: what pbxcal last wrote to each PBX, extension -> targets.

What it does: records the reconciler's changes as they are applied, one row per changed
extension (``save_applied_changes``: a non-empty target list is upserted, an empty one
deletes the row), and reads a PBX's whole applied state back (``load_applied``). Cost is
proportional to the change, not to the number of extensions on the PBX.

What it must not do: rewrite rows that did not change, or store a string as a target
list (``"333"`` would come back as ``("3", "3", "3")``).

Start reading at ``AppliedTable.save_applied_changes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select

from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database, upsert
from pbxcal.store.fencing import claim_pbx_epoch

#: Extensions per DELETE statement (stays under every backend's bound-parameter limit).
_CHUNK = 500


class AppliedTable:
    """The applied-state calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def save_applied_changes(
        self, pbx: str, changes: Mapping[str, Sequence[str]], *, epoch: int | None = None
    ) -> None:
        """Record applied changes on ``pbx``: extension -> targets (empty = nothing applied).

        Only the extensions in ``changes`` are touched, in one transaction. With ``epoch``
        (the writer's lease epoch, ``pbxcal.cluster``) the write is refused with
        ``LeaseLost`` when a newer lease holder exists (``store.fencing``).
        """
        upserts: list[dict[str, object]] = []
        deletes: list[str] = []
        for extension, targets in changes.items():
            if isinstance(targets, str):
                raise StoreError(
                    f"applied state of {extension} on {pbx}: targets must be a list, "
                    f"not the string {targets!r}"
                )
            if targets:
                upserts.append({"pbx": pbx, "extension": extension, "targets": list(targets)})
            else:
                deletes.append(extension)
        if not upserts and not deletes:
            return
        with self._db.transaction(write=True) as conn:
            if epoch is not None:
                claim_pbx_epoch(conn, pbx, epoch)
            for start in range(0, len(deletes), _CHUNK):
                conn.execute(
                    delete(db.applied).where(
                        db.applied.c.pbx == pbx,
                        db.applied.c.extension.in_(deletes[start : start + _CHUNK]),
                    )
                )
            upsert(conn, db.applied, upserts, keys=["pbx", "extension"])

    def load_applied(self, pbx: str) -> dict[str, tuple[str, ...]]:
        """What pbxcal last wrote to ``pbx`` ({} if nothing yet). One query."""
        query = select(db.applied).where(db.applied.c.pbx == pbx).order_by(db.applied.c.extension)
        with self._db.transaction() as conn:
            return {row.extension: tuple(row.targets) for row in conn.execute(query)}
