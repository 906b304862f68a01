"""Several processes on one PostgreSQL: members, leases with fencing epochs, PBX epochs.

Revision ID: 0005
Revises: 0004

The tables are made on SQLite too (one schema everywhere) but only used on PostgreSQL;
see ``pbxcal.cluster`` and docs/cluster.md.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("alive_since", UtcDateTime, nullable=False),
        sa.Column("heartbeat_at", UtcDateTime, nullable=False),
        sa.Column("ttl", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("member_id", name="pk_members"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", UtcDateTime, nullable=False),
        sa.Column("renewed_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "pbx_epochs",
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("written_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("pbx", name="pk_pbx_epochs"),
    )


def downgrade() -> None:
    op.drop_table("pbx_epochs")
    op.drop_table("leases")
    op.drop_table("members")
