"""Bookings keep their buffers apart in the database; the online meeting's join link.

Revision ID: 0009
Revises: 0008

Each booking gets ``blocked_start`` / ``blocked_end``: the meeting with the agent's
buffers before and after (filled by ``pbxcal.booking.service`` from the agent's settings
when it books or moves; rows of older versions get the meeting itself, which the old
rule already kept apart, so no existing row can break the new rule). The rule that two
confirmed bookings of an agent never overlap now holds for these blocked ranges, so the
gap between two booked meetings is at least the first one's after-buffer plus the
second one's before-buffer: on PostgreSQL the exclusion constraint
``ex_bookings_no_overlap`` is made again over ``tstzrange(blocked_start, blocked_end)``;
on SQLite the two triggers compare the blocked ranges. A CHECK keeps each blocked range
around its meeting. ``join_url`` (NULL: no online meeting) is the Meet or Teams link
the booking calendar answered.

On SQLite the NOT NULL and the CHECK need the table rebuilt (Alembic's batch mode);
the triggers are dropped before and made again after, and the table's AUTOINCREMENT
counter is carried over, so an id is never handed out twice.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_CHECK = "ck_bookings_blocked_range"
_COVERS = "blocked_start <= start_at AND end_at <= blocked_end"
_EXCLUDE = "ex_bookings_no_overlap"
_TRIGGERS = ("bookings_no_overlap_insert", "bookings_no_overlap_update")


def _sqlite_triggers(start: str, end: str) -> list[str]:
    """The two SQLite triggers refusing a confirmed booking whose ``[start, end)``
    columns overlap another confirmed booking's of the same agent."""
    overlap = (  # the column names are this module's constants
        "SELECT RAISE(ABORT, 'booking overlaps a confirmed booking of the agent') "  # noqa: S608
        "WHERE EXISTS (SELECT 1 FROM bookings b WHERE b.agent_id = NEW.agent_id "
        "AND b.status = 'confirmed' AND b.id IS NOT NEW.id "
        f"AND b.{start} < NEW.{end} AND b.{end} > NEW.{start})"
    )
    return [
        f"CREATE TRIGGER {_TRIGGERS[0]} BEFORE INSERT ON bookings "
        f"WHEN NEW.status = 'confirmed' BEGIN {overlap}; END",
        f"CREATE TRIGGER {_TRIGGERS[1]} BEFORE UPDATE OF agent_id, {start}, {end}, status "
        f"ON bookings WHEN NEW.status = 'confirmed' BEGIN {overlap}; END",
    ]


def _postgresql_exclusion(start: str, end: str) -> str:
    return (
        f"ALTER TABLE bookings ADD CONSTRAINT {_EXCLUDE} EXCLUDE USING gist "
        f"(agent_id WITH =, tstzrange({start}, {end}) WITH &&) WHERE (status = 'confirmed')"
    )


def _sqlite_sequence() -> int | None:
    """The bookings table's AUTOINCREMENT counter (None: no row handed out yet)."""
    value = (
        op.get_bind()
        .execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'bookings'"))
        .scalar()
    )
    return None if value is None else int(value)


def _restore_sqlite_sequence(value: int | None) -> None:
    if value is None:
        return
    bind = op.get_bind()
    changed = bind.execute(
        sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = 'bookings'"), {"seq": value}
    ).rowcount
    if not changed:
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('bookings', :seq)"),
            {"seq": value},
        )


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("bookings", sa.Column("blocked_start", UtcDateTime, nullable=True))
    op.add_column("bookings", sa.Column("blocked_end", UtcDateTime, nullable=True))
    op.add_column("bookings", sa.Column("join_url", sa.Text, nullable=True))
    op.execute("UPDATE bookings SET blocked_start = start_at, blocked_end = end_at")
    if not sqlite:
        op.execute(f"ALTER TABLE bookings DROP CONSTRAINT {_EXCLUDE}")
        op.alter_column("bookings", "blocked_start", nullable=False)
        op.alter_column("bookings", "blocked_end", nullable=False)
        op.create_check_constraint(op.f(_CHECK), "bookings", _COVERS)
        op.execute(_postgresql_exclusion("blocked_start", "blocked_end"))
        return
    sequence = _sqlite_sequence()
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    with op.batch_alter_table(
        "bookings", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.alter_column("blocked_start", existing_type=UtcDateTime, nullable=False)
        batch.alter_column("blocked_end", existing_type=UtcDateTime, nullable=False)
        batch.create_check_constraint(op.f(_CHECK), _COVERS)
    for statement in _sqlite_triggers("blocked_start", "blocked_end"):
        op.execute(statement)
    _restore_sqlite_sequence(sequence)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute(f"ALTER TABLE bookings DROP CONSTRAINT {_EXCLUDE}")
        op.drop_constraint(op.f(_CHECK), "bookings", type_="check")
        for column in ("join_url", "blocked_end", "blocked_start"):
            op.drop_column("bookings", column)
        op.execute(_postgresql_exclusion("start_at", "end_at"))
        return
    sequence = _sqlite_sequence()
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    with op.batch_alter_table(
        "bookings", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        for column in ("join_url", "blocked_end", "blocked_start"):
            batch.drop_column(column)
    for statement in _sqlite_triggers("start_at", "end_at"):
        op.execute(statement)
    _restore_sqlite_sequence(sequence)
