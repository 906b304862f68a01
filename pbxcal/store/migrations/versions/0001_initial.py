"""Initial schema: links, synced events and sync state, applied state per PBX, sync log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("extension", sa.Text, nullable=False),
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_links"),
        sa.UniqueConstraint("extension", "pbx", "source", name="uq_links_extension_pbx_source"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_links_origin", "links", ["origin"])

    op.create_table(
        "events",
        sa.Column("link_id", sa.Integer, nullable=False),
        sa.Column("uid", sa.Text, nullable=False),
        sa.Column("recurrence_id", sa.Text, nullable=False),
        sa.Column("ical", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("link_id", "uid", "recurrence_id", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_events_link_id_links", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "sync_state",
        sa.Column("link_id", sa.Integer, nullable=False),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.Text),
        sa.Column("sync_token", sa.Text),
        sa.Column("calendar_tz", sa.Text),
        sa.Column("timezones", sa.Text, nullable=False),
        sa.Column("fetched_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("link_id", name="pk_sync_state"),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_sync_state_link_id_links", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "applied",
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("extension", sa.Text, nullable=False),
        sa.Column("targets", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("pbx", "extension", name="pk_applied"),
    )

    op.create_table(
        "sync_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("link_id", sa.Integer, nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("rejected", sa.JSON, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sync_log"),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_sync_log_link_id_links", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_sync_log_link_id_at_id", "sync_log", ["link_id", "at", "id"])


def downgrade() -> None:
    op.drop_table("sync_log")
    op.drop_table("applied")
    op.drop_table("sync_state")
    op.drop_table("events")
    op.drop_table("links")
