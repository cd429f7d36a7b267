"""Webhooks in the tenants API: outgoing webhooks and their delivery log (admins), incoming webhooks (admins
create them; anyone holding the secret URL posts).  See docs/tenants-api.md ("Webhooks") and
docs/security.md ("Webhooks").

The rules live in the service functions below; the routes only move data.  :func:`blueprints` builds two
blueprints that ``tenants.api.register`` mounts: the admin routes, behind the API's bearer authentication,
and the incoming route, authenticated by its URL alone.  An incoming post goes through the same decoder
as a WebSocket ``publish`` (``decode_command``) and the same chat rules (``Chat.publish``), so it is
refused or accepted exactly as a ``publish`` of that text would be.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from quart import Blueprint, Quart, current_app, g
from quart_schema import (
    document_response,
    security_scheme,
    security_scheme_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)

from storm.bootstrap import Services
from storm.directory import Principal
from storm.domain import Channel, Role, User, Workspace
from storm.errors import BadRequest, Forbidden, NotFound, QuotaExceeded, StormError
from storm.ports.identity import Claims
from storm.ports.store import UnitOfWork
from storm.protocol.chat import Chat, Posted
from storm.protocol.claims import CmidClaims
from storm.protocol.commands import ProtocolViolation, Publish, decode_command
from storm.protocol.context import CLAIM_IN_DOUBT_MARGIN_S
from storm.ratelimit import SharedLimiter
from storm.webhooks import (
    EVENT_TYPES,
    MEMBERS_LOG,
    DeliveryAttempt,
    DeliveryStatus,
    IncomingWebhook,
    Webhook,
    check_url,
    member_record,
    new_secret,
    new_token,
    private_targets_allowed,
    token_hash,
)
from tenants import schemas as s

log = logging.getLogger("storm.tenants.webhooks")

MAX_WEBHOOKS = 20  # outgoing webhooks per workspace
MAX_INCOMING = 50  # incoming webhooks per workspace
INCOMING_RATE = 1.0  # posts per second per incoming webhook (Slack's figure) ...
INCOMING_BURST = 5  # ... with bursts of this many


class RateLimited(StormError):
    code = "rate_limited"
    http_status = 429
    retriable = True  # the API answers with Retry-After


# -- service ------------------------------------------------------------------------------------------------
def _require_admin(p: Principal, action: str) -> None:
    if not p.role.at_least(Role.ADMIN):
        raise Forbidden(f"only an admin or above may {action}", field="role")


async def create_webhook(services: Services, p: Principal, *, url: str, events: list[str],
                         channels: list[uuid.UUID]) -> Webhook:
    _require_admin(p, "manage webhooks")
    check_url(url, allow_private=private_targets_allowed(services.config))
    hook = Webhook(id=uuid.uuid4(), workspace_id=p.workspace.id, url=url, secret=new_secret(),
                   events=tuple(dict.fromkeys(events)), channels=tuple(dict.fromkeys(channels)),
                   created_by=p.user.id)

    async def tx(uow: UnitOfWork) -> None:
        if len(await uow.webhooks.list(p.workspace.id)) >= MAX_WEBHOOKS:
            raise QuotaExceeded(f"a workspace has at most {MAX_WEBHOOKS} webhooks", field="url")
        for channel_id in hook.channels:
            if await uow.channels.get(p.workspace.id, channel_id) is None:
                raise NotFound("no such channel", field="channels")
        await uow.webhooks.add(hook)

    await services.store.run(tx)
    await services.directory.forget_webhooks(p.workspace.slug)  # the webhook worker reads them from now on
    return hook


async def list_webhooks(services: Services, p: Principal) -> list[Webhook]:
    _require_admin(p, "manage webhooks")

    async def tx(uow: UnitOfWork) -> list[Webhook]:
        return await uow.webhooks.list(p.workspace.id)

    return await services.store.run(tx)


async def delete_webhook(services: Services, p: Principal, webhook_id: uuid.UUID) -> None:
    _require_admin(p, "manage webhooks")

    async def tx(uow: UnitOfWork) -> bool:
        return await uow.webhooks.remove(p.workspace.id, webhook_id)

    if not await services.store.run(tx):
        raise NotFound("no such webhook", field="webhook_id")
    await services.directory.forget_webhooks(p.workspace.slug)


async def deliveries(services: Services, p: Principal, webhook_id: uuid.UUID, *, limit: int,
                     status: DeliveryStatus | None) -> list[DeliveryAttempt]:
    _require_admin(p, "read webhook deliveries")

    async def tx(uow: UnitOfWork) -> list[DeliveryAttempt]:
        if await uow.webhooks.get(p.workspace.id, webhook_id) is None:
            raise NotFound("no such webhook", field="webhook_id")
        return await uow.webhooks.deliveries(p.workspace.id, webhook_id, limit=limit, status=status)

    return await services.store.run(tx)


async def create_incoming(services: Services, p: Principal, *, channel_id: uuid.UUID,
                          name: str) -> tuple[IncomingWebhook, str]:
    """The hook and its token (shown once: only its SHA-256 is stored)."""
    _require_admin(p, "manage incoming webhooks")
    token = new_token()
    hook_id = uuid.uuid4()
    bot = User(id=uuid.uuid4(), subject=f"bot|{hook_id}", name=name)
    hook = IncomingWebhook(id=hook_id, workspace_id=p.workspace.id, channel_id=channel_id, bot_user_id=bot.id,
                           name=name, token_hash=token_hash(token), created_by=p.user.id)

    async def tx(uow: UnitOfWork) -> None:
        ch = await uow.channels.get(p.workspace.id, channel_id)
        if ch is None:
            raise NotFound("no such channel", field="channel_id")
        if ch.archived:
            raise Forbidden("the channel is archived", field="channel_id")
        if len(await uow.webhooks.list_incoming(p.workspace.id)) >= MAX_INCOMING:
            raise QuotaExceeded(f"a workspace has at most {MAX_INCOMING} incoming webhooks", field="channel_id")
        await uow.users.add(bot)
        await uow.webhooks.add_incoming(hook)

    await services.store.run(tx)
    return hook, token


async def list_incoming(services: Services, p: Principal) -> list[IncomingWebhook]:
    _require_admin(p, "manage incoming webhooks")

    async def tx(uow: UnitOfWork) -> list[IncomingWebhook]:
        return await uow.webhooks.list_incoming(p.workspace.id)

    return await services.store.run(tx)


async def delete_incoming(services: Services, p: Principal, hook_id: uuid.UUID) -> None:
    _require_admin(p, "manage incoming webhooks")

    async def tx(uow: UnitOfWork) -> bool:
        return await uow.webhooks.remove_incoming(p.workspace.id, hook_id)

    if not await services.store.run(tx):
        raise NotFound("no such incoming webhook", field="hook_id")


async def publish_member_events(services: Services, ws: Workspace, kind: str,
                                members: Sequence[tuple[uuid.UUID, str, str]]) -> None:
    """After a membership change committed: one record per ``(user_id, name, role)`` on the workspace's
    membership log (``member.joined``/``member.left``), for the webhook worker.  Only when one of the
    workspace's webhooks asks for ``kind`` (one store read otherwise), so provisioning costs nothing more
    without such a webhook.  A failure is logged and the change stands: the events are lost
    (docs/consumers.md "The webhook worker")."""
    if not members:
        return

    async def load(uow: UnitOfWork) -> list[Webhook]:
        return await uow.webhooks.list(ws.id)

    try:
        if not await services.directory.has_webhooks(ws):  # most workspaces: no store read at all
            return
        if not any(kind in hook.events for hook in await services.store.run(load)):
            return
        for user_id, name, role in members:
            record = member_record(kind, user_id, services.clock.time(), name=name, role=role)
            await services.broker.publish(ws.slug, MEMBERS_LOG, record)
    except Exception as exc:  # the membership change committed; only its webhook events are lost
        log.warning("could not publish %s events ws=%s: %r", kind, ws.slug, exc)


@dataclass
class IncomingPoster:
    """What an incoming post needs beyond the services: the chat rules and the shared rate limiter."""

    services: Services
    chat: Chat
    limiter: SharedLimiter

    @classmethod
    def build(cls, services: Services) -> IncomingPoster:
        c = services.config
        cmids = CmidClaims(services.cache, services.store, services.broker, services.clock, ttl_s=c.dedup_ttl_s,
                           in_doubt_s=c.publish_timeout_s + CLAIM_IN_DOUBT_MARGIN_S)
        return cls(services, Chat(services.store, services.broker, services.clock, cmids),
                   SharedLimiter(services.cache, services.clock))

    async def post(self, slug: str, hook_id: str, token: str, body: dict[str, Any]) -> Posted:
        """One message into the hook's channel as its bot.  A wrong workspace, hook id or token are one
        and the same 404, so the URL cannot be probed piece by piece."""
        unknown = NotFound("no such incoming webhook", field="hook")
        try:
            hook_uuid = uuid.UUID(hook_id)
            ws = await self.services.directory.workspace(slug)
        except (ValueError, NotFound):
            raise unknown from None

        async def load(uow: UnitOfWork) -> tuple[IncomingWebhook | None, Channel | None, User | None]:
            hook = await uow.webhooks.get_incoming(ws.id, hook_uuid)
            if hook is None:
                return None, None, None
            return hook, await uow.channels.get(ws.id, hook.channel_id), await uow.users.get(hook.bot_user_id)

        hook, channel, bot = await self.services.store.run(load)
        if hook is None or not hmac.compare_digest(token_hash(token), hook.token_hash):
            raise unknown
        wait = await self.limiter.take(slug, f"hook:{hook.id}", INCOMING_RATE, INCOMING_BURST)
        if wait > 0:
            raise RateLimited(f"too many posts to this webhook; retry in {wait:.1f}s", field="hook")
        if channel is None or bot is None:
            raise NotFound("the webhook's channel no longer exists", field="channel")
        if channel.archived:
            raise Forbidden("the channel is archived", field="channel")
        command = self._publish_command(channel, body)
        principal = Principal(user=bot, workspace=ws, role=Role.MEMBER,
                              claims=Claims(subject=bot.subject, workspace=slug, name=bot.name,
                                            expires_at=float("inf")))
        return await self.chat.publish(principal, channel, cmid=command.cmid, text=command.text,
                                       thread=command.thread)

    def _publish_command(self, channel: Channel, body: dict[str, Any]) -> Publish:
        """The body as a ``publish`` frame through the WebSocket's own decoder: same limits, same refusals."""
        frame = {"op": "publish", "channel": str(channel.id), "cmid": body.get("cmid") or uuid.uuid4().hex,
                 "text": body.get("text")}
        if body.get("thread") is not None:
            frame["thread"] = body["thread"]
        try:
            command = decode_command(msgspec.json.encode(frame), self.services.config.max_frame_bytes)
        except ProtocolViolation as exc:
            raise BadRequest(exc.message, field=exc.field or "body") from None
        assert isinstance(command, Publish)
        return command


