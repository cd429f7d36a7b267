"""Tenants service layer: workspaces, members, channels, history and presence.  No Quart in here.

Every function takes the :class:`~storm.bootstrap.Services` container and, once the caller is known, the
:class:`~storm.directory.Principal` acting in one workspace.  Failures are ``storm.errors`` exceptions;
the HTTP entrypoint (``tenants/api.py``) only maps them to responses.  Rules and their tests are listed
in docs/tenants-api.md.

Ordering habits (cosmicpython/zulip): state changes happen in one unit of work; the broker and the
directory cache are touched only after the commit, and the directory cache is invalidated after every
commit that changes memberships, roles or channels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from storm import revocation
from storm.bootstrap import Services
from storm.directory import Principal
from storm.domain import (
    PLANS,
    SLUG_RE,
    Channel,
    ChannelKind,
    Membership,
    Role,
    User,
    Workspace,
    direct_channel_name,
    new_id,
    utcnow,
)
from storm.errors import BadRequest, Conflict, Forbidden, NotFound, QuotaExceeded, Unavailable
from storm.ports.cache import PresenceEntry
from storm.ports.identity import Claims
from storm.ports.store import UnitOfWork
from storm.protocol import chat
from storm.protocol.events import HistoryMessage
from storm.protocol.quota import WORKSPACE_PRESENCE
from storm.webhooks import MEMBER_JOINED, MEMBER_LEFT
from tenants.webhooks import publish_member_events

log = logging.getLogger("storm.tenants")

CREATE_SCOPE = "workspaces:create"
DEFAULT_PAGE = 50
_CURSOR_RE = re.compile(r"o([1-9][0-9]{0,17})")


# -- views returned to the entrypoint -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkspaceView:
    workspace: Workspace
    role: Role


@dataclass(frozen=True, slots=True)
class MemberView:
    user_id: uuid.UUID
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class HistoryView:
    messages: list[HistoryMessage]  # newest first, built by storm/protocol/chat.py as for the WebSocket
    next_cursor: str | None
    offset: int = 0  # the channel offset the page reflects (resume the WebSocket from it)


# -- authorisation ---------------------------------------------------------------------------------------
async def authorize(services: Services, claims: Claims, slug: str) -> Principal:
    """The caller acting in workspace ``slug``.

    A token bound to another workspace gets Forbidden whether or not ``slug`` exists, so bound tokens
    cannot probe for other tenants; only a token that could access ``slug`` learns it does not exist.
    """
    if claims.workspace not in ("*", slug):
        raise Forbidden("token is not valid for this workspace", field="workspace")
    if not SLUG_RE.fullmatch(slug):
        raise NotFound("workspace not found", field="workspace")
    principal = await services.directory.principal(claims, slug)
    await revocation.check(services.cache, slug, claims)  # banned subject or logged-out token
    return principal


def _require(p: Principal, role: Role, action: str, *, field: str = "role") -> None:
    if not p.role.at_least(role):
        raise Forbidden(f"only an {role.value} or above may {action}", field=field)


# -- workspaces ------------------------------------------------------------------------------------------
async def create_workspace(
    services: Services, claims: Claims, *, slug: str, name: str, plan: str
) -> WorkspaceView:
    """Create a workspace with the caller as its owner, then its broker side.

    If the broker (or cache) step fails the rows are deleted again (compensation) and Unavailable is
    raised: a workspace is never left without its broker side.
    """
    if CREATE_SCOPE not in claims.scopes:
        raise Forbidden(f"token lacks the {CREATE_SCOPE} scope", field="scope")
    if claims.workspace not in ("*", slug):
        raise Forbidden("token is bound to another workspace", field="slug")
    if plan not in PLANS or not SLUG_RE.fullmatch(slug):
        raise BadRequest("invalid plan or slug", field="plan" if plan not in PLANS else "slug")
    user = await services.directory.resolve_user(claims)
    ws = Workspace(id=new_id(), slug=slug, name=name, plan=plan, created_at=utcnow())

    async def tx(uow: UnitOfWork) -> None:
        if await uow.workspaces.get_by_slug(slug) is not None:
            raise Conflict("a workspace with this slug exists", field="slug")
        await uow.workspaces.add(ws)
        await uow.memberships.add(Membership(ws.id, user.id, Role.OWNER))

    try:
        await services.store.run(tx)
    except Conflict as exc:  # includes the unique-key race between two creators
        raise Conflict("a workspace with this slug exists", field="slug") from exc
    try:  # the non-store sides; if either fails, nothing of the workspace may remain
        await services.broker.ensure_workspace(slug, PLANS[plan])
        await services.directory.forget_member(slug, user.id)  # a same-slug predecessor's cached "no"
    except BaseException as exc:
        await asyncio.shield(_undo_create(services, ws))
        if not isinstance(exc, Exception):  # cancellation: compensate, then let it propagate
            raise
        log.warning("workspace=%s setup failed, creation rolled back: %r", slug, exc)
        raise Unavailable("a backing service is unavailable; the workspace was not created") from exc
    return WorkspaceView(ws, Role.OWNER)


async def _undo_create(services: Services, ws: Workspace) -> None:
    try:
        await services.store.run(lambda uow: uow.workspaces.delete(ws.id))
    except Exception:
        log.exception("workspace=%s id=%s compensation failed: rows left without broker side; delete it",
                      ws.slug, ws.id)
    for step in (services.broker.delete_workspace, services.cache.drop_workspace):
        try:
            await step(ws.slug)
        except Exception as exc:  # the broker is the thing that just failed; best effort
            log.warning("workspace=%s compensation step %s failed: %r", ws.slug, step.__name__, exc)


async def list_workspaces(services: Services, claims: Claims) -> list[WorkspaceView]:
    """Workspaces the caller belongs to: all of them for a ``*`` token, else at most the bound one."""
    async with services.store.unit_of_work() as uow:
        user = await uow.users.get_by_subject(claims.subject)
        if user is None:
            return []
        if claims.workspace == "*":
            candidates = await uow.workspaces.list_for_user(user.id)
        else:
            bound = await uow.workspaces.get_by_slug(claims.workspace) if SLUG_RE.fullmatch(
                claims.workspace) else None
            candidates = [bound] if bound is not None else []
        views = []
        for ws in candidates:
            m = await uow.memberships.get(ws.id, user.id)
            if m is not None:
                views.append(WorkspaceView(ws, m.role))
    return sorted(views, key=lambda v: v.workspace.slug)


async def get_workspace(services: Services, p: Principal) -> WorkspaceView:
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get(p.workspace.id)
    if ws is None:
        raise NotFound("workspace not found", field="workspace")
    return WorkspaceView(ws, p.role)


async def delete_workspace(services: Services, p: Principal) -> None:
    """Owner only.  Store rows first (the source of truth), then the broker side, then cached entries.

    Once the rows are gone the workspace is gone for every caller; a failing broker or cache cleanup is
    logged for an operator and does not turn the delete into an error.
    """
    if p.role is not Role.OWNER:
        raise Forbidden("only an owner may delete the workspace", field="role")
    slug = p.workspace.slug
    await services.store.run(lambda uow: uow.workspaces.delete(p.workspace.id))
    # every member's open sockets, on every gateway, close with 4011 (before the broker side goes)
    await _close_sockets(services, slug, revocation.EVERYONE, revocation.WORKSPACE_DELETED)
    try:
        await services.broker.delete_workspace(slug)
    except Exception:
        log.exception("workspace=%s deleted but broker cleanup failed; its logs must be removed", slug)
    try:
        await services.cache.drop_workspace(slug)
    except Exception:
        log.exception("workspace=%s deleted but cache cleanup failed; entries expire by TTL", slug)


# -- members ---------------------------------------------------------------------------------------------
async def list_members(services: Services, p: Principal) -> list[MemberView]:
    async with services.store.unit_of_work() as uow:
        memberships = await uow.memberships.list(p.workspace.id)
        names = await _names(uow, [m.user_id for m in memberships])
    views = [MemberView(m.user_id, names.get(m.user_id, ""), m.role) for m in memberships]
    return sorted(views, key=lambda v: (-v.role.rank, v.name, v.user_id))


async def add_member(
    services: Services, p: Principal, *, subject: str, name: str | None, role: str
) -> MemberView:
    _require(p, Role.ADMIN, "add members")
    new_role = Role(role)
    if new_role is Role.OWNER and p.role is not Role.OWNER:
        raise Forbidden("only an owner may add an owner", field="role")
    ws = p.workspace
    user = await _user_for(services, subject, name)
    await _member_quota(services, ws)  # a snapshot read, outside the write (below)

    async def tx(uow: UnitOfWork) -> None:
        await uow.memberships.add(Membership(ws.id, user.id, new_role))

    try:
        await services.store.run(tx)
    except Conflict:
        raise Conflict("already a member of this workspace", field="subject") from None
    await services.directory.forget_member(ws.slug, user.id)
    await _member_quota(services, ws, added=user.id)
    await publish_member_events(services, ws, MEMBER_JOINED, [(user.id, user.name, new_role.value)])
    return MemberView(user.id, user.name, new_role)


async def add_members(
    services: Services, p: Principal, entries: Sequence[tuple[str, str | None, str]]
) -> list[MemberView]:
    """Bulk provisioning in one transaction, all or nothing: each ``(subject, name, role)`` becomes a member
    (its user created on first sight); one already a member is left as it is and listed with its role.
    The plan's quota counts the new ones."""
    _require(p, Role.ADMIN, "add members")
    roles = [Role(role) for _, _, role in entries]
    if Role.OWNER in roles and p.role is not Role.OWNER:
        raise Forbidden("only an owner may add an owner", field="role")
    if len({subject for subject, _, _ in entries}) != len(entries):
        raise BadRequest("each subject may be listed once", field="members")
    ws = p.workspace
    joined: list[MemberView] = []  # for the member.joined webhook events, once committed

    async def tx(uow: UnitOfWork) -> list[MemberView]:
        views: list[MemberView] = []
        joined.clear()  # store.run may run this again
        added = 0
        for (subject, name, _), role in zip(entries, roles, strict=True):
            user = await uow.users.get_by_subject(subject)
            if user is None:
                user = User(id=new_id(), subject=subject, name=name or subject.split("|")[-1][:80] or subject[:80])
                await uow.users.add(user)
                current = None
            else:
                current = await uow.memberships.get(ws.id, user.id)
            if current is None:
                await uow.memberships.add(Membership(ws.id, user.id, role))
                added += 1
                joined.append(MemberView(user.id, user.name, role))
            views.append(MemberView(user.id, user.name, current.role if current else role))
        if added and await uow.memberships.count(ws.id) > ws.quotas.max_members:
            raise QuotaExceeded(f"the {ws.plan} plan allows {ws.quotas.max_members} members", field="members")
        return views

    views = await services.store.run(tx)
    for view in views:
        await services.directory.forget_member(ws.slug, view.user_id)
    await publish_member_events(services, ws, MEMBER_JOINED, [(v.user_id, v.name, v.role.value) for v in joined])
    return views


