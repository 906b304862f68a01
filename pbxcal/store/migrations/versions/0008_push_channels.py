"""Push channels in the store (Google channels, Graph subscriptions), so the webhook of any
process can check a notification; see ``pbxcal.store.push_channels``.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "push_channels",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("channel_id", sa.Text, nullable=False),
        sa.Column("link_id", sa.Integer, nullable=False),
        sa.Column("token_digest", sa.LargeBinary, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("last_message", sa.BigInteger, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_push_channels_link_id_links", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("provider", "channel_id", name="pk_push_channels"),
    )
    op.create_index("ix_push_channels_link_id", "push_channels", ["link_id"])


def downgrade() -> None:
    op.drop_index("ix_push_channels_link_id", table_name="push_channels")
    op.drop_table("push_channels")
