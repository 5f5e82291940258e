"""The outbox relay: publish committed result events to Kafka, in order, at least once.

One relay is active at a time: it holds a PostgreSQL session advisory lock on the connection it
reads and marks with, so if it dies the lock is freed and a standby takes over
(docs/decisions/outbox-relay.md). It sends a batch in id order through an idempotent producer,
waits for every acknowledgement, then marks the batch published. A crash between the two
re-sends the batch with the same CloudEvents ids; nothing is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka.errors import KafkaError

from ledger_db.outbox import (
    OUTBOX_CHANNEL,
    fetch_pending,
    mark_published,
    pending_stats,
    try_lock_relay,
)
from workers import http, metrics, tracing
from workers.kafka_io import idempotent_producer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from ledger_db.outbox import OutboxRow
    from workers.lag import LagMonitor

log = logging.getLogger("ledgerflow.relay")

POLL_INTERVAL_S = 0.5  # fallback when a NOTIFY is missed; NOTIFY is only a hint
LOCK_RETRY_INTERVAL_S = 1.0
STATS_INTERVAL_S = 2.0
ERROR_BACKOFF_MAX_S = 5.0


@dataclass(slots=True)
class Relay:
    database_url: str
    bootstrap_servers: str
    batch_rows_max: int = 1_000
    kafka_security: dict[str, Any] = field(default_factory=dict)  # kafka_client_options()
    active: bool = False
    published: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stats_at: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: wait for the lock, then relay; reconnect after any failure."""
        producer = idempotent_producer(
            self.bootstrap_servers, "ledgerflow-relay", self.kafka_security
        )
        await producer.start()
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._session(producer, stop)
                    failures = 0
                except (
                    OSError,
                    KafkaError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                ) as error:
                    failures += 1
                    metrics.RELAY_ERRORS.labels(type(error).__name__).inc()
                    log.warning("relay session failed", extra={"error_class": type(error).__name__})
                    await _wait(stop, min(ERROR_BACKOFF_MAX_S, 0.1 * 2**failures))
        finally:
            self.active = False
            metrics.RELAY_ACTIVE.set(0)
            await producer.stop()

    async def _session(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        # Marking rows published needs no flush to disk: a mark lost in a crash only re-sends
        # events (same ids), which consumers drop. It keeps the relay off the commit queue.
        conn = await asyncpg.connect(
            self.database_url, server_settings={"synchronous_commit": "off"}
        )
        try:
            while not await try_lock_relay(conn):
                if await _wait(stop, LOCK_RETRY_INTERVAL_S):
                    return
            self.active = True
            metrics.RELAY_ACTIVE.set(1)
            log.info("relay active")
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            while not stop.is_set():
                self._wake.clear()
                rows = await fetch_pending(conn, self.batch_rows_max)
                if rows:
                    await self._publish(producer, rows)
                    await mark_published(conn, [row.id for row in rows])
                    self.published += len(rows)
                    metrics.RELAY_PUBLISHED.inc(len(rows))
                await self._update_stats(conn)
                if len(rows) < self.batch_rows_max:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
        finally:
            self.active = False
            metrics.RELAY_ACTIVE.set(0)
            await conn.close()

    async def _publish(self, producer: AIOKafkaProducer, rows: list[OutboxRow]) -> None:
        """Sent in id order; per-key order holds because one partition's sends stay in order."""
        futures = []
        # Each event continues the trace its outbox row stored (workers/tracing.py).
        with tracing.publish_spans(rows) as traceparents:
            for row, traceparent in zip(rows, traceparents, strict=True):
                headers = [("content-type", b"application/cloudevents+json")]
                if traceparent:
                    headers.append(("traceparent", traceparent.encode()))
                futures.append(
                    await producer.send(row.topic, row.payload, key=row.key, headers=headers)
                )
            for future in futures:
                await future

    async def _update_stats(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_INTERVAL_S:
            return
        self._stats_at = now
        pending, oldest_age = await pending_stats(conn)
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_OLDEST_AGE.set(oldest_age)

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when stop was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def build_relay_app(
    database_url: str,
    bootstrap_servers: str,
    batch_rows_max: int,
    lag_monitor: LagMonitor | None = None,
    kafka_security: dict[str, Any] | None = None,
) -> http.ASGIApp:
    """The relay as an ASGI app: the relay loop (and the consumer lag measurement of every
    flow, which must go on when no worker runs) lives for the app's lifespan."""
    relay = Relay(database_url, bootstrap_servers, batch_rows_max, kafka_security or {})
    stop = asyncio.Event()

    async def ready() -> str | None:
        # A standby relay is healthy and ready: it takes over when the active one dies.
        return None

    async def lifespan(scope: http.Scope, receive: http.Receive, send: http.Send) -> None:  # noqa: ARG001
        task: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                metrics.set_build_info("relay")
                task = asyncio.create_task(relay.run(stop))
                if lag_monitor is not None:
                    lag_monitor.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if lag_monitor is not None:
                    await lag_monitor.stop()
                stop.set()
                if task is not None:
                    await task
                tracing.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return http.router(http.routes(ready), lifespan)