# Membership writes under SERIALIZABLE (PostgreSQL here, CockroachDB in production): a transaction that
# reads the workspace's memberships (a count for the quota, a lookup) and then inserts one conflicts with
# every concurrent transaction doing the same, so concurrent adds to one workspace aborted one another
# until their retries ran out (503).  So the write transaction only inserts: the user is found or created
# on its own (insert first, read on a conflict), and the quota is checked by snapshot reads around the
# insert.  Two adds racing for the last free place may both see it free; the check after the insert sees
# both and takes back what went over, so the plan's bound holds once every add has answered.
async def _user_for(services: Services, subject: str, name: str | None) -> User:
    """The user of ``subject``, created on first sight (by a tenant admin adding them before they sign in)."""
    async with services.store.unit_of_work() as uow:
        user = await uow.users.get_by_subject(subject)
    if user is not None:
        return user
    display = name or subject.split("|")[-1][:80] or subject[:80]
    user = User(id=new_id(), subject=subject, name=display)

    async def create(uow: UnitOfWork) -> None:
        await uow.users.add(user)

    try:
        await services.store.run(create)
    except Conflict:  # created meanwhile by a concurrent request
        async with services.store.unit_of_work() as uow:
            found = await uow.users.get_by_subject(subject)
        if found is None:
            raise
        return found
    return user


