"""Customer portal and admin API: invitations, admin tokens, audit log, OAuth flows.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pbxcal.store.schema import UtcDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("extension", sa.Text, nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
        sa.Column("link_id", sa.Integer),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.UniqueConstraint("token_hash", name="uq_invitations_token_hash"),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name="fk_invitations_link_id_links", ondelete="SET NULL"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("pbxes", sa.JSON),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("revoked_at", UtcDateTime),
        sa.Column("last_used_at", UtcDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
        sa.UniqueConstraint("name", name="uq_admin_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_admin_tokens_token_hash"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("remote", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "portal_flows",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("state_hash", sa.Text, nullable=False),
        sa.Column("invitation_id", sa.Integer, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_portal_flows"),
        sa.UniqueConstraint("state_hash", name="uq_portal_flows_state_hash"),
        sa.ForeignKeyConstraint(
            ["invitation_id"],
            ["invitations.id"],
            name="fk_portal_flows_invitation_id_invitations",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("portal_flows")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("admin_tokens")
    op.drop_table("invitations")
