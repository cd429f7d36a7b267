"""HTTP entrypoint of the tenants API: a Quart blueprint, quart-schema models, JSON errors.

Handlers only move data between HTTP and :mod:`tenants.service`; every rule lives there.  Each request
runs through :func:`_authenticate` before its body is looked at, so the order of refusals is always
401 (no/invalid token) → 403/404 (workspace) → 400 (input) → the service's own answer.  Error bodies are
``{"error": {"code", "message", "field"?}}``; docs/tenants-api.md lists the codes.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from quart import Blueprint, Quart, current_app, g, has_request_context, request
from quart_schema import (
    HttpSecurityScheme,
    Info,
    QuartSchema,
    RequestSchemaValidationError,
    document_response,
    security_scheme_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)
from quart_schema.openapi import OpenAPIProvider
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, QuerystringValidationError
from werkzeug.exceptions import BadRequest as HTTPBadRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from storm.bootstrap import Services
from storm.directory import Principal
from storm.errors import BadRequest, StormError, Unauthenticated
from storm.protocol.events import HistoryMessage
from tenants import schemas as s
from tenants import service, webhooks

log = logging.getLogger("storm.tenants")

BEARER = "bearer"
_F = TypeVar("_F", bound=Callable[..., Any])
_HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type"}

bp = Blueprint("tenants", __name__)
security_scheme_blueprint(bp, [{BEARER: []}])


def register(app: Quart, services: Services, *, prefix: str = "/v1") -> None:
    """Mount the tenants API on ``app`` under ``prefix`` and make ``services`` available to it."""
    held = app.extensions.get("storm")
    if held is not None and held is not services:
        raise RuntimeError("this app already holds another Services container")
    app.extensions["storm"] = services
    scheme = HttpSecurityScheme(scheme="bearer", bearer_format="JWT")
    existing = app.extensions.get("QUART_SCHEMA")
    if existing is None:
        QuartSchema(app, openapi_path="/openapi.json", redoc_ui_path=None, scalar_ui_path=None,
                    swagger_ui_path=None, info=Info(title="STORM tenants API", version="1"),
                    security_schemes={BEARER: scheme}, openapi_provider_class=_OpenAPI)
    else:  # another part of the app initialised quart-schema: just add our scheme
        existing.security_schemes = {**(existing.security_schemes or {}), BEARER: scheme}
    app.register_blueprint(bp, url_prefix=prefix)
    webhooks.register(app, authenticate=_authenticate, check_json=_check_json_body, prefix=prefix)
    app.register_error_handler(StormError, _storm_error)
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


# -- request context ---------------------------------------------------------------------------------------
class _OpenAPI(OpenAPIProvider):
    """quart-schema's provider, except that a ``NoContent`` response (204) is documented without a body."""

    def build_response_object(self, model: Any, headers_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if getattr(model, "__name__", "") == "NoContent":
            return {"description": inspect.getdoc(model) or "No content"}, {}
        return super().build_response_object(model, headers_model)


def _services() -> Services:
    services: Services = current_app.extensions["storm"]
    return services


def _principal() -> Principal:
    principal: Principal = g.storm_principal
    return principal


@bp.before_request
async def _authenticate() -> None:
    services = _services()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token", field="authorization")
    claims = await services.identity.verify(token.strip())
    g.storm_claims = claims
    slug = (request.view_args or {}).get("slug")
    if slug is not None:
        g.storm_principal = await service.authorize(services, claims, slug)
    await _check_json_body()


async def _check_json_body() -> None:
    """Refuse non-JSON and undecodable bodies as 400 ``body`` before quart-schema sees them (Quart would
    let invalid UTF-8 or very deep nesting escape as a 500)."""
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, None) is None:
        return
    if not request.is_json:
        raise BadRequest("expected a JSON body (Content-Type: application/json)", field="body")
    try:
        await request.get_json()  # parsed once; quart-schema reads the cached value
    except (ValueError, RecursionError, HTTPBadRequest):
        raise BadRequest("body is not valid JSON", field="body") from None


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"{field} is not a UUID", field=field) from None


def _errors(*statuses: int) -> Callable[[_F], _F]:
    """Document the error responses of a route in the OpenAPI schema."""

    def decorate(func: _F) -> _F:
        for status in statuses:
            func = document_response(s.ErrorBody, status)(func)
        return func

    return decorate