async def _member_quota(services: Services, ws: Workspace, *, added: uuid.UUID | None = None) -> None:
    """Before an add: refuse when the plan's members are used up.  After it (``added``): when concurrent
    adds went over the bound, take this one back and refuse it."""
    async with services.store.unit_of_work() as uow:
        members = await uow.memberships.count(ws.id)
    limit = ws.quotas.max_members
    if (members >= limit) if added is None else (members > limit):
        if added is not None:
            async def undo(uow: UnitOfWork) -> None:
                await uow.memberships.remove(ws.id, added)

            await services.store.run(undo)
            await services.directory.forget_member(ws.slug, added)
        raise QuotaExceeded(f"the {ws.plan} plan allows {limit} members", field="members")


async def change_role(services: Services, p: Principal, user_id: uuid.UUID, role: str) -> MemberView:
    _require(p, Role.ADMIN, "change roles")
    new_role = Role(role)
    ws = p.workspace

    async def tx(uow: UnitOfWork) -> MemberView:
        m = await uow.memberships.get(ws.id, user_id)
        if m is None:
            raise NotFound("not a member of this workspace", field="user_id")
        if Role.OWNER in (m.role, new_role) and p.role is not Role.OWNER:
            raise Forbidden("only an owner may grant or revoke owner", field="role")
        if m.role is Role.OWNER and new_role is not Role.OWNER and await _owners(uow, ws.id) <= 1:
            raise Conflict("the last owner cannot be demoted; make someone else owner first", field="role")
        if m.role is not new_role:
            await uow.memberships.set_role(ws.id, user_id, new_role)
        names = await _names(uow, [user_id])
        return MemberView(user_id, names.get(user_id, ""), new_role)

    view = await services.store.run(tx)
    await services.directory.forget_member(ws.slug, user_id)
    return view


