"""Tables of the SQL store (SQLAlchemy 2.0 declarative).  See docs/database.md.

Portable across SQLite (dev, tests), PostgreSQL (tests) and CockroachDB (production), so:

* keys are UUIDs (``Uuid``: native UUID on PostgreSQL/CockroachDB, CHAR(32) on SQLite); no SERIAL and
  no sequences, because sequential keys make one hot range in CockroachDB;
* enums are plain strings guarded by CHECK constraints (no PostgreSQL ENUM types);
* every tenant-owned table carries ``workspace_id`` and leads its keys with it, so a tenant's rows sit
  together and every query can filter on it.

The migration ``db/migrations/versions/0001_initial.py`` spells the same DDL out by hand;
tests/integration/test_migrations.py checks that the two agree.  The adapter queries these tables with
Core statements (``Row.__table__``) and maps rows to the frozen dataclasses of :mod:`storm.domain`; the ORM
classes are never handed out.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit names make constraints addressable by later migrations and by the Conflict messages
# (db/errors.py) on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("owner", "admin", "member")  # storm.domain.Role
CHANNEL_KINDS = ("public", "private", "direct")  # storm.domain.ChannelKind


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _ts(*, nullable: bool = False) -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    plan: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = _ts()


class UserRow(Base):
    """Users are global (one identity, many workspaces); they are not deleted with a workspace."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime] = _ts()


class MembershipRow(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "user_id"),
        CheckConstraint(_in("role", ROLES), name="role"),
        # workspaces.list_for_user looks memberships up by user across workspaces.
        Index(None, "user_id"),
    )

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _ts()


class ChannelRow(Base):
    __tablename__ = "channels"
    __table_args__ = (
        # Also the index behind get_by_name and list (ordered by name).
        UniqueConstraint("workspace_id", "name"),
        CheckConstraint(_in("kind", CHANNEL_KINDS), name="kind"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    archived: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = _ts()


class ChannelMemberRow(Base):
    __tablename__ = "channel_members"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "channel_id", "user_id"),
        # channels.list_for_user and memberships.remove look members up by (workspace, user).
        Index(None, "workspace_id", "user_id"),
    )

    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    channel_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    channel_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    author_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    # "offset" is a reserved word; SQLAlchemy and the migration quote it.
    offset: Mapped[int] = mapped_column("offset", BigInteger, nullable=False)
    client_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    thread_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = _ts()
    edited_at: Mapped[datetime | None] = _ts(nullable=True)
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)


# One unique index does two jobs: the broker assigns each offset once per channel (a replayed batch is
# skipped by ON CONFLICT DO NOTHING), and history pages (newest first) walk it in order.
Index("uq_messages_channel_offset", MessageRow.workspace_id, MessageRow.channel_id, MessageRow.offset.desc(),
      unique=True)
# Settling a publish whose outcome is unknown (storm/protocol/claims.py) looks the client message id up.
Index("ix_messages_cmid", MessageRow.workspace_id, MessageRow.channel_id, MessageRow.author_id,
      MessageRow.client_msg_id)


class ReactionRow(Base):
    __tablename__ = "reactions"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "message_id", "user_id", "emoji"),)

    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    emoji: Mapped[str] = mapped_column(String(64), nullable=False)


class ReadMarkerRow(Base):
    __tablename__ = "read_markers"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "channel_id", "user_id"),)

    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    channel_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    offset: Mapped[int] = mapped_column("offset", BigInteger, nullable=False)


class WebhookRow(Base):
    """An outgoing webhook (storm/webhooks.py).  ``events`` and ``channels`` are comma-separated lists
    (portable: no arrays, no JSON columns); an empty ``channels`` means every channel."""

    __tablename__ = "webhooks"
    __table_args__ = (Index(None, "workspace_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    events: Mapped[str] = mapped_column(Text, nullable=False)
    channels: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = _ts()


class IncomingWebhookRow(Base):
    __tablename__ = "incoming_webhooks"
    __table_args__ = (Index(None, "workspace_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
    )
    channel_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    bot_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False)  # hex SHA-256; never the token
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = _ts()


DELIVERY_STATUSES = ("delivered", "failed", "dead_lettered")  # storm.webhooks.DeliveryStatus


class WebhookDeliveryRow(Base):
    """One attempt to POST one event to one webhook: the delivery log an admin reads."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        # the log is read per webhook, newest first
        Index(None, "workspace_id", "webhook_id", "at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    webhook_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = _ts()


metadata = Base.metadata



def _table(row: type[Base]) -> Table:
    """The row class's ``Table`` (declarative types ``__table__`` as the wider ``FromClause``)."""
    table = row.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{row.__name__} is not mapped to a plain Table")
    return table


# Core handles for the repositories.
workspaces = _table(WorkspaceRow)
users = _table(UserRow)
memberships = _table(MembershipRow)
channels = _table(ChannelRow)
channel_members = _table(ChannelMemberRow)
messages = _table(MessageRow)
reactions = _table(ReactionRow)
read_markers = _table(ReadMarkerRow)
webhooks = _table(WebhookRow)
incoming_webhooks = _table(IncomingWebhookRow)
webhook_deliveries = _table(WebhookDeliveryRow)

# Every table holding a workspace's rows, children first: workspaces.delete removes them in this order
# (explicit DELETEs, because SQLite does not enforce the ON DELETE CASCADE foreign keys by default and
# most of these tables have no foreign key at all).
TENANT_TABLES = (webhook_deliveries, webhooks, incoming_webhooks, reactions, read_markers, messages,
                 channel_members, channels, memberships)
