"""Token refresh against a real `storm dev` whose dev tokens live 4 s and are announced 3 s ahead:
the SDK answers `token.expiring` by sending `auth` again with a fresh token from the provider, so the
same connection outlives several token lifetimes; a provider that fails makes the client reconnect
(4009) with a fresh token instead."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from storm_sdk import (
    BackoffPolicy,
    ClientOptions,
    ConnectionState,
    StateChanged,
    StormClient,
    TokenExpiring,
    TokenRefreshed,
    dev_token_provider,
    list_channels,
)

from tests.support.dev_server import StormProcess

pytestmark = [pytest.mark.e2e, pytest.mark.sdk]

OPTIONS = ClientOptions(backoff=BackoffPolicy(initial_s=0.1, max_s=0.5))


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StormProcess]:
    server = StormProcess(tmp_path_factory.mktemp("storm-tokens"),
                          env={"STORM_TOKEN_TTL_S": "4", "STORM_TOKEN_EXPIRY_WARNING_S": "3"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _run_for(client: StormClient, seconds: float) -> list[Any]:
    seen: list[Any] = []

    async def collect() -> None:
        async for event in client.events():
            seen.append(event)

    task = asyncio.create_task(collect())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return seen


async def test_token_expiring_is_answered_with_a_fresh_token_on_the_same_connection(
        short_tokens: StormProcess) -> None:
    provider = dev_token_provider(short_tokens.base, "alice")
    calls = 0

    async def counting() -> str:
        nonlocal calls
        calls += 1
        return await provider()

    channel = (await list_channels(short_tokens.base, await provider()))["general"]
    async with StormClient(short_tokens.ws, counting, OPTIONS) as client:
        await client.wait_online(10)
        await client.subscribe(channel)
        session = client.hello.session  # type: ignore[union-attr]
        seen = await _run_for(client, 9.0)  # more than two token lifetimes
        assert client.state is ConnectionState.ONLINE
        assert client.hello.session == session  # type: ignore[union-attr]  # never reconnected
        assert await client.publish(channel, "still here").wait(5)
    assert any(isinstance(e, TokenExpiring) for e in seen)
    assert sum(isinstance(e, TokenRefreshed) for e in seen) >= 2
    assert not [e for e in seen if isinstance(e, StateChanged) and e.state is ConnectionState.RECONNECTING]
    assert calls >= 3  # the first connect and each refresh asked the provider


async def test_when_refresh_fails_the_client_reconnects_with_a_fresh_token(short_tokens: StormProcess) -> None:
    provider = dev_token_provider(short_tokens.base, "bob")
    calls = 0

    async def flaky() -> str:  # works at connect time only: every refresh attempt fails
        nonlocal calls
        calls += 1
        if calls % 2 == 0:
            raise RuntimeError("identity provider down")
        return await provider()

    async with StormClient(short_tokens.ws, flaky, OPTIONS) as client:
        await client.wait_online(10)
        seen = await _run_for(client, 6.0)
        await client.wait_online(5)
    closes = [e for e in seen if isinstance(e, StateChanged) and e.state is ConnectionState.RECONNECTING]
    assert closes and closes[0].code == 4009  # token expired: reconnectable, with a fresh token
    assert client.state is ConnectionState.CLOSED
