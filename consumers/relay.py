"""Relay worker: every channel log's records onto their workspace's broadcast log (``STORM_BROADCAST=relay``).

Gateways that follow channels through one broadcast log per workspace (docs/adr/0013-following-channels.md,
"Amendment: the relay"; the Pulsar side is storm/adapters/pulsar_relay.py) hear a channel's records only
once this worker has copied them there.  It runs in the consumers role beside the persistence worker, on
its own Key_Shared work subscription ``relay`` (so a channel's records reach one relay at a time, in
offset order, also across redeliveries), any number of instances side by side.

Failure policy, as the persistence worker's (consumers/persistence.py), minus the store:

* A batch is acknowledged only once every record of it is durable on its broadcast log.  A relay that dies
  in between sends it again: the gateways drop records whose offset is not above the last one they
  delivered for the channel (duplicates), so a resend is harmless and the order is kept.
* Batches go one after another: the next is sent only when the previous one is written (or handed back).
  Within a batch each workspace's records go on one producer, in order; a failed send fails those queued
  after it, so a channel's records never reach the broadcast log past a hole.
* A workspace's records that cannot be written (``Unavailable``) are handed back, with a pause that doubles
  per failed batch in a row (up to ``consumers.work.OUTAGE_BACKOFF_CAP_S``); nothing is dead-lettered (the records are
  stored in their channel log already; only their live copy waits).  Records of a deleted workspace
  (``NotFound``) are acknowledged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from consumers.work import WorkWorker, outage_pause
from storm.config import Config, ConfigError
from storm.errors import NotFound
from storm.ports.broker import Broker, Delivery
from storm.ports.relay import BroadcastRelay

log = logging.getLogger("storm.consumers.relay")

SUBSCRIPTION = "relay"
RECEIVE_WAIT_S = 0.05  # the longest a relay waits for a first record: latency, not throughput, is its point


class RelayWorker(WorkWorker):
    def __init__(self, broker: Broker, config: Config, *, name: str = SUBSCRIPTION) -> None:
        """Only the broker and the settings: the relay touches no store, cache or directory."""
        if not isinstance(broker, BroadcastRelay):
            raise ConfigError("STORM_BROADCAST=relay needs a broker with broadcast logs (STORM_BROKER=pulsar)")
        cfg = config
        super().__init__("relay worker", broker.subscribe_work, name, loop_wait_s=cfg.drain_timeout_s,
                         retry_s=cfg.nack_delay_s)
        self._relay: BroadcastRelay = broker
        self._batch = cfg.consumer_batch
        self._nack_delay = cfg.nack_delay_s
        self.stats = {"batches": 0, "records": 0, "relayed": 0, "handed_back": 0, "dropped_deleted": 0,
                      "redelivered": 0, "send_ms": 0,
                      "age_ms": 0}  # send_ms: time spent waiting for the writes; age_ms: sum of records' ages

    async def _run(self) -> None:
        assert self._sub is not None
        failures = 0
        while not self._stopping:
            deliveries = await self.receive(self._batch, RECEIVE_WAIT_S)
            if not deliveries:
                continue
            handed_back = await self.process(deliveries, self._pause(failures + 1))
            if handed_back:
                failures += 1
                await asyncio.sleep(self._pause(failures))
            else:
                failures = 0

    def _pause(self, failures: int) -> float:
        return outage_pause(self._nack_delay, failures)

    async def process(self, deliveries: Sequence[Delivery], pause: float) -> int:
        """Relay a batch, each workspace's records on their own (concurrently); acknowledge what was written
        or belongs to a deleted workspace, hand back the rest after ``pause``.  Returns how many were handed
        back."""
        sub = self._sub
        assert sub is not None
        self.stats["batches"] += 1
        self.stats["records"] += len(deliveries)
        self.stats["redelivered"] += sum(1 for d in deliveries if d.delivery_count > 1)
        groups: dict[str, list[Delivery]] = {}
        for d in deliveries:
            groups.setdefault(d.record.workspace, []).append(d)
        started = time.monotonic()
        now = time.time()  # how long the records took to reach the relay (the work subscription's share)
        ages = sum(now - d.record.publish_time for d in deliveries if d.record.publish_time)
        self.stats["age_ms"] += int(ages * 1000)
        results = await asyncio.gather(*(self._relay.relay([d.record for d in g]) for g in groups.values()),
                                       return_exceptions=True)
        self.stats["send_ms"] += int((time.monotonic() - started) * 1000)
        done: list[Delivery] = []
        back: list[Delivery] = []
        for (ws, group), res in zip(groups.items(), results, strict=True):
            if res is None:
                done += group
                self.stats["relayed"] += len(group)
            elif isinstance(res, NotFound):
                log.info("dropping %d records of deleted workspace ws=%s", len(group), ws)
                done += group
                self.stats["dropped_deleted"] += len(group)
            else:
                log.warning("relay of %d records failed ws=%s (%s); handing them back, again in %.1f s",
                            len(group), ws, res, pause)
                back += group
        if done:
            await sub.ack(done)
        if back:
            self.stats["handed_back"] += len(back)
            with contextlib.suppress(Exception):
                await sub.nack(back, pause)
        return len(back)