# -- conversions --------------------------------------------------------------------------------------------
def _workspace_out(v: service.WorkspaceView) -> s.WorkspaceOut:
    ws = v.workspace
    return s.WorkspaceOut(id=ws.id, slug=ws.slug, name=ws.name, plan=ws.plan,
                          created_at=service.iso(ws.created_at), role=v.role.value)


def _member_out(v: service.MemberView) -> s.MemberOut:
    return s.MemberOut(user_id=v.user_id, name=v.name, role=v.role.value)


def _channel_out(c: Any) -> s.ChannelOut:
    return s.ChannelOut(id=c.id, name=c.name, kind=c.kind.value, archived=c.archived, created_by=c.created_by,
                        created_at=service.iso(c.created_at))


def _message_out(m: HistoryMessage) -> s.MessageOut:
    """Field for field what the WebSocket ``history`` command sends (storm/protocol/chat.py builds both)."""
    return s.MessageOut(id=uuid.UUID(m.id), offset=m.offset, author=uuid.UUID(m.author), author_name=m.author_name,
                        text=m.text, ts=m.ts, cmid=m.cmid, thread=uuid.UUID(m.thread) if m.thread else None,
                        edited_ts=m.edited_ts, deleted=m.deleted, reactions=m.reactions, mine=m.mine)


def _presence_out(entries: list[Any]) -> s.PresenceList:
    return s.PresenceList(users=[s.PresenceUser(id=e.user_id, name=e.name) for e in entries])


# -- workspaces ---------------------------------------------------------------------------------------------
@bp.post("/workspaces")
@_errors(400, 401, 403, 409, 503)
@validate_request(s.WorkspaceCreate)
@validate_response(s.WorkspaceOut, 201)
async def create_workspace(data: s.WorkspaceCreate) -> tuple[s.WorkspaceOut, int]:
    """Create a workspace; the caller becomes its owner.

    Needs the `workspaces:create` scope and a token bound to `*` or to the new slug.  If the broker
    cannot set the workspace up, the creation is undone and 503 `unavailable` is returned.
    """
    view = await service.create_workspace(_services(), g.storm_claims, slug=data.slug, name=data.name,
                                          plan=data.plan)
    return _workspace_out(view), 201


@bp.get("/workspaces")
@_errors(401)
@validate_response(s.WorkspaceList)
async def list_workspaces() -> s.WorkspaceList:
    """Workspaces the caller belongs to (only the bound one for workspace-bound tokens)."""
    views = await service.list_workspaces(_services(), g.storm_claims)
    return s.WorkspaceList(workspaces=[_workspace_out(v) for v in views])


@bp.get("/workspaces/<slug>")
@_errors(401, 403, 404)
@validate_response(s.WorkspaceOut)
async def get_workspace(slug: str) -> s.WorkspaceOut:
    """One workspace and the caller's role in it."""
    return _workspace_out(await service.get_workspace(_services(), _principal()))


@bp.delete("/workspaces/<slug>")
@_errors(401, 403, 404)
@document_response(s.NoContent, 204)
async def delete_workspace(slug: str) -> tuple[str, int]:
    """Delete the workspace with all its members, channels and messages (owners only)."""
    await service.delete_workspace(_services(), _principal())
    return "", 204


# -- members ------------------------------------------------------------------------------------------------
@bp.get("/workspaces/<slug>/members")
@_errors(401, 403, 404)
@validate_response(s.MemberList)
async def list_members(slug: str) -> s.MemberList:
    """Members of the workspace with their roles."""
    views = await service.list_members(_services(), _principal())
    return s.MemberList(members=[_member_out(v) for v in views])


@bp.post("/workspaces/<slug>/members")
@_errors(400, 401, 403, 404, 409)
@validate_request(s.MemberAdd)
@validate_response(s.MemberOut, 201)
async def add_member(slug: str, data: s.MemberAdd) -> tuple[s.MemberOut, int]:
    """Add a user (created on first sight) to the workspace (admins; owners to add owners)."""
    view = await service.add_member(_services(), _principal(), subject=data.subject, name=data.name,
                                    role=data.role)
    return _member_out(view), 201


@bp.post("/workspaces/<slug>/members/bulk")
@_errors(400, 401, 403, 404, 409)
@validate_request(s.MemberBulkAdd)
@validate_response(s.MemberList)
async def add_members(slug: str, data: s.MemberBulkAdd) -> s.MemberList:
    """Provision many members at once, all or nothing (admins; owners to add owners): every listed member
    comes back, added or already there (with their current role)."""
    views = await service.add_members(_services(), _principal(),
                                      [(m.subject, m.name, m.role) for m in data.members])
    return s.MemberList(members=[_member_out(v) for v in views])


