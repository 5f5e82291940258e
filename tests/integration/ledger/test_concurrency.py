"""Eight writers racing over ten wallets, A→B against B→A: no failure, no negative, totals kept."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import pytest

from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.testkit.commands import apply_all, cashin, onboarding, parsed, transfer, wallet_of

pytestmark = pytest.mark.integration

WRITERS = 8
WALLETS = 10
BATCHES_PER_WRITER = 12
FUNDS = 1_000


async def test_concurrent_batches_conserve_money(pool: asyncpg.Pool, writer: LedgerWriter) -> None:
    people = [onboarding() for _ in range(WALLETS)]
    wallets = [wallet_of(p) for p in people]
    await apply_all(writer, *people, *[cashin(w, FUNDS) for w in wallets])
    rng = random.Random(20261129)
    writers = [LedgerWriter(pool, writer.limits) for _ in range(WRITERS)]
    # Every batch holds mirrored pairs (A→B and B→A) and is also sent by a second writer at the
    # same time, so the same keys race: the loser retries and replays the winner's outcome.
    batches = []
    for _ in range(WRITERS * BATCHES_PER_WRITER // 2):
        batch = []
        for _ in range(rng.randint(1, 10)):
            a, b = rng.sample(wallets, 2)
            batch += [transfer(a, b, rng.randint(1, 400)), transfer(b, a, rng.randint(1, 400))]
        batches.append([Incoming(parsed(c)) for c in batch])

    async def run(w: LedgerWriter, mine: list[list[Incoming]]) -> list[OutcomeKind]:
        kinds = []
        for batch in mine:
            kinds += [o.kind for o in await w.apply(batch)]
        return kinds

    jobs = [run(writers[i], batches[i // 2 :: WRITERS // 2]) for i in range(WRITERS)]
    results = await asyncio.gather(*jobs)
    kinds = [k for r in results for k in r]
    assert OutcomeKind.COMPLETED in kinds
    assert OutcomeKind.REPLAYED in kinds
    total = await pool.fetchval(
        "SELECT sum(balance) FROM balances WHERE account_id = ANY($1::uuid[])", wallets
    )
    assert total == WALLETS * FUNDS
    assert (
        await pool.fetchval("SELECT count(*) FROM balances WHERE balance < 0 AND kind = 'wallet'")
        == 0
    )
    async with pool.acquire() as conn:
        assert all(r.ok for r in await run_audit(conn))
    retries = sum(w.retry_stats.total for w in writers)
    assert retries > 0, "racing duplicate keys must have been retried, and counted"
    assert {c for w in writers for c in w.retry_stats.by_cause} <= {
        "unique_violation",
        "deadlock",
        "serialization",
        "lock_timeout",
    }
    entries = await pool.fetchval("SELECT count(*) FROM journal_entries WHERE flow = 'transfer'")
    completed_keys = await pool.fetchval(
        "SELECT count(*) FROM idempotency_records WHERE flow = 'transfer' AND outcome = 'completed'"
    )
    assert entries == completed_keys
    assert uuid.UUID(str(wallets[0]))
