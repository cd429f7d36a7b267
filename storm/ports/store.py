"""Store port: a unit of work over repositories (cosmicpython), durable state in SQL.

Rules every adapter follows (guarded by tests/contract/test_store_contract.py):

* ``async with store.unit_of_work() as uow`` opens a transaction that rolls back unless ``await
  uow.commit()`` was called.  Events to publish after commit are collected on ``uow.events``.
* ``store.unit_of_work(read_only=True)`` reads without a transaction: each statement sees what was
  committed when it ran (no snapshot shared by two statements), nothing may be written (a write raises
  :class:`ReadOnlyError`, and so does ``commit()``).  On PostgreSQL/CockroachDB it saves the ``BEGIN`` and
  ``ROLLBACK`` round trips; use it for lookups whose statements need not agree with each other
  (docs/database.md "Reads without a transaction").
* Every tenant-owned query takes the workspace id as its first argument, and never returns rows of
  another workspace even when given another workspace's row id.
* ``store.run(fn)`` runs ``fn(uow)`` in a fresh unit of work, commits, and retries the whole function on
  serialization failures (SQLSTATE 40001, CockroachDB's "restart transaction") with jittered backoff.
* Unique-key violations raise :class:`storm.errors.Conflict`; connection failures raise
  :class:`storm.errors.Unavailable`.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from storm.domain import Channel, Membership, Message, Reaction, ReadMarker, Role, User, Workspace
from storm.webhooks import DeliveryAttempt, DeliveryStatus, IncomingWebhook, Webhook

T = TypeVar("T")


class WorkspaceRepository(Protocol):
    async def add(self, workspace: Workspace) -> None: ...

    async def get(self, workspace_id: uuid.UUID) -> Workspace | None: ...

    async def get_by_slug(self, slug: str) -> Workspace | None: ...

    async def list(self, *, limit: int = 100, after_slug: str | None = None) -> builtins.list[Workspace]:
        """Workspaces ordered by slug, ``after_slug`` exclusive (cursor)."""
        ...

    async def list_for_user(self, user_id: uuid.UUID) -> builtins.list[Workspace]: ...

    async def delete(self, workspace_id: uuid.UUID) -> None:
        """Delete the workspace and every row it owns (memberships, channels, messages, …)."""
        ...


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...

    async def get(self, user_id: uuid.UUID) -> User | None: ...

    async def get_by_subject(self, subject: str) -> User | None: ...

    async def get_many(self, user_ids: Sequence[uuid.UUID]) -> list[User]: ...

    async def get_many_by_subject(self, subjects: Sequence[str]) -> list[User]:
        """The users of those subjects, in no particular order; unknown subjects are left out."""
        ...


class MembershipRepository(Protocol):
    async def add(self, membership: Membership) -> None: ...

    async def get(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None: ...

    async def get_many(self, workspace_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> builtins.list[Membership]:
        """The memberships of those users in the workspace, in no particular order; non-members left out."""
        ...

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Membership]: ...

    async def count(self, workspace_id: uuid.UUID) -> int: ...

    async def set_role(self, workspace_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None: ...

    async def remove(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Also removes the user from the workspace's private channels."""
        ...


class ChannelRepository(Protocol):
    async def add(self, channel: Channel) -> None:
        """Raises Conflict when the workspace already has a channel of that name."""
        ...

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Channel | None: ...

    async def get_by_name(self, workspace_id: uuid.UUID, name: str) -> Channel | None: ...

    async def list(self, workspace_id: uuid.UUID, *, include_archived: bool = False) -> builtins.list[Channel]: ...

    async def count(self, workspace_id: uuid.UUID) -> int: ...

    async def archive(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> None: ...

    async def add_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Idempotent."""
        ...

    async def remove_member(
        self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID
    ) -> None: ...

    async def is_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> bool: ...

    async def list_members(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> builtins.list[uuid.UUID]: ...

    async def list_for_user(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> builtins.list[Channel]:
        """Channels the user can see: public ones and private ones they belong to (not archived)."""
        ...


class MessageRepository(Protocol):
    async def add_many(self, messages: Sequence[Message]) -> int:
        """Insert messages, skipping any whose id (or (channel, offset)) exists: idempotent.  Returns the
        number of new rows."""
        ...

    async def get(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> Message | None: ...

    async def edit(self, workspace_id: uuid.UUID, message_id: uuid.UUID, body: str, edited_at: Any) -> bool:
        """False when there is no such message in the workspace."""
        ...

    async def delete(self, workspace_id: uuid.UUID, message_id: uuid.UUID, deleted_at: Any) -> bool:
        """Soft delete: the body is cleared and ``deleted_at`` set.  False when absent."""
        ...

    async def find_by_cmid(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, author_id: uuid.UUID,
                           cmid: str) -> Message | None:
        """The author's earliest stored message with this client message id in the channel, if any."""
        ...

    async def page(
        self, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None, limit: int
    ) -> list[Message]:
        """Newest first: messages with ``offset < before`` (all when None), at most ``limit``."""
        ...


class ReactionRepository(Protocol):
    async def add(self, reaction: Reaction) -> bool:
        """Idempotent; True when it was new."""
        ...

    async def remove(self, reaction: Reaction) -> bool: ...

    async def counts(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, int]]: ...

    async def mine(
        self, workspace_id: uuid.UUID, user_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, builtins.list[str]]:
        """The emojis the user reacted with, per message (sorted; messages without any are absent)."""
        ...

    async def reactors(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[uuid.UUID, builtins.list[str]]]:
        """Every reaction on the messages: message -> user -> emojis (sorted; messages without any are
        absent).  What a gateway reads once for a history page many readers share, so that each reader's
        own reactions need no query (storm/protocol/chat.py, ``SharedPages``)."""
        ...