@bp.patch("/workspaces/<slug>/members/<user_id>")
@_errors(400, 401, 403, 404, 409)
@validate_request(s.MemberUpdate)
@validate_response(s.MemberOut)
async def change_role(slug: str, user_id: str, data: s.MemberUpdate) -> s.MemberOut:
    """Change a member's role (admins; only owners grant or revoke owner; never the last owner)."""
    view = await service.change_role(_services(), _principal(), _uuid(user_id, "user_id"), data.role)
    return _member_out(view)


@bp.delete("/workspaces/<slug>/members/<user_id>")
@_errors(400, 401, 403, 404, 409)
@document_response(s.NoContent, 204)
async def remove_member(slug: str, user_id: str) -> tuple[str, int]:
    """Remove a member (admins), or leave (anyone); never the last owner."""
    await service.remove_member(_services(), _principal(), _uuid(user_id, "user_id"))
    return "", 204


@bp.post("/workspaces/<slug>/members/<user_id>/ban")
@_errors(400, 401, 403, 404, 409)
@document_response(s.NoContent, 204)
async def ban_member(slug: str, user_id: str) -> tuple[str, int]:
    """Remove a member, close their sockets (4010) and refuse their tokens for `STORM_BAN_TTL_S` (admins)."""
    await service.ban_member(_services(), _principal(), _uuid(user_id, "user_id"))
    return "", 204


@bp.post("/workspaces/<slug>/logout")
@_errors(401, 403, 404, 503)
@document_response(s.NoContent, 204)
async def logout(slug: str) -> tuple[str, int]:
    """Revoke the presented token and close the caller's sockets in the workspace (4010)."""
    await service.logout(_services(), _principal())
    return "", 204


# -- channels -----------------------------------------------------------------------------------------------
@bp.post("/workspaces/<slug>/channels")
@_errors(400, 401, 403, 404, 409)
@validate_request(s.ChannelCreate)
@validate_response(s.ChannelOut, 201)
async def create_channel(slug: str, data: s.ChannelCreate) -> tuple[s.ChannelOut, int]:
    """Create a public, private or direct channel."""
    channel = await service.create_channel(_services(), _principal(), name=data.name, kind=data.kind,
                                           members=data.members)
    return _channel_out(channel), 201


@bp.get("/workspaces/<slug>/channels")
@_errors(400, 401, 403, 404)
@validate_querystring(s.ChannelListQuery)
@validate_response(s.ChannelList)
async def list_channels(slug: str, query_args: s.ChannelListQuery) -> s.ChannelList:
    """Channels visible to the caller; `include_archived=true` (admins) adds archived ones."""
    channels = await service.list_channels(_services(), _principal(),
                                           include_archived=query_args.include_archived)
    return s.ChannelList(channels=[_channel_out(c) for c in channels])


@bp.post("/workspaces/<slug>/channels/<channel_id>/archive")
@_errors(400, 401, 403, 404)
@validate_response(s.ChannelOut)
async def archive_channel(slug: str, channel_id: str) -> s.ChannelOut:
    """Archive a channel (admins or its creator): it stays readable, no longer writable."""
    channel = await service.archive_channel(_services(), _principal(), _uuid(channel_id, "channel_id"))
    return _channel_out(channel)


@bp.post("/workspaces/<slug>/channels/<channel_id>/members")
@_errors(400, 401, 403, 404)
@validate_request(s.ChannelMemberAdd)
@validate_response(s.ChannelMemberList)
async def add_channel_member(slug: str, channel_id: str, data: s.ChannelMemberAdd) -> s.ChannelMemberList:
    """Add a workspace member to a private channel (its members or admins); returns the members."""
    members = await service.add_channel_member(_services(), _principal(), _uuid(channel_id, "channel_id"),
                                               data.user_id)
    return s.ChannelMemberList(members=members)


@bp.delete("/workspaces/<slug>/channels/<channel_id>/members/<user_id>")
@_errors(400, 401, 403, 404)
@document_response(s.NoContent, 204)
async def remove_channel_member(slug: str, channel_id: str, user_id: str) -> tuple[str, int]:
    """Remove a member from a private channel (its members or admins)."""
    await service.remove_channel_member(_services(), _principal(), _uuid(channel_id, "channel_id"),
                                        _uuid(user_id, "user_id"))
    return "", 204


