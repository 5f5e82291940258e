"""`ledgerflow bench ledger`: transfers/s through the batched apply path, by batch size.

Runs on its own database (`<name>_bench`, recreated each run) so the ledger under test starts
the same every time and the real ledger is never touched.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import asyncpg

from ledgerflow.cli.bench_ceiling import BATCH as CEILING_BATCH
from ledgerflow.cli.bench_ceiling import ceiling_for
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter
from ledgerflow.ledger_db.migrate import migrate
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import (
    apply_all,
    onboarding,
    open_funded_wallets,
    parsed,
    transfer,
    wallet_of,
)
from ledgerflow.workers import event_loop

SETUP_BATCH = 2_000
FUNDS = 10**9
WARM_UP = 2_000  # transfers applied before measuring: caches and plans warm


@dataclass(frozen=True, slots=True)
class LedgerBenchResult:
    case: str
    batch: int
    transfers: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.transfers / self.seconds


def with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else "")


# An autovacuum worker in a benchmark's leftover database runs as the bootstrap superuser, whom
# the owner role may not terminate: DROP … WITH (FORCE) fails until it is done (seconds).
DROP_ATTEMPTS = 30
DROP_RETRY_S = 1.0


async def drop_database(owner_url: str, name: str) -> None:
    """Drop `name` if it exists, ending its sessions; waits out an autovacuum worker in it."""
    conn = await asyncpg.connect(owner_url)
    try:
        for attempt in range(DROP_ATTEMPTS):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except asyncpg.InsufficientPrivilegeError:
                if attempt == DROP_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(DROP_RETRY_S)
            else:
                return
    finally:
        await conn.close()


async def create_bench_database(owner_url: str, name: str) -> str:
    """Drop and create `name`, migrated; returns its owner URL."""
    await drop_database(owner_url, name)
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(owner_url, name)
    await migrate(url)
    return url


async def settle_tables(owner_url: str) -> None:
    """VACUUM ANALYZE the benchmark's database once its set-up is in: plans see the tables' real
    sizes, and autovacuum does not pick the measured window to catch up on the set-up's rows
    (it did: PostgreSQL's CPU per command in a flow run went from ~100 to 240-300 µs)."""
    owner = await asyncpg.connect(owner_url)
    try:
        await owner.execute("VACUUM ANALYZE")
    finally:
        await owner.close()


async def run_ledger_bench(
    owner_url: str,
    app_url: str,
    wallets: int,
    batches: list[int],
    transfers_per_case: int,
    database: str = "ledgerflow_bench",
) -> list[LedgerBenchResult]:
    owner_bench_url = await create_bench_database(owner_url, database)
    pool = await create_pool(with_database(app_url, database), size_max=2)
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        merchant_owner = onboarding()
        await apply_all(writer, merchant_owner)
        merchant = wallet_of(merchant_owner)
        ids = await open_funded_wallets(writer, wallets, FUNDS, batch=SETUP_BATCH)
        await settle_tables(owner_bench_url)  # every case starts from the same state
        rng = random.Random(7)
        pairs = [rng.sample(ids, 2) for _ in range(WARM_UP)]
        warm_up = [Incoming(parsed(transfer(a, b, 1))) for a, b in pairs]
        for start in range(0, WARM_UP, 500):
            await writer.apply(warm_up[start : start + 500])
        results = []
        for case in ("spread", "hot"):
            for batch in batches:
                # Fewer transfers at batch 1: each is a commit (~5 ms on this disk).
                n = min(transfers_per_case, 300 if batch == 1 else batch * 40)
                commands = []
                for _ in range(n):
                    a, b = rng.sample(ids, 2)
                    commands.append(
                        transfer(a, merchant if case == "hot" else b, rng.randint(1, 100))
                    )
                incoming = [Incoming(parsed(c)) for c in commands]
                started = time.perf_counter()
                for start in range(0, n, batch):
                    await writer.apply(incoming[start : start + batch])
                results.append(LedgerBenchResult(case, batch, n, time.perf_counter() - started))
        # The yardstick from the same run: the same writes as set-based SQL, same database,
        # same wallets, as many transfers as the spread case at batch 500.
        n = min(transfers_per_case, CEILING_BATCH * 40)
        per_s = await ceiling_for(with_database(app_url, database), ids, n, CEILING_BATCH)
        results.append(LedgerBenchResult("ceiling", CEILING_BATCH, n, n / per_s))
        return results
    finally:
        await pool.close()


def run(
    owner_url: str, app_url: str, wallets: int, batches: list[int], transfers: int
) -> list[LedgerBenchResult]:
    # On the workers' event loop: the apply runs here as in a worker process.
    return event_loop.run(run_ledger_bench(owner_url, app_url, wallets, batches, transfers))
