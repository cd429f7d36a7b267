"""Request and response models of the tenants API (pydantic v2).  See docs/tenants-api.md.

Request models are strict about shape: unknown fields are refused (``extra="forbid"``), strings have
length bounds and patterns, and enumerations are closed.  Patterns are evaluated by pydantic-core's
regex engine, where ``$`` means end of text (so ``"abc\\n"`` is not a valid slug).  Display names refuse
control characters: they end up in logs, UIs and PostgreSQL ``text`` columns (which refuse NUL).
Response models are plain descriptions for the OpenAPI document; handlers build them directly.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from storm.domain import CHANNEL_NAME_RE, SLUG_RE

# -- shared field types -----------------------------------------------------------------------------------
Slug = Annotated[str, StringConstraints(pattern=SLUG_RE.pattern)]
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME_RE.pattern)]
# At least one visible character, no C0 control characters or DEL.
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=80,
                                               pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s\x00-\x1f\x7f]+$")]
PlanName = Literal["free", "pro", "enterprise"]
RoleName = Literal["owner", "admin", "member"]
KindName = Literal["public", "private", "direct"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests --------------------------------------------------------------------------------------------
class WorkspaceCreate(_Request):
    slug: Slug = Field(description="Lower-case letters, digits and dashes; 3..40 characters.")
    name: DisplayName
    plan: PlanName = "free"


class MemberAdd(_Request):
    subject: Subject = Field(description="Identity-provider subject, e.g. `dev|bob`.")
    name: DisplayName | None = Field(default=None, description="Display name if the user is new.")
    role: RoleName = "member"


class MemberBulkAdd(_Request):
    members: list[MemberAdd] = Field(min_length=1, max_length=1000,
                                     description="1 to 1000 members, distinct subjects; all or nothing.")


class MemberUpdate(_Request):
    role: RoleName


class ChannelCreate(_Request):
    name: ChannelName | None = Field(default=None, description="Required unless kind is `direct`.")
    kind: KindName = "public"
    members: list[uuid.UUID] | None = Field(
        default=None, max_length=1000,
        description="Private: initial members besides the creator.  Direct: exactly the one other user.")


class ChannelMemberAdd(_Request):
    user_id: uuid.UUID


class ChannelListQuery(_Request):
    include_archived: bool = False


class HistoryQuery(_Request):
    limit: int | None = Field(default=None, description="1..STORM_HISTORY_PAGE_MAX (default 50).")
    cursor: str | None = Field(default=None, max_length=64, description="`next_cursor` of the previous page.")


# -- responses --------------------------------------------------------------------------------------------
class Health(BaseModel):
    """`status` is "ok" (200) or "unavailable" (503: the store does not answer)."""

    status: str


class NoContent(BaseModel):
    """No content: the response has no body."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WorkspaceOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    created_at: str = Field(description="ISO 8601, UTC.")
    role: RoleName = Field(description="The caller's role in the workspace.")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceOut]


class MemberOut(BaseModel):
    user_id: uuid.UUID
    name: str
    role: RoleName


class MemberList(BaseModel):
    members: list[MemberOut]


class ChannelOut(BaseModel):
    id: uuid.UUID
    name: str
    kind: KindName
    archived: bool
    created_by: uuid.UUID | None
    created_at: str


class ChannelList(BaseModel):
    channels: list[ChannelOut]


class ChannelMemberList(BaseModel):
    members: list[uuid.UUID]


class MessageOut(BaseModel):
    id: uuid.UUID
    offset: int
    author: uuid.UUID
    author_name: str
    text: str
    ts: float = Field(description="Epoch seconds.")
    cmid: str | None
    thread: uuid.UUID | None
    edited_ts: float | None
    deleted: bool
    reactions: dict[str, int]
    mine: list[str] = Field(default_factory=list, description="The emojis of `reactions` the caller reacted with.")


class HistoryPage(BaseModel):
    messages: list[MessageOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for older messages; null at the start.")
    offset: int = Field(default=0, description="The channel offset the page reflects: resume the WebSocket "
                        "with subscribe{since: offset}.")


class ChannelUnread(BaseModel):
    channel: uuid.UUID
    read: int = Field(description="The caller's read marker (last offset read; 0: none).")
    unread: int = Field(description="Stored messages of others after `read`, not deleted.")


class UnreadList(BaseModel):
    channels: list[ChannelUnread]


class PresenceUser(BaseModel):
    id: str
    name: str


class PresenceList(BaseModel):
    users: list[PresenceUser]
