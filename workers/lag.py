"""Consumer lag per group, topic and partition, measured from Kafka itself.

Lag is the partition's high watermark minus the group's committed offset: the number KEDA's Kafka
scaler reads, and the only one that still means something when no worker runs (a dead worker
reports nothing). So the relay measures every flow's group and each worker measures its own; a
dashboard takes `max by (group, topic, partition)` over the processes reporting it.

A partition the group never committed on counts from the log start (the workers' offset reset
policy is `earliest`: all of it is still to be processed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ledgerflow.workers import metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger("ledgerflow.lag")

REQUEST_TIMEOUT_MS = 10_000
ERROR_LOG_INTERVAL_S = 60.0  # one warning a minute while Kafka is unreachable, not one a round
# Lag numbers older than this many rounds (and at least STALE_AFTER_MIN_S) are withdrawn.
STALE_ROUNDS = 3
STALE_AFTER_MIN_S = 15.0


@dataclass(frozen=True, slots=True)
class Watched:
    flow: str
    group: str
    topic: str


@dataclass(frozen=True, slots=True)
class Lag:
    watched: Watched
    partition: int
    committed: int  # -1: the group never committed on this partition
    high_watermark: int
    log_start: int

    @property
    def messages(self) -> int:
        start = self.committed if self.committed >= 0 else self.log_start
        return max(0, self.high_watermark - start)


@dataclass(slots=True)
class LagMonitor:
    bootstrap_servers: str
    watched: Sequence[Watched]
    interval_s: float = 5.0
    security: dict[str, Any] = field(default_factory=dict)  # kafka_client_options(settings)
    # Called with every round's numbers (the worker's stall watch); its failures are logged.
    on_round: Callable[[list[Lag]], Awaitable[None]] | None = None
    _admin: Any = None
    _offsets: Any = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Measure in the background until `stop()`."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self.run(self._stop), name="ledgerflow-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await task

    async def run(self, stop: asyncio.Event) -> None:
        """Measure every `interval_s` until `stop` is set; failures are counted, never raised."""
        last_error_log = -ERROR_LOG_INTERVAL_S
        loop = asyncio.get_running_loop()
        last_measured = loop.time()
        stale_after_s = max(STALE_ROUNDS * self.interval_s, STALE_AFTER_MIN_S)
        try:
            while not stop.is_set():
                try:
                    lags = await self.measure()
                    last_measured = loop.time()
                except Exception as error:  # Kafka away or a group not there yet: next round
                    metrics.LAG_MEASUREMENT_ERRORS.labels(type(error).__name__).inc()
                    if loop.time() - last_measured > stale_after_s:
                        # A number we can no longer measure is not shown as if it were current:
                        # the series vanish, and "lag unknown" can alert. One failed round
                        # (a coordinator moving) keeps the last numbers.
                        metrics.CONSUMER_LAG.clear()
                        metrics.CONSUMER_COMMITTED_OFFSET.clear()
                    await self._close()
                    if loop.time() - last_error_log >= ERROR_LOG_INTERVAL_S:
                        last_error_log = loop.time()
                        log.warning(
                            "consumer lag not measured",
                            extra={"error_class": type(error).__name__},
                        )
                else:
                    await self._report(lags)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await self._close()

    async def _report(self, lags: list[Lag]) -> None:
        if self.on_round is None:
            return
        try:
            await self.on_round(lags)
        except Exception:  # the watcher's bug must not stop the measuring
            log.exception("lag round handler failed")

    async def measure(self) -> list[Lag]:
        """One round: committed offsets per group, watermarks per topic; gauges set."""
        await self._connect()
        # Partitions are read every round (one metadata request): topics may grow.
        tps: list[TopicPartition] = []
        for described in await self._admin.describe_topics(sorted({w.topic for w in self.watched})):
            if described["error_code"] == 0:
                tps += [
                    TopicPartition(described["topic"], p["partition"])
                    for p in described["partitions"]
                ]
        tps.sort()
        if not tps:
            return []
        # Committed offsets first: a commit landing in between makes lag read high, never
        # negative.
        committed: dict[Watched, dict[TopicPartition, Any]] = {}
        for watched in self.watched:
            group_tps = [tp for tp in tps if tp.topic == watched.topic]
            committed[watched] = await self._admin.list_consumer_group_offsets(
                watched.group, partitions=group_tps
            )
        ends = await self._offsets.end_offsets(tps)
        starts = await self._offsets.beginning_offsets(tps)
        lags: list[Lag] = []
        for watched in self.watched:
            for tp in tps:
                if tp.topic != watched.topic:
                    continue
                offset = committed[watched].get(tp)
                lag = Lag(
                    watched,
                    tp.partition,
                    offset.offset if offset is not None else -1,
                    ends[tp],
                    starts[tp],
                )
                lags.append(lag)
                labels = (watched.flow, watched.group, watched.topic, str(tp.partition))
                metrics.CONSUMER_LAG.labels(*labels).set(lag.messages)
                if lag.committed >= 0:
                    metrics.CONSUMER_COMMITTED_OFFSET.labels(*labels).set(lag.committed)
        return lags

    async def _connect(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="ledgerflow-lag",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                **self.security,
            )
            await admin.start()
            self._admin = admin
        if self._offsets is None:
            # Group-less and never subscribed: used only to ask for watermarks.
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                client_id="ledgerflow-lag",
                enable_auto_commit=False,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                **self.security,
            )
            await offsets.start()
            self._offsets = offsets

    async def _close(self) -> None:
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        for client, stop in ((admin, "close"), (offsets, "stop")):
            if client is not None:
                with contextlib.suppress(Exception):
                    await getattr(client, stop)()
