"""The front door bounds each client socket's kernel send buffer (``STORM_SOCKET_SEND_BUFFER``,
gateway/frontdoor.py): with the kernel's autotuning a client that stops reading held up to 4 MiB in the kernel
before anything waited in its outbox, so the outbox bound (4008) was never reached in the chaos matrix's
slow-consumers experiment (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.frontdoor import FrontDoor
from storm.config import Config, ConfigError


async def _accepted_sndbuf(config: Config) -> int:
    door = FrontDoor(SimpleNamespace(config=config), guard=None, upstream_path="/x",  # type: ignore[arg-type]
                     host="127.0.0.1", port=0)
    await door.start()
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
        for _ in range(100):
            if door.sockets:
                break
            await asyncio.sleep(0.01)
        [accepted] = list(door.sockets)
        sock: Any = accepted._transport.get_extra_info("socket")
        size = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        writer.close()
        await writer.wait_closed()
        return size
    finally:
        await door.close()


async def test_each_client_socket_gets_the_configured_send_buffer() -> None:
    assert await _accepted_sndbuf(Config(socket_send_buffer=65536)) == 2 * 65536  # Linux doubles what is set


async def test_zero_leaves_the_kernels_autotuning() -> None:
    bounded = await _accepted_sndbuf(Config())
    assert bounded == 2 * Config().socket_send_buffer  # the default bounds it
    assert await _accepted_sndbuf(Config(socket_send_buffer=0)) != bounded  # 0: whatever the kernel chose


def test_a_negative_send_buffer_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="STORM_SOCKET_SEND_BUFFER"):
        Config(socket_send_buffer=-1).validate()
