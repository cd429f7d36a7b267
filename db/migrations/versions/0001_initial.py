"""Initial schema: workspaces, users, memberships, channels, channel members, messages, reactions,
read markers.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Portable DDL only (SQLite, PostgreSQL, CockroachDB): UUID keys, no ENUM types, sequences or triggers;
enums are strings guarded by CHECK constraints.  Constraint names follow db.models.NAMING_CONVENTION, and
tests/integration/test_migrations.py checks this script against db/models.py.  Written out by hand rather
than with ``metadata.create_all`` so that it stays what it was when the models change.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("slug", sa.String(40), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("plan", sa.String(32), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_workspaces"),
        sa.UniqueConstraint("slug", name="uq_workspaces_slug"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("subject", name="uq_users_subject"),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("workspace_id", "user_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE",
                                name="fk_memberships_workspace_id_workspaces"),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name="ck_memberships_role"),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"])
    op.create_table(
        "channels",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_channels_workspace_id_name"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE",
                                name="fk_channels_workspace_id_workspaces"),
        sa.CheckConstraint("kind IN ('public', 'private', 'direct')", name="ck_channels_kind"),
    )
    op.create_table(
        "channel_members",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "channel_id", "user_id", name="pk_channel_members"),
    )
    op.create_index("ix_channel_members_workspace_id_user_id", "channel_members", ["workspace_id", "user_id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel_id", sa.Uuid(), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("client_msg_id", sa.String(64), nullable=True),
        sa.Column("thread_id", sa.Uuid(), nullable=True),
        _ts("created_at"),
        _ts("edited_at", nullable=True),
        _ts("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    # Unique per channel and the index of history pages, newest first.
    op.create_index("uq_messages_channel_offset", "messages",
                    ["workspace_id", "channel_id", sa.text('"offset" DESC')], unique=True)
    op.create_table(
        "reactions",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("emoji", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "message_id", "user_id", "emoji", name="pk_reactions"),
    )
    op.create_table(
        "read_markers",
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("channel_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "channel_id", "user_id", name="pk_read_markers"),
    )


def downgrade() -> None:
    op.drop_table("read_markers")
    op.drop_table("reactions")
    op.drop_index("uq_messages_channel_offset", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_channel_members_workspace_id_user_id", table_name="channel_members")
    op.drop_table("channel_members")
    op.drop_table("channels")
    op.drop_index("ix_memberships_user_id", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("users")
    op.drop_table("workspaces")