async def remove_member(services: Services, p: Principal, user_id: uuid.UUID) -> None:
    """Admins remove anyone but owners (owners remove anyone); everyone may leave; never the last owner.
    The user's open sockets in the workspace are closed with 4010 (storm/revocation.py)."""
    subject = await _remove(services, p, user_id)
    await _close_sockets(services, p.workspace.slug, subject, "removed")


async def ban_member(services: Services, p: Principal, user_id: uuid.UUID) -> None:
    """Remove a member and put their subject on the revocation list for ``STORM_BAN_TTL_S`` (admins)."""
    if user_id == p.user.id:
        raise BadRequest("you cannot ban yourself", field="user_id")
    _require(p, Role.ADMIN, "ban members")
    subject = await _remove(services, p, user_id)
    await _close_sockets(services, p.workspace.slug, subject, "ban", ttl=services.config.ban_ttl_s)


async def logout(services: Services, p: Principal) -> None:
    """Revoke the caller's token until it expires and close the caller's sockets in this workspace."""
    claims = p.claims
    ttl = max(0.0, claims.expires_at - services.clock.time()) if claims.token_id else 0.0
    await _close_sockets(services, p.workspace.slug, claims.subject, "logout", ttl=ttl, token_id=claims.token_id)


async def _close_sockets(services: Services, slug: str, subject: str, reason: str, *, ttl: float = 0.0,
                         token_id: str = "", channel: str = "") -> None:
    try:
        await revocation.revoke(services.cache, services.broker, slug, subject, reason=reason, ttl=ttl,
                                token_id=token_id, channel=channel)
    except Unavailable:
        if ttl > 0:
            raise  # a ban or logout that is not on the list did not happen: let the caller retry
        log.warning("workspace=%s subject removed but the control event failed; %s", slug,
                    "the subscription ends when the socket closes" if channel
                    else "sockets close at their next presence refresh")


