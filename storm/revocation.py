"""Revocation: logout, ban and removal from a workspace reach open sockets within a second, on every gateway.

Two parts (docs/security.md, "Revocation"):

* the **revocation list** in the cache (``Cache.revoke`` / ``Cache.is_revoked``, shared by every gateway
  when Hazelcast is configured): a subject (ban) or one token id (``jti:<id>``, logout) that must not open
  a session or call the REST API again while the entry lives;
* a **control event** published on the workspace's ``_control`` pseudo-channel through the broker.  Each
  gateway follows ``_control`` of every workspace it has sessions in (:class:`ControlRouter`, one hub
  listener per workspace, not per session) and closes the named subject's sockets with 4010 — or, for a
  removal from one private channel (``revoke(..., channel=…)``), ends their subscriptions to it only.

A session checks the list only after it has joined ``_control``, so a revocation racing a handshake is
seen by one of the two checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from storm.errors import Unauthenticated
from storm.ports.broker import Broker
from storm.ports.cache import Cache
from storm.ports.identity import Claims

log = logging.getLogger("storm.revocation")

CONTROL_CHANNEL = "_control"
EVERYONE = "*"  # the subject of a control event for every session of the workspace (it was deleted)
WORKSPACE_DELETED = "workspace deleted"  # its reason
SUBJECT_LISTED = "access revoked"  # why check() refuses: the subject is listed (a ban)
JTI_LISTED = "token revoked"  # ... or this one token is (a logout)


class Revoke(msgspec.Struct, tag_field="type", tag="revoke", forbid_unknown_fields=False):
    subject: str
    reason: str  # "logout", "ban", "removed"
    jti: str = ""  # when set, only sessions opened with that token
    channel: str = ""  # when set, only the subscriptions to that channel end (removal from a private channel)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Revoke)


def jti_key(token_id: str) -> str:
    return f"jti:{token_id}"


async def revoke(cache: Cache, broker: Broker, workspace: str, subject: str, *, reason: str,
                 ttl: float = 0.0, token_id: str = "", channel: str = "") -> None:
    """Put ``subject`` (or, with ``token_id``, that one token) on the list for ``ttl`` seconds (0: not
    listed, e.g. a removal, where the membership itself is the gate) and close its open sockets — or, with
    ``channel`` (a removal from that private channel), end only their subscriptions to it."""
    if ttl > 0:
        await cache.revoke(workspace, jti_key(token_id) if token_id else subject, ttl)
    payload = _encoder.encode(Revoke(subject=subject, reason=reason, jti=token_id, channel=channel))
    await broker.publish_ephemeral(workspace, CONTROL_CHANNEL, payload)
    log.info("revoked ws=%s subject=%s reason=%s channel=%s", workspace, subject, reason, channel or "-")


async def check(cache: Cache, workspace: str, claims: Claims) -> None:
    """Raise Unauthenticated when the token's subject or the token itself is on the list."""
    if await cache.is_revoked(workspace, claims.subject):
        raise Unauthenticated(SUBJECT_LISTED)
    if claims.token_id and await cache.is_revoked(workspace, jti_key(claims.token_id)):
        raise Unauthenticated(JTI_LISTED)


async def check_many(cache: Cache, workspace: str, claims: Sequence[Claims]) -> dict[int, str]:
    """:func:`check` for many tokens of one workspace in one cache call: {index in ``claims``: the reason}
    for each one listed (its subject, else the token itself), as :func:`check` would refuse it."""
    keys = [c.subject for c in claims] + [jti_key(c.token_id) for c in claims if c.token_id]
    listed = await cache.revoked_among(workspace, list(dict.fromkeys(keys)))
    if not listed:
        return {}
    out: dict[int, str] = {}
    for i, c in enumerate(claims):
        if c.subject in listed:
            out[i] = SUBJECT_LISTED
        elif c.token_id and jti_key(c.token_id) in listed:
            out[i] = JTI_LISTED
    return out


class Revocable(Protocol):
    """What the router needs of a session (storm/protocol/session.py implements it; this module imports
    nothing of the protocol core)."""

    @property
    def token_id(self) -> str: ...

    def revoked(self, reason: str) -> None:
        """Close the session: its subject was logged out, banned or removed from the workspace."""
        ...

    def withdrawn(self, channel: str) -> None:
        """End the subscription to ``channel``: the user was removed from that private channel."""
        ...


class _Hub(Protocol):
    async def join(self, session: Any, workspace: str, channel: str) -> None: ...

    async def leave(self, session: Any, workspace: str, channel: str) -> None: ...


class _WorkspaceControl:
    """The hub listener of one workspace's ``_control`` channel on this gateway."""

    __slots__ = ("by_subject", "joined", "joining", "workspace")

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.by_subject: dict[str, set[Revocable]] = {}
        self.joined = False  # the hub delivers the channel's events to this listener
        self.joining = asyncio.Lock()  # one join at a time; sessions arriving meanwhile wait for its outcome

    def on_channel_event(self, channel: str, offset: int, data: bytes) -> None:
        try:
            event = _decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring an undecodable control event ws=%s", self.workspace)
            return
        if event.subject == EVERYONE:
            sessions = [s for group in self.by_subject.values() for s in group]
        else:
            sessions = list(self.by_subject.get(event.subject, ()))
        for session in sessions:
            if event.jti and session.token_id != event.jti:
                continue
            if event.channel:
                session.withdrawn(event.channel)
            else:
                session.revoked(event.reason)


class ControlRouter:
    """Sessions by workspace and subject; joins a workspace's ``_control`` while it has sessions here.

    :meth:`add` returns once the channel is joined, or raises what the join raised and holds nothing of
    the session: a failed join (the broker is down) leaves no half-registered workspace behind, so the next
    session of the workspace tries the join again (tests/unit/test_control_router.py).
    """

    def __init__(self) -> None:
        self._workspaces: dict[str, _WorkspaceControl] = {}

    async def add(self, hub: _Hub, workspace: str, subject: str, session: Revocable) -> None:
        control = self._workspaces.get(workspace)
        if control is None:
            control = self._workspaces[workspace] = _WorkspaceControl(workspace)
        control.by_subject.setdefault(subject, set()).add(session)  # before the join: no event is missed
        if control.joined:
            return
        try:
            async with control.joining:
                if not control.joined:
                    await hub.join(control, workspace, CONTROL_CHANNEL)
                    control.joined = True
        except BaseException:
            self._discard(control, subject, session)
            raise

    async def remove(self, hub: _Hub, workspace: str, subject: str, session: Revocable) -> None:
        control = self._workspaces.get(workspace)
        if control is None:
            return
        if self._discard(control, subject, session) and control.joined:
            await hub.leave(control, workspace, CONTROL_CHANNEL)

    def _discard(self, control: _WorkspaceControl, subject: str, session: Revocable) -> bool:
        """Forget ``session``; True when that was the workspace's last session (the control is dropped)."""
        sessions = control.by_subject.get(subject)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del control.by_subject[subject]
        if control.by_subject:
            return False
        if self._workspaces.get(control.workspace) is control:
            del self._workspaces[control.workspace]
        return True

    def sessions(self, workspace: str) -> int:
        control = self._workspaces.get(workspace)
        return sum(len(s) for s in control.by_subject.values()) if control else 0
