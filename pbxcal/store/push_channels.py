"""Push channels in the store: Google channels and Graph subscriptions, known to every process.

What it does: keeps one row per live push channel (``push_channels``; migration 0008):
the provider (``"google"`` or ``"graph"``), the channel or subscription id, the link it
serves, a digest of its secret (Google's channel token, Graph's ``clientState``), the
provider's resource id, its expiry and the member id of the process that tends it. The
process that opens a channel writes its row *before* asking the provider (Google may
notify before ``events.watch`` answers), so the webhook of any process behind the load
balancer can check a notification against the store (``push_channel``) and every process
agrees on what is genuine. ``take_push_message`` moves a Google channel's highest message
number forward in one conditional ``UPDATE``, so a replayed message is refused whichever
process it reaches.

Every write of a row (save, delete, expire) on PostgreSQL also sends ``NOTIFY
pbxcal_push, '<provider> <link id>'`` (``CHANGES_CHANNEL``) in its transaction, so it is
delivered at commit: the push keepers of every process re-read only that link's rows
(``pbxcal.service.push_keeper``) instead of all of them on a timer. ``push_channels``
reads one provider's rows, all or those of the links named (in chunks of
``LINK_CHUNK``).

Why a digest and not the secret sealed with the key ring (``secrets``): the webhook only
ever *compares* a presented token with the stored one, and stopping, replacing or
renewing a channel needs only its id (and Google's resource id). A SHA-256 of a 256-bit
random token is as good as the token for comparison and useless to anyone who reads the
table; it needs no key, so the webhook works on a store opened without keys.

What it must not do: store a token or client state in clear, or decide who tends a
channel (``pbxcal.service.push`` does, from the rendezvous owner of the link).

Start reading at ``PushChannelTable.save_push_channel``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, or_, select, text, update

from pbxcal.store import schema as db
from pbxcal.store.engine import Database, upsert
from pbxcal.store.times import require_utc

#: The PostgreSQL notification channel of changed rows (payload ``"<provider> <link id>"``).
CHANGES_CHANNEL = "pbxcal_push"
#: Link ids per query when reading the rows of named links.
LINK_CHUNK = 500


@dataclass(frozen=True)
class PushChannelRecord:
    """One stored channel. ``resource_id`` is ``""`` and ``expires_at`` ``None`` while
    the provider has not answered yet (any resource id is accepted then)."""

    provider: str
    channel_id: str
    link_id: int
    token_digest: bytes
    resource_id: str
    expires_at: datetime | None
    owner: str

    def __repr__(self) -> str:  # a digest is no secret, but it has no place in logs
        return (
            f"PushChannelRecord({self.provider}, {self.channel_id!r}, link={self.link_id}, "
            f"owner={self.owner!r})"
        )


class PushChannelTable:
    """The push-channel calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def save_push_channel(self, record: PushChannelRecord) -> None:
        """Insert or overwrite a channel's row (its message number is kept)."""
        if record.expires_at is not None:
            require_utc(record.expires_at, "push channel expiry")
        values: dict[str, Any] = {
            "provider": record.provider,
            "channel_id": record.channel_id,
            "link_id": record.link_id,
            "token_digest": record.token_digest,
            "resource_id": record.resource_id,
            "expires_at": record.expires_at,
            "owner": record.owner,
            "updated_at": datetime.now(UTC),
        }
        with self._db.transaction(write=True, action="cannot save push channel") as conn:
            upsert(conn, db.push_channels, [values], ["provider", "channel_id"])
            _announce(conn, record.provider, [record.link_id])

    def push_channel(self, provider: str, channel_id: str) -> PushChannelRecord | None:
        """The stored channel, or ``None`` (never opened, stopped, or its link deleted)."""
        table = db.push_channels
        with self._db.transaction() as conn:
            row = conn.execute(
                select(table).where(
                    table.c.provider == provider, table.c.channel_id == channel_id
                )
            ).first()
        return None if row is None else _record(row)

    def push_channels(
        self, provider: str, link_ids: Collection[int] | None = None
    ) -> list[PushChannelRecord]:
        """The stored channels of ``provider`` (only those of ``link_ids`` when given),
        oldest first (per link)."""
        table = db.push_channels
        query = select(table).where(table.c.provider == provider)
        with self._db.transaction() as conn:
            if link_ids is None:
                rows = conn.execute(query.order_by(table.c.updated_at)).all()
            else:
                wanted = sorted(set(link_ids))
                rows = []
                for start in range(0, len(wanted), LINK_CHUNK):
                    chunk = wanted[start:start + LINK_CHUNK]
                    rows += conn.execute(
                        query.where(table.c.link_id.in_(chunk)).order_by(table.c.updated_at)
                    ).all()
        return [_record(row) for row in rows]

    def delete_push_channel(self, provider: str, channel_id: str) -> None:
        table = db.push_channels
        with self._db.transaction(write=True, action="cannot delete push channel") as conn:
            links = conn.execute(
                delete(table)
                .where(table.c.provider == provider, table.c.channel_id == channel_id)
                .returning(table.c.link_id)
            ).scalars().all()
            _announce(conn, provider, links)

    def expire_push_channel(self, provider: str, channel_id: str) -> None:
        """Mark a channel due for renewal now (a lifecycle event reached a process that
        does not tend it; its owner renews it on its next look)."""
        table = db.push_channels
        with self._db.transaction(write=True, action="cannot update push channel") as conn:
            links = conn.execute(
                update(table)
                .where(table.c.provider == provider, table.c.channel_id == channel_id)
                .values(expires_at=datetime.now(UTC), updated_at=datetime.now(UTC))
                .returning(table.c.link_id)
            ).scalars().all()
            _announce(conn, provider, links)

    def take_push_message(self, provider: str, channel_id: str, number: int) -> bool | None:
        """Record message ``number`` of a channel: True when it is above every number
        seen before (by any process), False when not (a replay), None when the channel
        has no row. One conditional ``UPDATE``: two processes never both win a number."""
        table = db.push_channels
        key = and_(table.c.provider == provider, table.c.channel_id == channel_id)
        with self._db.transaction(write=True, action="cannot record push message") as conn:
            taken = conn.execute(
                update(table)
                .where(key, or_(table.c.last_message.is_(None), table.c.last_message < number))
                .values(last_message=number)
            ).rowcount
            if taken:
                return True
            exists = conn.execute(select(table.c.channel_id).where(key)).first()
        return False if exists is not None else None


def _announce(conn: Connection, provider: str, link_ids: Collection[int]) -> None:
    """``NOTIFY pbxcal_push`` per link (PostgreSQL only; delivered at commit)."""
    if conn.dialect.name != "postgresql":
        return  # SQLite: one process, which knows its own writes
    for link_id in sorted(set(link_ids)):
        conn.execute(
            text(f"SELECT pg_notify('{CHANGES_CHANNEL}', :payload)"),
            {"payload": f"{provider} {link_id}"},
        )


def _record(row: Row[Any]) -> PushChannelRecord:
    return PushChannelRecord(
        provider=row.provider,
        channel_id=row.channel_id,
        link_id=row.link_id,
        token_digest=bytes(row.token_digest),
        resource_id=row.resource_id,
        expires_at=row.expires_at,
        owner=row.owner,
    )