async def _subject(uow: UnitOfWork, user_id: uuid.UUID) -> str:
    users = await uow.users.get_many([user_id])
    return users[0].subject if users else ""


async def _remove(services: Services, p: Principal, user_id: uuid.UUID) -> str:
    leaving = user_id == p.user.id
    if not leaving:
        _require(p, Role.ADMIN, "remove members")
    ws = p.workspace

    async def tx(uow: UnitOfWork) -> tuple[list[uuid.UUID], str]:
        m = await uow.memberships.get(ws.id, user_id)
        if m is None:
            raise NotFound("not a member of this workspace", field="user_id")
        if m.role is Role.OWNER and not leaving and p.role is not Role.OWNER:
            raise Forbidden("only an owner may remove an owner", field="role")
        if m.role is Role.OWNER and await _owners(uow, ws.id) <= 1:
            raise Conflict("the last owner cannot be removed; make someone else owner first", field="user_id")
        private = [c.id for c in await uow.channels.list_for_user(ws.id, user_id) if c.is_private]
        subject = await _subject(uow, user_id)
        await uow.memberships.remove(ws.id, user_id)
        return private, subject

    private_channels, subject = await services.store.run(tx)
    await services.directory.forget_member(ws.slug, user_id)
    for channel_id in private_channels:
        await services.directory.forget_channel(ws.slug, channel_id, user_id)
    await publish_member_events(services, ws, MEMBER_LEFT, [(user_id, "", "")])
    return subject


async def _owners(uow: UnitOfWork, workspace_id: uuid.UUID) -> int:
    return sum(1 for m in await uow.memberships.list(workspace_id) if m.role is Role.OWNER)