# -- models -------------------------------------------------------------------------------------------------
EventType = Literal["message.posted", "message.edited", "message.deleted", "reaction.added", "reaction.removed",
                    "member.joined", "member.left"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookCreate(_Request):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="https URL (plain http and loopback only in embedded mode).")
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    channels: list[uuid.UUID] = Field(default_factory=list, max_length=100,
                                      description="Only these channels; empty for every channel.")


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    channels: list[uuid.UUID]
    created_at: str


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The HMAC key of the signatures; shown only here.")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)
    status: Literal["delivered", "failed", "dead_lettered"] | None = None


class DeliveryOut(BaseModel):
    id: uuid.UUID
    event_id: str
    event_type: str
    attempt: int
    status: str
    http_status: int | None
    error: str
    duration_ms: int
    at: str


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


class IncomingCreate(_Request):
    channel_id: uuid.UUID
    name: s.DisplayName = Field(description="The bot's display name on its messages.")


class IncomingOut(BaseModel):
    id: uuid.UUID
    channel_id: uuid.UUID
    name: str
    bot_user_id: uuid.UUID
    created_at: str


class IncomingCreated(IncomingOut):
    url: str = Field(description="The secret URL (path) to POST to; shown only here.")


class IncomingList(BaseModel):
    incoming_webhooks: list[IncomingOut]


