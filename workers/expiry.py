"""The cash-out worker's hold expiry: bounded rounds, exactly once across replicas.

No process kind of its own (DESIGN.md §5.1): every cash-out worker sweeps. Two replicas may pick
the same holds; each round locks the holds' wallets and decides again under the locks, so a hold
is voided once, and one settled or returned meanwhile is left alone (ledger_db/apply.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ledgerflow.workers import metrics
from ledgerflow.workers.failures import is_infrastructure

if TYPE_CHECKING:
    from ledgerflow.ledger_db.apply import LedgerWriter

log = logging.getLogger("ledgerflow.expiry")
# Rounds in a row without a pause while holds keep expiring (a backlog after an outage).
BACKLOG_ROUNDS_MAX = 20
FAILURE_BACKOFF_MAX_S = 30.0
# How often the pending holds are counted by age for the gauge.
PENDING_SCAN_INTERVAL_S = 15.0

_PENDING_BY_AGE = """
SELECT b.le, count(h.cashout_id) AS holds
FROM unnest($1::float8[]) AS b(le)
LEFT JOIN holds h ON h.status = 'pending'
 AND extract(epoch FROM clock_timestamp() - h.placed_at) <= b.le
GROUP BY b.le
"""


@dataclass(slots=True)
class HoldExpiry:
    interval_s: float
    round_max: int
    _task: asyncio.Task[None] | None = None
    _failures: int = 0
    _scanned_at: float = field(default=0.0)

    def start(self, writer: LedgerWriter) -> None:
        assert self._task is None, "one sweep per worker"
        self._task = asyncio.create_task(self._run(writer), name="ledgerflow-hold-expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, writer: LedgerWriter) -> None:
        while True:
            pause = self.interval_s
            try:
                for _ in range(BACKLOG_ROUNDS_MAX):
                    voided = await writer.expire_holds(self.round_max)
                    metrics.HOLDS_EXPIRED.inc(len(voided))
                    if voided:
                        log.info("holds expired", extra={"holds": len(voided)})
                    if len(voided) < self.round_max:
                        break
                await self._count_pending(writer)
                self._failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The database is away or a statement failed: the next round tries again; an
                # expiry is never lost, only late (the hold stays pending, its money held).
                self._failures += 1
                metrics.HOLD_EXPIRY_FAILURES.labels(type(error).__name__).inc()
                log.warning(
                    "hold expiry round failed, will retry",
                    extra={
                        "error_class": type(error).__name__,
                        "infrastructure": is_infrastructure(error),
                        "attempt": self._failures,
                    },
                )
                pause = min(FAILURE_BACKOFF_MAX_S, self.interval_s * 2 ** min(self._failures, 10))
            await asyncio.sleep(pause)

    async def _count_pending(self, writer: LedgerWriter) -> None:
        now = time.monotonic()
        if now - self._scanned_at < PENDING_SCAN_INTERVAL_S:
            return
        self._scanned_at = now
        bounds = [float(b) for b in metrics.HOLD_AGE_BUCKETS_S]
        rows = await writer.pool.fetch(_PENDING_BY_AGE, [*bounds, float("inf")])
        for row in rows:
            label = "+Inf" if row["le"] == float("inf") else str(int(row["le"]))
            metrics.HOLDS_PENDING.labels(label).set(row["holds"])
