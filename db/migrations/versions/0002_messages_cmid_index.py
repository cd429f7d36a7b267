"""Index messages by client message id, per channel and author.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A publish whose outcome is unknown (the gateway died or the broker timed out between the cmid claim and
the ack) is settled by looking the cmid up in the store before reading the channel log
(storm/protocol/claims.py, docs/delivery.md "Effectively once").  A plain secondary index: portable to
SQLite, PostgreSQL and CockroachDB.
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_messages_cmid", "messages", ["workspace_id", "channel_id", "author_id", "client_msg_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_cmid", table_name="messages")