class IncomingPost(_Request):
    text: Any = Field(description="The message, validated exactly as a WebSocket `publish` text.")
    thread: Any = Field(default=None, description="Id of the parent message, as `publish`'s `thread`.")
    cmid: Any = Field(default=None, description="Optional client message id: a retry with it posts once.")


class NoContent(BaseModel):
    """No content: the body is empty."""


class PostedOut(BaseModel):
    message_id: uuid.UUID
    offset: int | None
    duplicate: bool


def _iso(value: Any) -> str:
    return str(value.isoformat())


def _webhook_out(w: Webhook) -> WebhookOut:
    return WebhookOut(id=w.id, url=w.url, events=list(w.events), channels=list(w.channels),
                      created_at=_iso(w.created_at))


def _incoming_out(h: IncomingWebhook) -> IncomingOut:
    return IncomingOut(id=h.id, channel_id=h.channel_id, name=h.name, bot_user_id=h.bot_user_id,
                       created_at=_iso(h.created_at))


def incoming_path(prefix: str, slug: str, hook_id: uuid.UUID, token: str) -> str:
    return f"{prefix}/incoming-webhooks/{slug}/{hook_id}/{token}"


# -- routes -------------------------------------------------------------------------------------------------
def _errors(*statuses: int) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        for status in statuses:
            func = document_response(s.ErrorBody, status)(func)
        return func

    return decorate


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"{field} is not a UUID", field=field) from None


