"""The webhook worker: channel events → signed POSTs to the workspace's outgoing webhooks.

Design and failure policy: docs/consumers.md ("The webhook worker"); the signature scheme and the target
rules: docs/security.md ("Webhooks").  In short:

* it reads the work subscription ``"webhooks"`` of the channel logs, beside ``"persistence"``: a record is
  there once the broker made it durable (the chat write's commit point), and nothing on the publish path
  waits for this worker, so a slow or failing endpoint never slows chat;
* :func:`handle` is pure: a record and the workspace's webhooks in, the event and the webhooks it goes to
  out (or ``ValueError`` for a poison record);
* the runner delivers each record's event to every matching webhook concurrently, each with its own
  bounded retries (exponential backoff, full jitter: :class:`storm.webhooks.RetryPolicy`), logs every
  attempt in the store's delivery log, and acknowledges the record once every webhook has a final
  outcome (delivered or dead-lettered).  At most ``max_in_flight`` records are in flight; past that the
  worker stops taking records from the broker, which holds them (the backlog grows; chat does not slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlsplit

from consumers.work import WorkWorker
from storm.bootstrap import Services
from storm.errors import NotFound
from storm.ports.broker import Delivery
from storm.ports.store import UnitOfWork
from storm.webhooks import (
    DeliveryAttempt,
    DeliveryStatus,
    RetryPolicy,
    Webhook,
    WebhookEvent,
    address_allowed,
    encode_event,
    event_of,
    headers,
    matches,
    private_targets_allowed,
    retriable,
)

log = logging.getLogger("storm.consumers.webhooks")

SUBSCRIPTION = "webhooks"
BATCH = 50
MAX_IN_FLIGHT = 64  # records being delivered at once, per worker
NACK_DELAY_S = 1.0


class DeliveryFailed(Exception):
    """No HTTP answer (connection refused, timeout, refused target); ``str`` says why."""


class Poster(Protocol):
    """The HTTP seam: POST ``body`` and return the status code, or raise :class:`DeliveryFailed`."""

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int: ...

    async def close(self) -> None: ...


class HttpxPoster:
    """httpx, imported here and only when the worker starts, so a server installed without the extras
    that bring httpx still starts (webhook delivery is then off, with one warning)."""

    def __init__(self, *, allow_private: bool) -> None:
        import httpx  # lazy: an optional dependency (the pulsar extra)

        self._httpx = httpx
        # no redirects (a 3xx could point anywhere, SSRF), no proxies or netrc from the environment
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._allow_private = allow_private

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        await self._check_target(url)
        try:
            response = await self._client.post(url, content=body, headers=headers, timeout=timeout)
        except self._httpx.TimeoutException:
            raise DeliveryFailed(f"timed out after {timeout:g}s") from None
        except self._httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:200]) from None
        return response.status_code

    async def _check_target(self, url: str) -> None:
        """Refuse names that resolve to a private, loopback or link-local address (docs/security.md)."""
        if self._allow_private:
            return
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError as exc:
            raise DeliveryFailed(f"cannot resolve {host}: {exc}") from None
        if not infos or not all(address_allowed(str(info[4][0]), False) for info in infos):
            raise DeliveryFailed(f"{host} resolves to an address that is not allowed")

    async def close(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class Handled:
    event: WebhookEvent | None  # None: nothing to deliver (typing, presence, no matching webhook)
    webhooks: tuple[Webhook, ...]


def handle(delivery: Delivery, webhooks: Sequence[Webhook]) -> Handled:
    """Pure: the record's event and the webhooks it goes to.  Raises ``ValueError`` for a poison record."""
    r = delivery.record
    event = event_of(r.workspace, r.channel, r.offset, r.payload)
    if event is None:
        return Handled(None, ())
    return Handled(event, tuple(w for w in webhooks if matches(w, event)))


