"""The unit of work: one PostgreSQL transaction, retried as a whole on transient conflicts.

Every write of a batch (idempotency records, journal, balances, outbox) happens inside one call
of `run_in_transaction`, so they commit together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

import asyncpg

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

log = logging.getLogger("ledgerflow.db")

# Retrying repeats the whole transaction with the same commands, which is safe: nothing of a
# failed attempt was committed. A unique violation means another transaction decided one of our
# keys (or phone numbers) first; the retry reads its outcome and grades ours as a duplicate.
RETRYABLE: dict[type[BaseException], str] = {
    asyncpg.DeadlockDetectedError: "deadlock",
    asyncpg.SerializationError: "serialization",
    asyncpg.UniqueViolationError: "unique_violation",
    asyncpg.LockNotAvailableError: "lock_timeout",
}
BACKOFF_BASE_S = 0.005
BACKOFF_MAX_S = 0.5

# A writer frozen in the middle of a COPY (a paused or partitioned worker, PostgreSQL waiting for
# the rest of its rows) keeps its row locks with no timeout to end it: the session is not idle in
# transaction, and PostgreSQL does not act on a statement_timeout while it waits for COPY data
# from its client. The next writer whose lock wait times out ends such sessions of the same
# application once they have been silent as long as a silent transaction may be
# (idle_in_transaction_session_timeout); their transactions roll back, nothing of them is lost.
END_STUCK_COPIES = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND application_name = current_setting('application_name')
  AND state = 'active' AND wait_event = 'ClientRead' AND query ILIKE 'copy %'
  AND current_setting('idle_in_transaction_session_timeout') NOT IN ('0', '')
  AND query_start
      < clock_timestamp() - current_setting('idle_in_transaction_session_timeout')::interval
"""


@dataclass(slots=True)
class RetryStats:
    """Retries by cause, for metrics and tests."""

    by_cause: Counter[str] = field(default_factory=Counter)
    stuck_sessions_ended: int = 0  # writers frozen mid-COPY whose locks were in the way

    @property
    def total(self) -> int:
        return sum(self.by_cause.values())


def retry_cause(error: BaseException) -> str | None:
    for kind, cause in RETRYABLE.items():
        if isinstance(error, kind):
            return cause
    return None


async def _nothing_to_reset(_conn: asyncpg.Connection) -> None:
    """The pool's reset: asyncpg has rolled back any open transaction by now."""


async def create_pool(
    dsn: str,
    *,
    size_max: int = 4,
    size_min: int = 1,
    read_only: bool = False,
    statement_timeout_ms: int = 30_000,
    lock_timeout_ms: int = 5_000,
    idle_in_transaction_timeout_ms: int = 10_000,
) -> asyncpg.Pool:
    """A small pool: it multiplies with replicas, and one batch needs one connection.

    A client that stops talking inside a transaction (a frozen or partitioned worker) keeps its
    wallet rows locked; after `idle_in_transaction_timeout_ms` PostgreSQL ends its session and
    frees them for the worker Kafka gives the partitions to (tests/e2e, the SIGSTOP scenario).
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=size_min,
        max_size=size_max,
        # Nothing run on a pooled connection leaves session state: transactions only, with
        # transaction-scoped locks and settings (the relay's session lock and LISTEN are on a
        # connection of its own). asyncpg's full reset on release (unlock all, close all,
        # unlisten, reset all) would be one more round trip per batch and per read for nothing;
        # its rollback of a transaction left open still runs before this hook.
        reset=_nothing_to_reset,
        server_settings={
            # Defence in depth for readers: the role cannot write, nor can its transactions.
            **({"default_transaction_read_only": "on"} if read_only else {}),
            "statement_timeout": str(statement_timeout_ms),
            "lock_timeout": str(lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(idle_in_transaction_timeout_ms),
            "application_name": "ledgerflow",
        },
    )
    assert pool is not None
    return pool


async def run_in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    retries_max: int = 8,
    stats: RetryStats | None = None,
) -> T:
    """Run `work` in one transaction; retry transient conflicts with jittered backoff."""
    attempt = 0
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                # The pool hands out a proxy that behaves as the connection.
                return await work(cast("asyncpg.Connection", conn))
        except tuple(RETRYABLE) as error:
            cause = retry_cause(error)
            assert cause is not None
            if attempt >= retries_max:
                raise
            attempt += 1
            ended = await _end_stuck_copies(pool) if cause == "lock_timeout" else 0
            if stats is not None:
                stats.by_cause[cause] += 1
                stats.stuck_sessions_ended += ended
            ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
            await asyncio.sleep(random.uniform(0, ceiling))  # jitter, not crypto


async def _end_stuck_copies(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        ended = int(await conn.fetchval(END_STUCK_COPIES))
    if ended:
        log.warning("ended database sessions stuck in a COPY", extra={"sessions": ended})
    return ended
