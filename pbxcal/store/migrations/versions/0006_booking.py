"""Agents, agent groups and bookings, with double booking made impossible by the database.

Revision ID: 0006
Revises: 0005

Two confirmed bookings of one agent never overlap, whatever number of threads or
processes insert at once: on PostgreSQL an exclusion constraint (GiST over the agent
and the booking's time range, ``btree_gist`` for the ``=`` on text); on SQLite, which
serialises writers, triggers that abort an insert or update that would overlap.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_OVERLAP = (
    "SELECT RAISE(ABORT, 'booking overlaps a confirmed booking of the agent') "
    "WHERE EXISTS (SELECT 1 FROM bookings b WHERE b.agent_id = NEW.agent_id "
    "AND b.status = 'confirmed' AND b.id IS NOT NEW.id "
    "AND b.start_at < NEW.end_at AND b.end_at > NEW.start_at)"
)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("extension", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("booking_link_id", sa.Integer),
        sa.Column("conflict_link_ids", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.ForeignKeyConstraint(
            ["booking_link_id"],
            ["links.id"],
            name="fk_agents_booking_link_id_links",
            ondelete="SET NULL",
        ),
    )
    op.create_table(
        "agent_groups",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("members", sa.JSON, nullable=False),
        sa.Column("rr_counter", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_groups"),
    )
    op.create_table(
        "bookings",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("start_at", UtcDateTime, nullable=False),
        sa.Column("end_at", UtcDateTime, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("guest_name", sa.Text, nullable=False),
        sa.Column("guest_email", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("uid", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("manage_token_hash", sa.Text, nullable=False),
        sa.Column("provider_event_id", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("reminded_at", UtcDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_bookings"),
        sa.UniqueConstraint("uid", name="uq_bookings_uid"),
        sa.UniqueConstraint("manage_token_hash", name="uq_bookings_manage_token_hash"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_bookings_agent_id_agents", ondelete="CASCADE"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bookings_agent_id_start_at", "bookings", ["agent_id", "start_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE bookings ADD CONSTRAINT ex_bookings_no_overlap "
            "EXCLUDE USING gist (agent_id WITH =, tstzrange(start_at, end_at) WITH &&) "
            "WHERE (status = 'confirmed')"
        )
    else:
        op.execute(
            "CREATE TRIGGER bookings_no_overlap_insert BEFORE INSERT ON bookings "
            f"WHEN NEW.status = 'confirmed' BEGIN {_OVERLAP}; END"
        )
        op.execute(
            "CREATE TRIGGER bookings_no_overlap_update "
            "BEFORE UPDATE OF agent_id, start_at, end_at, status ON bookings "
            f"WHEN NEW.status = 'confirmed' BEGIN {_OVERLAP}; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TRIGGER IF EXISTS bookings_no_overlap_update")
        op.execute("DROP TRIGGER IF EXISTS bookings_no_overlap_insert")
    op.drop_index("ix_bookings_agent_id_start_at", table_name="bookings")
    op.drop_table("bookings")
    op.drop_table("agent_groups")
    op.drop_table("agents")
