"""Sync history: one line per sync of a link (result, counts, message), newest kept.

What it does: appends a line and prunes the link's history to ``SYNC_LOG_KEEP`` rows in
the same transaction (``log_sync``), reads a link's newest lines (``sync_log``) and the
newest line of every link in one query (``last_sync``, for ``links list``).

What it must not do: grow without bound, or accept a naive time.

Start reading at ``SyncLogTable.log_sync``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, insert, select

from pbxcal.store import schema as db
from pbxcal.store.engine import Database
from pbxcal.store.links import require_link
from pbxcal.store.records import SyncLogEntry
from pbxcal.store.times import require_utc

#: Rows of sync history kept per link; older rows are pruned on every ``log_sync``.
SYNC_LOG_KEEP = 200


class SyncLogTable:
    """The sync-log calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def log_sync(
        self,
        link_id: int,
        at: datetime,
        result: str,
        accepted: int,
        rejected: Mapping[str, int],
        message: str = "",
    ) -> None:
        """Append a line to a link's sync history, keeping the newest ``SYNC_LOG_KEEP``."""
        require_utc(at, "sync log time")
        values = {
            "link_id": link_id,
            "at": at,
            "result": result,
            "accepted": accepted,
            "rejected": {str(reason): int(count) for reason, count in rejected.items()},
            "message": message,
        }
        with self._db.transaction(write=True) as conn:
            require_link(conn, link_id)
            conn.execute(insert(db.sync_log).values(**values))
            keep = (
                select(db.sync_log.c.id)
                .where(db.sync_log.c.link_id == link_id)
                .order_by(db.sync_log.c.at.desc(), db.sync_log.c.id.desc())
                .limit(SYNC_LOG_KEEP)
            )
            conn.execute(
                delete(db.sync_log).where(
                    db.sync_log.c.link_id == link_id,
                    db.sync_log.c.id.not_in(keep.scalar_subquery()),
                )
            )

    def sync_log(self, link_id: int, limit: int = 20) -> list[SyncLogEntry]:
        """A link's newest ``limit`` sync log entries, newest first."""
        query = (
            select(db.sync_log)
            .where(db.sync_log.c.link_id == link_id)
            .order_by(db.sync_log.c.at.desc(), db.sync_log.c.id.desc())
            .limit(limit)
        )
        with self._db.transaction() as conn:
            return [_log_entry(row) for row in conn.execute(query)]

    def last_sync(self) -> dict[int, SyncLogEntry]:
        """The newest sync log entry of every link that has one. One query."""
        newest = (
            func.row_number()
            .over(
                partition_by=db.sync_log.c.link_id,
                order_by=(db.sync_log.c.at.desc(), db.sync_log.c.id.desc()),
            )
            .label("newest")
        )
        ranked = select(db.sync_log, newest).subquery()
        query = select(ranked).where(ranked.c.newest == 1).order_by(ranked.c.link_id)
        with self._db.transaction() as conn:
            return {row.link_id: _log_entry(row) for row in conn.execute(query)}


def _log_entry(row: Row[Any]) -> SyncLogEntry:
    return SyncLogEntry(
        link_id=row.link_id,
        at=row.at,
        result=row.result,
        accepted=row.accepted,
        rejected={str(reason): int(count) for reason, count in row.rejected.items()},
        message=row.message,
    )