async def _names(uow: UnitOfWork, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not user_ids:
        return {}
    return {u.id: u.name for u in await uow.users.get_many(list(dict.fromkeys(user_ids)))}


# -- channels --------------------------------------------------------------------------------------------
async def create_channel(
    services: Services, p: Principal, *, name: str | None, kind: str, members: Sequence[uuid.UUID] | None
) -> Channel:
    """Any member creates public and private channels; ``direct`` is the DM between the caller and one
    other member, named by :func:`storm.domain.direct_channel_name` so a second request conflicts."""
    ws = p.workspace
    channel_kind = ChannelKind(kind)
    others = [u for u in dict.fromkeys(members or ()) if u != p.user.id]
    if channel_kind is ChannelKind.PUBLIC and members:
        raise BadRequest("public channels are open to every member; omit members", field="members")
    if channel_kind is ChannelKind.DIRECT:
        if len(others) != 1:
            raise BadRequest("a direct channel needs exactly one other member", field="members")
        name = direct_channel_name(p.user.id, others[0])
    elif name is None:
        raise BadRequest("name is required", field="name")
    channel = Channel(id=new_id(), workspace_id=ws.id, name=name, kind=channel_kind, created_by=p.user.id,
                      created_at=utcnow())
    channel_members = [p.user.id, *others] if channel.is_private else []
    direct = channel_kind is ChannelKind.DIRECT
    taken = "this direct channel exists" if direct else "a channel with this name exists"
    taken_field = "members" if direct else "name"

    async def tx(uow: UnitOfWork) -> None:
        for user_id in others:
            if await uow.memberships.get(ws.id, user_id) is None:
                raise BadRequest(f"user {user_id} is not a member of this workspace", field="members")
        if await uow.channels.get_by_name(ws.id, channel.name) is not None:
            raise Conflict(taken, field=taken_field)
        if await uow.channels.count(ws.id) >= ws.quotas.max_channels:
            raise QuotaExceeded(f"the {ws.plan} plan allows {ws.quotas.max_channels} channels",
                                field="channels")
        await uow.channels.add(channel)
        for user_id in channel_members:
            await uow.channels.add_member(ws.id, channel.id, user_id)

    try:
        await services.store.run(tx)
    except Conflict as exc:  # two creators raced for the name
        raise Conflict(taken, field=taken_field) from exc
    await services.directory.forget_channel(ws.slug, channel.id)
    return channel


async def list_channels(services: Services, p: Principal, *, include_archived: bool = False) -> list[Channel]:
    """Public channels and the private ones the caller is in; archived ones too for admins who ask."""
    if include_archived:
        _require(p, Role.ADMIN, "list archived channels", field="include_archived")
    ws = p.workspace
    async with services.store.unit_of_work() as uow:
        channels = list(await uow.channels.list_for_user(ws.id, p.user.id))
        if include_archived:
            seen = {c.id for c in channels}
            for c in await uow.channels.list(ws.id, include_archived=True):
                if c.id in seen or not c.archived:
                    continue
                if not c.is_private or await uow.channels.is_member(ws.id, c.id, p.user.id):
                    channels.append(c)
    return sorted(channels, key=lambda c: (c.name, c.id))


async def _load_channel(
    uow: UnitOfWork, p: Principal, channel_id: uuid.UUID, *, admin_sees_private: bool
) -> Channel:
    """The channel if the caller may see it; private channels are NotFound to outsiders (no leak)."""
    ch = await uow.channels.get(p.workspace.id, channel_id)
    if ch is None:
        raise NotFound("no such channel", field="channel")
    if ch.is_private and not (admin_sees_private and p.role.at_least(Role.ADMIN)):
        if not await uow.channels.is_member(p.workspace.id, ch.id, p.user.id):
            raise NotFound("no such channel", field="channel")
    return ch


async def archive_channel(services: Services, p: Principal, channel_id: uuid.UUID) -> Channel:
    """Admins and the channel's creator archive it.  Archiving twice is not an error."""
    ws = p.workspace

    async def tx(uow: UnitOfWork) -> Channel:
        ch = await _load_channel(uow, p, channel_id, admin_sees_private=False)
        if not (p.role.at_least(Role.ADMIN) or ch.created_by == p.user.id):
            raise Forbidden("only an admin or the channel's creator may archive it", field="role")
        if not ch.archived:
            await uow.channels.archive(ws.id, ch.id)
        return replace(ch, archived=True)

    channel = await services.store.run(tx)
    await services.directory.forget_channel(ws.slug, channel.id)
    return channel


async def add_channel_member(
    services: Services, p: Principal, channel_id: uuid.UUID, user_id: uuid.UUID
) -> list[uuid.UUID]:
    """Channel members and admins add workspace members to a private channel; returns its members."""
    ws = p.workspace

    async def tx(uow: UnitOfWork) -> list[uuid.UUID]:
        ch = await _private_channel(uow, p, channel_id)
        if ch.archived:
            raise Forbidden("channel is archived", field="channel_id")
        if await uow.memberships.get(ws.id, user_id) is None:
            raise BadRequest("user is not a member of this workspace", field="user_id")
        await uow.channels.add_member(ws.id, ch.id, user_id)
        return sorted(await uow.channels.list_members(ws.id, ch.id))

    members = await services.store.run(tx)
    await services.directory.forget_channel(ws.slug, channel_id, user_id)
    return members


async def remove_channel_member(
    services: Services, p: Principal, channel_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    """Remove a member from a private channel.  Their open subscriptions to it end on every gateway
    (``unsubscribed`` with ``reason: "removed"``, storm/revocation.py)."""
    ws = p.workspace

    async def tx(uow: UnitOfWork) -> str:
        ch = await _private_channel(uow, p, channel_id)
        if not await uow.channels.is_member(ws.id, ch.id, user_id):
            raise NotFound("not a member of this channel", field="user_id")
        await uow.channels.remove_member(ws.id, ch.id, user_id)
        return await _subject(uow, user_id)

    subject = await services.store.run(tx)
    await services.directory.forget_channel(ws.slug, channel_id, user_id)
    if subject:
        await _close_sockets(services, ws.slug, subject, "removed", channel=str(channel_id))


async def _private_channel(uow: UnitOfWork, p: Principal, channel_id: uuid.UUID) -> Channel:
    ch = await _load_channel(uow, p, channel_id, admin_sees_private=True)
    if ch.kind is not ChannelKind.PRIVATE:
        raise BadRequest(f"{ch.kind.value} channels have no managed member list", field="channel_id")
    return ch


# -- history ---------------------------------------------------------------------------------------------
def encode_cursor(offset: int) -> str:
    """Opaque page cursor: urlsafe base64 of the exclusive upper offset, without padding."""
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raw = ""
    match = _CURSOR_RE.fullmatch(raw)
    if match is None or encode_cursor(int(match.group(1))) != cursor:
        raise BadRequest("invalid cursor; pass next_cursor of the previous page", field="cursor")
    return int(match.group(1))


async def history(
    services: Services, p: Principal, channel_id: uuid.UUID, *, limit: int | None, cursor: str | None
) -> HistoryView:
    """One page of a channel's stored messages, newest first, older pages through ``next_cursor``.  The
    messages are built by the same function as the WebSocket ``history`` command's (storm/protocol/chat.py)."""
    page_max = services.config.history_page_max
    limit = min(DEFAULT_PAGE, page_max) if limit is None else limit
    if not 1 <= limit <= page_max:
        raise BadRequest(f"limit must be between 1 and {page_max}", field="limit")
    before = decode_cursor(cursor) if cursor is not None else None
    await services.directory.check_channel_access(p, str(channel_id))
    page = await chat.history_page(services.store, p.workspace.id, channel_id, before=before, limit=limit,
                                   reader=p.user.id)
    return HistoryView(page.messages, encode_cursor(page.next_before) if page.next_before is not None else None,
                       page.offset)


async def unread(services: Services, p: Principal) -> list[tuple[uuid.UUID, int, int]]:
    """(channel, read marker, unread count) for every channel the caller can read, not archived."""
    async with services.store.unit_of_work() as uow:
        channels = await uow.channels.list_for_user(p.workspace.id, p.user.id)
    state = await chat.read_state(services.store, p.workspace.id, p.user.id, [ch.id for ch in channels])
    return [(ch.id, *state[ch.id]) for ch in channels]


async def channel_members(services: Services, p: Principal, channel_id: uuid.UUID) -> list[uuid.UUID]:
    """Who is in a channel, for those who can read it: a private or direct channel's members, every member
    of the workspace for a public channel."""
    ch = await services.directory.check_channel_access(p, str(channel_id))
    async with services.store.unit_of_work() as uow:
        if ch.is_private:
            return sorted(await uow.channels.list_members(p.workspace.id, ch.id))
        return sorted(m.user_id for m in await uow.memberships.list(p.workspace.id))


def epoch(moment: datetime | None) -> float | None:
    """Epoch seconds; naive datetimes (SQLite) are UTC by the store's convention."""
    return None if moment is None else chat.epoch(moment)


def iso(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


# -- presence --------------------------------------------------------------------------------------------
async def channel_presence(services: Services, p: Principal, channel_id: uuid.UUID) -> list[PresenceEntry]:
    await services.directory.check_channel_access(p, str(channel_id))
    return await services.cache.presence_list(p.workspace.slug, str(channel_id))


async def workspace_online(services: Services, p: Principal) -> list[PresenceEntry]:
    return await services.cache.presence_list(p.workspace.slug, WORKSPACE_PRESENCE)
