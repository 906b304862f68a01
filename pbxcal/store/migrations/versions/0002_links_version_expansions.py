"""A link-change counter for the link watcher, and one saved expansion per link.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    version = op.create_table(
        "links_version",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_links_version"),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])

    op.create_table(
        "expansions",
        sa.Column("link_id", sa.Integer, nullable=False),
        sa.Column("range_start", UtcDateTime, nullable=False),
        sa.Column("range_end", UtcDateTime, nullable=False),
        sa.Column("computed_at", UtcDateTime, nullable=False),
        sa.Column("instances", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("link_id", name="pk_expansions"),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_expansions_link_id_links", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("expansions")
    op.drop_table("links_version")