def blueprints(*, authenticate: Callable[[], Awaitable[None]], check_json: Callable[[], Awaitable[None]],
               prefix: str) -> list[Blueprint]:
    """The admin routes (behind ``authenticate``, the API's bearer check) and the incoming route."""
    admin = Blueprint("tenants_webhooks", __name__)
    security_scheme_blueprint(admin, [{"bearer": []}])
    admin.before_request(authenticate)
    incoming = Blueprint("tenants_incoming_webhooks", __name__)
    incoming.before_request(check_json)

    def services() -> Services:
        found: Services = current_app.extensions["storm"]
        return found

    def principal() -> Principal:
        found: Principal = g.storm_principal
        return found

    @admin.post("/workspaces/<slug>/webhooks")
    @_errors(400, 401, 403, 404, 409)
    @validate_request(WebhookCreate)
    @validate_response(WebhookCreated, 201)
    async def create_webhook_route(slug: str, data: WebhookCreate) -> tuple[WebhookCreated, int]:
        """Register an outgoing webhook (admins).  The answer carries the signing secret, shown only here."""
        w = await create_webhook(services(), principal(), url=data.url, events=list(data.events),
                                 channels=list(data.channels))
        return WebhookCreated(**_webhook_out(w).model_dump(), secret=w.secret), 201

    @admin.get("/workspaces/<slug>/webhooks")
    @_errors(401, 403, 404)
    @validate_response(WebhookList)
    async def list_webhooks_route(slug: str) -> WebhookList:
        """The workspace's outgoing webhooks (admins); secrets are not shown again."""
        return WebhookList(webhooks=[_webhook_out(w) for w in await list_webhooks(services(), principal())])

    @admin.delete("/workspaces/<slug>/webhooks/<webhook_id>")
    @_errors(400, 401, 403, 404)
    @document_response(NoContent, 204)
    async def delete_webhook_route(slug: str, webhook_id: str) -> tuple[str, int]:
        """Delete an outgoing webhook and its delivery log (admins)."""
        await delete_webhook(services(), principal(), _uuid(webhook_id, "webhook_id"))
        return "", 204

    @admin.get("/workspaces/<slug>/webhooks/<webhook_id>/deliveries")
    @_errors(400, 401, 403, 404)
    @validate_querystring(DeliveryQuery)
    @validate_response(DeliveryList)
    async def deliveries_route(slug: str, webhook_id: str, query_args: DeliveryQuery) -> DeliveryList:
        """The delivery log, newest first: one entry per attempt; `status=dead_lettered` lists the events
        the worker gave up on (admins)."""
        status = DeliveryStatus(query_args.status) if query_args.status else None
        rows = await deliveries(services(), principal(), _uuid(webhook_id, "webhook_id"), limit=query_args.limit,
                                status=status)
        return DeliveryList(deliveries=[
            DeliveryOut(id=d.id, event_id=d.event_id, event_type=d.event_type, attempt=d.attempt,
                        status=d.status.value, http_status=d.http_status, error=d.error,
                        duration_ms=d.duration_ms, at=_iso(d.at)) for d in rows])

    @admin.post("/workspaces/<slug>/incoming-webhooks")
    @_errors(400, 401, 403, 404, 409)
    @validate_request(IncomingCreate)
    @validate_response(IncomingCreated, 201)
    async def create_incoming_route(slug: str, data: IncomingCreate) -> tuple[IncomingCreated, int]:
        """Create an incoming webhook posting into one channel as a bot (admins).  The answer carries the
        secret URL, shown only here."""
        hook, token = await create_incoming(services(), principal(), channel_id=data.channel_id, name=data.name)
        return IncomingCreated(**_incoming_out(hook).model_dump(),
                               url=incoming_path(prefix, slug, hook.id, token)), 201

    @admin.get("/workspaces/<slug>/incoming-webhooks")
    @_errors(401, 403, 404)
    @validate_response(IncomingList)
    async def list_incoming_route(slug: str) -> IncomingList:
        """The workspace's incoming webhooks (admins); their URLs are not shown again."""
        hooks = await list_incoming(services(), principal())
        return IncomingList(incoming_webhooks=[_incoming_out(h) for h in hooks])

    @admin.delete("/workspaces/<slug>/incoming-webhooks/<hook_id>")
    @_errors(400, 401, 403, 404)
    @document_response(NoContent, 204)
    async def delete_incoming_route(slug: str, hook_id: str) -> tuple[str, int]:
        """Delete an incoming webhook: its URL stops working at once (admins)."""
        await delete_incoming(services(), principal(), _uuid(hook_id, "hook_id"))
        return "", 204

    posters: dict[int, IncomingPoster] = {}

    @incoming.post("/incoming-webhooks/<slug>/<hook_id>/<token>")
    @security_scheme([])
    @_errors(400, 403, 404, 429)
    @validate_request(IncomingPost)
    @validate_response(PostedOut)
    async def incoming_route(slug: str, hook_id: str, token: str, data: IncomingPost) -> PostedOut:
        """Post a message through an incoming webhook: the URL is the credential (no bearer token).  The
        body is validated as a WebSocket `publish`; 429 `rate_limited` past the webhook's rate."""
        held = services()
        poster = posters.get(id(held))
        if poster is None or poster.services is not held:
            poster = posters[id(held)] = IncomingPoster.build(held)
        posted = await poster.post(slug, hook_id, token, data.model_dump())
        return PostedOut(message_id=uuid.UUID(posted.message_id), offset=posted.offset,
                         duplicate=posted.duplicate)

    return [admin, incoming]


def register(app: Quart, *, authenticate: Callable[[], Awaitable[None]],
             check_json: Callable[[], Awaitable[None]], prefix: str) -> None:
    for blueprint in blueprints(authenticate=authenticate, check_json=check_json, prefix=prefix):
        app.register_blueprint(blueprint, url_prefix=prefix)
