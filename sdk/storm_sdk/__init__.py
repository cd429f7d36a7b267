"""STORM Python client SDK: a resilient asyncio client of protocol v1.  Guide: docs/sdk.md.

    async with StormClient("ws://127.0.0.1:8000/ws", token_provider) as client:
        await client.subscribe(channel_id)
        client.publish(channel_id, "hello")
        async for event in client.events():
            ...
"""

from storm_sdk.backoff import Backoff, BackoffPolicy, retry_hint_s
from storm_sdk.client import ClientOptions, StormClient, TokenProvider
from storm_sdk.dev import HttpError, dev_token_provider, list_channels, ws_url
from storm_sdk.errors import ClientClosed, ConnectionLost, OutboxFull, RequestTimeout, StormError, StormSdkError
from storm_sdk.events import (
    Ack,
    Acked,
    ChannelUnread,
    ConnectionState,
    Delete,
    Edit,
    Event,
    Hello,
    History,
    HistoryMessage,
    Limits,
    Message,
    Presence,
    PresenceJoin,
    PresenceLeave,
    Reaction,
    ResyncReason,
    ResyncRequired,
    SendFailed,
    ServerError,
    StateChanged,
    Subscribed,
    TokenExpiring,
    TokenRefreshed,
    Typing,
    Unread,
    Unsubscribed,
    User,
)
from storm_sdk.outbox import Outbox, PendingMessage, SendState

__all__ = [
    "Ack", "Acked", "Backoff", "BackoffPolicy", "ChannelUnread", "ClientClosed", "ClientOptions", "ConnectionLost",
    "ConnectionState", "Delete", "Edit", "Event", "Hello", "History", "HistoryMessage", "HttpError", "Limits",
    "Message", "Outbox", "OutboxFull", "PendingMessage", "Presence", "PresenceJoin", "PresenceLeave",
    "Reaction", "RequestTimeout", "ResyncReason", "ResyncRequired", "SendFailed", "SendState", "ServerError",
    "StateChanged", "StormClient", "StormError", "StormSdkError", "Subscribed", "TokenExpiring", "TokenProvider",
    "TokenRefreshed", "Typing", "Unread", "Unsubscribed", "User", "dev_token_provider", "list_channels",
    "retry_hint_s", "ws_url",
]
