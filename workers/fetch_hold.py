"""An idle consumer waits at the broker for its first record instead of polling.

aiokafka sends a consumer's next fetch as soon as the last one returns. For batching under load
the broker holds a fetch for `batch_wait_ms` (10 ms) or until `fetch_min_bytes` are ready, so an
idle consumer sends ~100 fetches a second, each ~0.45 ms of Python in the worker and as much in
the broker (docs/benchmarks.md, fifth round). A worker runs a consumer per flow, and most flows
are idle most of the time, also while one of them runs at full speed.

A consumer whose fetches came back empty for `IDLE_AFTER_S` asks the broker to answer at the
first byte (`fetch_min_bytes=1`) or after the idle hold; its first records put the batching
settings back. That adds no latency: a fetch held for one byte returns when a record lands.
aiokafka sends no fetch to a broker while records of it are still buffered, so a held fetch never
keeps records of a buffered partition waiting.

The settings are the fetcher's own (aiokafka's `Fetcher._fetch_min_bytes` and
`_fetch_max_wait_ms`, read for each request it builds); on a client without them nothing is
changed and the consumer polls as before, with a warning.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiokafka import AIOKafkaConsumer

log = logging.getLogger("ledgerflow.worker")

IDLE_AFTER_S: Final = 0.2
IDLE_MIN_BYTES: Final = 1
# aiokafka's Fetcher (0.14): the settings each fetch request is built from, and the coroutine
# that sends one request and returns whether records were buffered.
MIN_BYTES: Final = "_fetch_min_bytes"
MAX_WAIT_MS: Final = "_fetch_max_wait_ms"
SEND_FETCH: Final = "_proc_fetch_request"


class FetchHold:
    """Switches one consumer's fetches between the batching settings and the idle hold."""

    def __init__(
        self,
        fetcher: Any,
        idle_hold_ms: int,
        clock: Callable[[], float],
        on_change: Callable[[bool], None],
    ) -> None:
        self._fetcher = fetcher
        self._busy = (getattr(fetcher, MIN_BYTES), getattr(fetcher, MAX_WAIT_MS))
        self._idle = (IDLE_MIN_BYTES, max(idle_hold_ms, self._busy[1]))
        self._clock = clock
        self._on_change = on_change
        self._records_at = clock()
        self.idle = False
        self._fetch = getattr(fetcher, SEND_FETCH)
        setattr(fetcher, SEND_FETCH, self._fetch_and_adjust)

    async def _fetch_and_adjust(self, assignment: Any, node_id: int, request: Any) -> bool:
        got_records = bool(await self._fetch(assignment, node_id, request))
        now = self._clock()
        if got_records:
            self._records_at = now
            if self.idle:
                self._set(idle=False)
        elif not self.idle and now - self._records_at >= IDLE_AFTER_S:
            self._set(idle=True)
        return got_records

    def _set(self, *, idle: bool) -> None:
        self.idle = idle
        min_bytes, max_wait_ms = self._idle if idle else self._busy
        setattr(self._fetcher, MIN_BYTES, min_bytes)
        setattr(self._fetcher, MAX_WAIT_MS, max_wait_ms)
        self._on_change(idle)


def hold_when_idle(
    consumer: AIOKafkaConsumer,
    idle_hold_ms: int,
    on_change: Callable[[bool], None],
    clock: Callable[[], float] = time.monotonic,
) -> FetchHold | None:
    """Install the idle hold on a started consumer; None when disabled or not possible.

    `on_change(idle)` is called on every switch (the flow's gauge)."""
    if idle_hold_ms <= 0:
        return None
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not all(
        hasattr(fetcher, a) for a in (MIN_BYTES, MAX_WAIT_MS, SEND_FETCH)
    ):
        log.warning("the Kafka client has no fetcher settings to adjust: idle consumers poll")
        return None
    return FetchHold(fetcher, idle_hold_ms, clock, on_change)