@bp.get("/workspaces/<slug>/channels/<channel_id>/messages")
@_errors(400, 401, 403, 404)
@validate_querystring(s.HistoryQuery)
@validate_response(s.HistoryPage)
async def history(slug: str, channel_id: str, query_args: s.HistoryQuery) -> s.HistoryPage:
    """Stored messages, newest first; follow `next_cursor` for older pages."""
    page = await service.history(_services(), _principal(), _uuid(channel_id, "channel_id"),
                                 limit=query_args.limit, cursor=query_args.cursor)
    return s.HistoryPage(messages=[_message_out(v) for v in page.messages], next_cursor=page.next_cursor,
                         offset=page.offset)


@bp.get("/workspaces/<slug>/unread")
@_errors(401, 403, 404)
@validate_response(s.UnreadList)
async def unread(slug: str) -> s.UnreadList:
    """The caller's read marker and unread count of every channel they can read (sidebar badges)."""
    rows = await service.unread(_services(), _principal())
    return s.UnreadList(channels=[s.ChannelUnread(channel=ch, read=read, unread=n) for ch, read, n in rows])


@bp.get("/workspaces/<slug>/channels/<channel_id>/members")
@_errors(400, 401, 403, 404)
@validate_response(s.ChannelMemberList)
async def list_channel_members(slug: str, channel_id: str) -> s.ChannelMemberList:
    """The channel's members (every workspace member for a public channel), for those who can read it."""
    members = await service.channel_members(_services(), _principal(), _uuid(channel_id, "channel_id"))
    return s.ChannelMemberList(members=members)


# -- presence -----------------------------------------------------------------------------------------------
@bp.get("/workspaces/<slug>/channels/<channel_id>/presence")
@_errors(400, 401, 403, 404)
@validate_response(s.PresenceList)
async def channel_presence(slug: str, channel_id: str) -> s.PresenceList:
    """Users with a live connection subscribed to the channel."""
    entries = await service.channel_presence(_services(), _principal(), _uuid(channel_id, "channel_id"))
    return _presence_out(entries)


@bp.get("/workspaces/<slug>/online")
@_errors(401, 403, 404)
@validate_response(s.PresenceList)
async def workspace_online(slug: str) -> s.PresenceList:
    """Users with at least one live connection to the workspace."""
    return _presence_out(await service.workspace_online(_services(), _principal()))


# -- errors -------------------------------------------------------------------------------------------------
def _clean(text: str, limit: int) -> str:
    """Client-controlled text (field names) made safe to echo: bounded, no lone surrogates."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _error(status: int, code: str, message: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> tuple[dict[str, Any], int, dict[str, str]]:
    detail: dict[str, Any] = {"code": code, "message": _clean(message, 500)}
    if field:
        detail["field"] = _clean(field, 100)
    return {"error": detail}, status, headers or {}


async def _storm_error(exc: StormError) -> Any:
    if not has_request_context():  # a websocket route of a shared app: not ours to answer
        raise exc
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = ('Bearer realm="storm"' if "Authorization" not in request.headers
                                       else 'Bearer realm="storm", error="invalid_token"')
    if exc.retriable:
        headers["Retry-After"] = "1"
    if exc.http_status >= 500:
        log.warning("%s %s workspace=%s: %s %s", request.method, request.path, _slug(), exc.code, exc.message)
    return _error(exc.http_status, exc.code, exc.message, exc.field, headers)


async def _validation_error(exc: RequestSchemaValidationError) -> Any:
    fallback = "query" if isinstance(exc, QuerystringValidationError) else "body"
    field, message = fallback, "request does not match the schema"
    error = exc.validation_error
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors(include_url=False, include_input=False)[0]
        field = str(first["loc"][0]) if first["loc"] else fallback
        message = f"{field}: {first['msg']}"
    return _error(400, "bad_request", message, field)


async def _http_error(exc: HTTPException) -> Any:
    if not has_request_context():
        return exc
    status = exc.code or 500
    headers = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    field = "body" if status in (400, 413, 415) else None
    return _error(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name, field, headers)


async def _unexpected(exc: Exception) -> Any:
    """Our bug, never the client's: log it with context, answer a bare 500."""
    if not has_request_context():
        raise exc
    log.error("unhandled %s on %s %s workspace=%s endpoint=%s", type(exc).__name__, request.method,
              request.path, _slug(), request.endpoint, exc_info=exc)
    return _error(500, "internal", "internal error")


def _slug() -> str:
    return str((request.view_args or {}).get("slug", "-"))[:64]