UNREAD_MAX = 1000  # unread counts stop here ("1000 or more"): a count never scans more of a channel than this
NO_HEAD = 2**63 - 1  # a head above every offset (a signed 64-bit integer, as stored): "count them all"


class ReadMarkerRepository(Protocol):
    async def advance(self, marker: ReadMarker) -> int:
        """Move the marker forward (never back); returns the stored offset."""
        ...

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> int: ...

    async def unread(
        self, workspace_id: uuid.UUID, user_id: uuid.UUID, channel_ids: Sequence[uuid.UUID], *,
        cap: int = UNREAD_MAX,
    ) -> dict[uuid.UUID, tuple[int, int]]:
        """Per channel: (the user's marker, 0 when none; the stored messages of other users with a greater
        offset that are not deleted, at most ``cap``).  Every channel asked for is in the result."""
        ...

    async def unread_at(
        self, workspace_id: uuid.UUID, wanted: Sequence[tuple[uuid.UUID, uuid.UUID, int]], *,
        cap: int = UNREAD_MAX,
    ) -> list[tuple[int, int]]:
        """For each ``(user, channel, head)``, in order: (the user's marker in the channel, 0 when none; the
        stored, not deleted messages of other users with ``marker < offset <= head``, at most ``cap``: a
        user who never read a channel of a million messages costs a count of ``cap``, not of a million).
        What a subscribe answers (``subscribed.read``/``unread``): records above ``head`` reach the
        subscriber live.  For many subscribes at once: a fixed number of statements, not two per pair."""
        ...


class WebhookRepository(Protocol):
    """Outgoing webhooks, incoming webhooks and the delivery log (docs/tenants-api.md "Webhooks")."""

    async def add(self, webhook: Webhook) -> None: ...

    async def get(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook | None: ...

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Webhook]:
        """Oldest first."""
        ...

    async def remove(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> bool:
        """Also drops its delivery log.  False when absent."""
        ...

    async def add_incoming(self, hook: IncomingWebhook) -> None: ...

    async def get_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> IncomingWebhook | None: ...

    async def list_incoming(self, workspace_id: uuid.UUID) -> builtins.list[IncomingWebhook]: ...

    async def remove_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> bool: ...

    async def log_delivery(self, attempt: DeliveryAttempt) -> None: ...

    async def prune_deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, before: datetime) -> int:
        """Drop the webhook's delivery-log entries older than ``before``; returns how many."""
        ...

    async def deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, *, limit: int,
                         status: DeliveryStatus | None = None) -> builtins.list[DeliveryAttempt]:
        """Newest first, at most ``limit``; only those of ``status`` when given."""
        ...


class ReadOnlyError(RuntimeError):
    """A write (or a commit) in a unit of work opened with ``read_only=True``: a programming error."""


class UnitOfWork(Protocol):
    # Read-only members (properties): an adapter's own repository classes satisfy them, and nobody swaps
    # a repository of an open unit of work.
    @property
    def workspaces(self) -> WorkspaceRepository: ...

    @property
    def users(self) -> UserRepository: ...

    @property
    def memberships(self) -> MembershipRepository: ...

    @property
    def channels(self) -> ChannelRepository: ...

    @property
    def messages(self) -> MessageRepository: ...

    @property
    def reactions(self) -> ReactionRepository: ...

    @property
    def read_markers(self) -> ReadMarkerRepository: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def events(self) -> list[Any]:
        """Events to publish once the unit of work committed (append to it)."""
        ...

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class Store(Protocol):
    async def start(self) -> None:
        """Connect (and for SQLite, create the file and run migrations when asked)."""
        ...

    async def stop(self) -> None: ...

    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork: ...

    async def run(self, fn: Callable[[UnitOfWork], Awaitable[T]], *, retries: int = 5) -> T:
        """Run ``fn`` in a unit of work, commit, retry on serialization failure; returns fn's result."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable when the database cannot be reached (used by /healthz)."""
        ...


# -- optional capabilities (centrifuge's small interfaces; callers check with isinstance) -------------------
@runtime_checkable
class CountsRetries(Protocol):
    """A store that counts the attempts :meth:`Store.run` ran again after a serialization failure."""

    @property
    def serialization_retries(self) -> int: ...