class WebhookWorker(WorkWorker):
    """A component of ``create_app`` (and of the consumers role): start/stop like the persistence worker."""

    def __init__(self, services: Services, *, policy: RetryPolicy | None = None, poster: Poster | None = None,
                 rand: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        super().__init__("webhook worker", lambda n: services.broker.subscribe_work(n), SUBSCRIPTION,
                         loop_wait_s=1.0, retry_s=NACK_DELAY_S)  # the loop sees the flag within 0.25 s
        self._services = services
        self._policy = policy or RetryPolicy.of(services.config)
        self._poster = poster
        self._rand = rand
        self._sleep = sleep
        self._slots = asyncio.Semaphore(max_in_flight)
        self._inflight: set[asyncio.Task[None]] = set()
        self.stats = {"records": 0, "events": 0, "delivered": 0, "failed_attempts": 0, "dead_lettered": 0,
                      "poison": 0}

    async def start(self) -> None:
        if self._poster is None:
            try:
                self._poster = HttpxPoster(allow_private=private_targets_allowed(self._services.config))
            except ImportError:
                log.warning("webhook delivery is off: httpx is not installed (pip install 'storm[pulsar]')")
                self._life.begin_start()
                self._life.started()
                return
        await super().start()

    async def _drain(self) -> None:
        """On stop: wait up to ``STORM_DRAIN_TIMEOUT_S`` for the records in flight, then cancel them
        (unacknowledged, the broker delivers them again)."""
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self._services.config.drain_timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _closed(self) -> None:
        if self._poster is not None:
            poster, self._poster = self._poster, None
            with contextlib.suppress(Exception):
                await poster.close()

    async def _run(self) -> None:
        assert self._sub is not None
        while not self._stopping:
            deliveries = await self.receive(BATCH, 0.25)
            if not deliveries:
                continue
            try:
                hooks = await self._webhooks_of(deliveries)
            except Exception:  # the store or cache is down: hand the batch back
                workspaces = ",".join(sorted({d.record.workspace for d in deliveries}))
                log.exception("loading webhooks failed ws=%s; handing %d records back", workspaces, len(deliveries))
                with contextlib.suppress(Exception):
                    await self._sub.nack(deliveries, NACK_DELAY_S)
                await asyncio.sleep(NACK_DELAY_S)
                continue
            # A workspace without webhooks (most of them) has nothing to deliver: its records are acknowledged
            # together, without a task or a decode each.
            idle = [d for d in deliveries if not hooks[d.record.workspace]]
            if idle:
                self.stats["records"] += len(idle)
                await self._sub.ack(idle)
                if len(idle) == len(deliveries):
                    continue
                deliveries = [d for d in deliveries if hooks[d.record.workspace]]
            for d in deliveries:
                await self._slots.acquire()  # backpressure: the broker keeps what we cannot take yet
                task = asyncio.get_running_loop().create_task(self._process_guarded(d, hooks[d.record.workspace]))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _webhooks_of(self, deliveries: Sequence[Delivery]) -> dict[str, list[Webhook] | None]:
        """The webhooks of each workspace of the batch (None: the workspace was deleted).  Whether it has any
        is the directory's (cached, invalidated by the tenants API on every create and delete: the same
        consistency as a membership); the webhooks themselves are read from the store, once per workspace
        and batch, only for a workspace that has some.  Read for every batch, at 1 000 records/s, the
        webhooks of workspaces that had none were the consumers' largest cost (docs/benchmarks.md)."""
        found: dict[str, list[Webhook] | None] = {}
        directory = self._services.directory
        for slug in {d.record.workspace for d in deliveries}:
            try:
                workspace = await directory.workspace(slug)
            except NotFound:
                found[slug] = None
                continue
            if not await directory.has_webhooks(workspace):
                found[slug] = []
                continue

            async def load(uow: UnitOfWork, workspace_id: uuid.UUID = workspace.id) -> list[Webhook]:
                return await uow.webhooks.list(workspace_id)

            found[slug] = await self._services.store.run(load)
        return found

    async def _process_guarded(self, d: Delivery, hooks: list[Webhook] | None) -> None:
        try:
            await self.process(d, hooks)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the broker failed the ack: hand the record back
            r = d.record
            log.exception("record failed ws=%s channel=%s offset=%d; handing it back", r.workspace, r.channel,
                          r.offset)
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.nack([d], NACK_DELAY_S)
        finally:
            self._slots.release()

    async def process(self, d: Delivery, hooks: list[Webhook] | None) -> None:
        """Deliver one record to the matching ``hooks`` of its workspace (None: the workspace is gone),
        then acknowledge it."""
        sub = self._sub
        assert sub is not None
        r = d.record
        self.stats["records"] += 1
        if r.offset <= 0:  # ephemeral records are never put on work subscriptions; be safe anyway
            await sub.ack([d])
            return
        if hooks is None:
            await sub.ack([d])  # deleted workspace: its webhooks went with it
            return
        try:
            handled = handle(d, hooks)
        except ValueError as exc:
            self.stats["poison"] += 1
            log.error("dead-lettering ws=%s channel=%s offset=%d: %s", r.workspace, r.channel, r.offset, exc)
            await sub.dead_letter(d, str(exc)[:200])
            return
        if handled.event is not None and handled.webhooks:
            self.stats["events"] += 1
            body = encode_event(handled.event)
            await asyncio.gather(*(self.deliver(w, handled.event, body) for w in handled.webhooks))
        await sub.ack([d])

    async def deliver(self, webhook: Webhook, event: WebhookEvent, body: bytes) -> DeliveryStatus:
        """POST one event to one webhook until it is delivered or the policy gives up; logs each attempt."""
        poster = self._poster
        assert poster is not None
        policy = self._policy
        for attempt in range(1, policy.max_attempts + 1):
            started = time.monotonic()
            status: int | None = None
            try:
                status = await poster.post(webhook.url, body, headers(webhook.secret, event.id, int(time.time()),
                                                                       body), policy.timeout_s)
                error = "" if 200 <= status < 300 else f"HTTP {status}"
            except DeliveryFailed as exc:
                error = str(exc)
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if not error:
                outcome = DeliveryStatus.DELIVERED
                self.stats["delivered"] += 1
            elif attempt >= policy.max_attempts or not retriable(status):
                outcome = DeliveryStatus.DEAD_LETTERED
                self.stats["dead_lettered"] += 1
                log.error("dead-lettering webhook delivery ws=%s webhook=%s event=%s after attempt %d: %s",
                          event.workspace, webhook.id, event.id, attempt, error)
            else:
                outcome = DeliveryStatus.FAILED
                self.stats["failed_attempts"] += 1
                log.warning("webhook delivery failed ws=%s webhook=%s event=%s attempt=%d: %s; will retry",
                            event.workspace, webhook.id, event.id, attempt, error)
            await self._log(DeliveryAttempt(id=uuid.uuid4(), workspace_id=webhook.workspace_id,
                                            webhook_id=webhook.id, event_id=event.id, event_type=event.type,
                                            attempt=attempt, status=outcome, http_status=status, error=error,
                                            duration_ms=elapsed_ms), event.workspace,
                            prune=outcome is not DeliveryStatus.FAILED)
            if outcome is not DeliveryStatus.FAILED:
                return outcome
            await self._sleep(policy.backoff(attempt, self._rand))
        raise AssertionError("unreachable: the last attempt is delivered or dead-lettered")

    async def _log(self, attempt: DeliveryAttempt, slug: str, *, prune: bool) -> None:
        """The delivery log is for admins; a store failure here must not cause a second POST.  With the last
        attempt of an event, the webhook's entries older than ``STORM_WEBHOOK_LOG_RETENTION_S`` go (a range
        of the log's index, in the same transaction)."""
        cutoff = attempt.at - timedelta(seconds=self._services.config.webhook_log_retention_s)

        async def write(uow: UnitOfWork) -> None:
            await uow.webhooks.log_delivery(attempt)
            if prune:
                await uow.webhooks.prune_deliveries(attempt.workspace_id, attempt.webhook_id, cutoff)

        try:
            await self._services.store.run(write)
        except Exception as exc:
            log.warning("could not log webhook delivery ws=%s webhook=%s: %r", slug, attempt.webhook_id, exc)
