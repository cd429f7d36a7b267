"""The chaos driver's stopped reader against a real gateway (chaos-experiments/slow-consumers.json).

A reader that stops reading never sees the gateway's 4008 close frame: the frame sits behind everything the
reader did not read, and the gateway cuts the socket ``CLOSE_WAIT_S`` later.  The reader learns of the cut
from its next ping; the gateways' own ``storm.gateway.disconnects{code:4008}`` count says why.  Before this
test the driver recorded such a reader as "not closed", and the slow-consumers experiment deviated on every
run although the gateways had closed all 20 of its readers with 4008."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import pytest
import websockets

from storm_tools.chaos.driver import _connect_small_window, _SlowReader, _Stats
from storm_tools.chaos.judge import server_closes
from storm_tools.chaos.probes import slow_readers_ok
from storm_tools.chaos.slo_seam import collect, points_to_json
from storm_tools.seed import channel_id
from tests.support.dev_server import StormProcess

pytestmark = pytest.mark.e2e
GENERAL = channel_id("demo", "general")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _token(base: str, user: str) -> str:
    with urllib.request.urlopen(f"{base}/dev/token?user={user}&workspace=demo", timeout=5) as resp:
        return str(json.loads(resp.read())["token"])


async def test_a_stopped_reader_is_cut_and_the_gateways_count_the_cut_as_4008(tmp_path) -> None:
    statsd_port = _free_udp_port()
    server = StormProcess(tmp_path, {
        "STORM_OUTBOX_MAX_BYTES": "65536", "STORM_SOCKET_SEND_BUFFER": "16384",
        "STORM_PUBLISH_RATE": "100000", "STORM_PUBLISH_BURST": "100000", "STORM_USER_PUBLISH_RATE": "100000",
        "STORM_USER_PUBLISH_BURST": "100000", "STORM_WORKSPACE_PUBLISH_RATE": "100000",
        "DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": str(statsd_port), "STORM_METRICS_INTERVAL_S": "0.5"})
    server.start()
    port, base = server.port, server.base
    try:
        async with collect(statsd_port) as collector:
            stats = _Stats()
            reader = await _connect_small_window(
                lambda: _SlowReader("127.0.0.1", port, _token(base, "carol"), GENERAL, stats), "127.0.0.1", port)
            await asyncio.wait_for(reader.ready, 10)
            reader.transport.pause_reading()
            assert reader.ended == "open"

            # ~600 KB for the stopped reader: past its outbox (64 KiB) and every socket buffer on the way
            async with websockets.connect(base.replace("http", "ws") + "/ws") as pub:
                await pub.send(json.dumps({"op": "auth", "token": _token(base, "alice")}))
                body = "x" * 3000
                for i in range(200):
                    await pub.send(json.dumps({"op": "publish", "id": i + 1, "channel": GENERAL,
                                               "cmid": f"slow-{i}", "text": body}))
                acks = 0
                deadline = time.monotonic() + 30
                while acks < 200 and time.monotonic() < deadline:
                    acks += (await asyncio.wait_for(pub.recv(), 30)).count('"type":"ack"')
                assert acks == 200

            deadline = time.monotonic() + 20  # the cut comes CLOSE_WAIT_S (2 s) after the close frame
            while reader.ended == "open" and time.monotonic() < deadline:
                reader.send_text(b'{"op":"ping"}')  # as the driver's pinger: a write on a cut socket fails
                await asyncio.sleep(0.5)
            assert reader.ended == "reset"  # the frame never got through to a reader that stopped reading
            await asyncio.sleep(1.5)  # the gateway's next metrics flush
            closed_4008 = server_closes(points_to_json(collector), 4008)
        assert closed_4008 == 1
        assert slow_readers_ok({"carol": reader.ended}, must_close=True, closed_4008=closed_4008)
    finally:
        server.stop()
