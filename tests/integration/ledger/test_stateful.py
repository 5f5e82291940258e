"""Random command sequences against a simple in-memory model of the ledger (hypothesis)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledgerflow.contracts.events import RejectReason
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import cashin, cashout, onboarding, parsed, transfer, wallet_of

pytestmark = pytest.mark.integration

LIMITS = {"basic": TierLimits(single_amount_max=5_000, balance_max=20_000)}
amounts = st.integers(min_value=1, max_value=6_000)


class LedgerMachine(RuleBasedStateMachine):
    dsn: str
    admin_dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.pool: asyncpg.Pool = self.run(create_pool(self.dsn, size_max=2))
        self.writer = LedgerWriter(self.pool, LIMITS)
        self.balances: dict[uuid.UUID, int] = {}
        self.closed: set[uuid.UUID] = set()
        self.sent: list[tuple[Any, str | None]] = []  # command, expected reason (None = ok)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.pool.close())
        self.loop.close()

    def apply_one(self, command: Any) -> tuple[OutcomeKind, str | None]:
        [outcome] = self.run(self.writer.apply([Incoming(parsed(command))]))
        return outcome.kind, outcome.reason

    @initialize()
    def open_wallets(self) -> None:
        people = [onboarding() for _ in range(3)]
        for p in people:
            assert self.apply_one(p) == (OutcomeKind.COMPLETED, None)
            self.balances[wallet_of(p)] = 0

    def wallets(self) -> list[uuid.UUID]:
        return sorted(self.balances)

    def expect(self, command: Any, reason: str | None) -> None:
        kind, got = self.apply_one(command)
        assert got == reason, (command, got, reason)
        assert kind is (OutcomeKind.COMPLETED if reason is None else OutcomeKind.REJECTED)
        self.sent.append((command, reason))

    def wallet_rejection(self, w: uuid.UUID) -> str | None:
        if w not in self.balances:
            return RejectReason.ACCOUNT_NOT_FOUND
        if w in self.closed:
            return RejectReason.ACCOUNT_CLOSED
        return None

    @rule(i=st.integers(0, 10), amount=amounts)
    def cash_in(self, i: int, amount: int) -> None:
        w = self.wallets()[i % len(self.balances)]
        reason = self.wallet_rejection(w)
        if reason is None and (amount > 5_000 or self.balances[w] + amount > 20_000):
            reason = RejectReason.LIMIT_EXCEEDED
        self.expect(cashin(w, amount), reason)
        if reason is None:
            self.balances[w] += amount

    @rule(i=st.integers(0, 10), j=st.integers(0, 10), amount=amounts)
    def send(self, i: int, j: int, amount: int) -> None:
        ws = self.wallets()
        a, b = ws[i % len(ws)], ws[j % len(ws)]
        reason: str | None
        if a == b:
            reason = RejectReason.SAME_ACCOUNT
        else:
            reason = self.wallet_rejection(a) or self.wallet_rejection(b)
        if reason is None:
            if amount > 5_000:
                reason = RejectReason.LIMIT_EXCEEDED
            elif self.balances[a] < amount:
                reason = RejectReason.INSUFFICIENT_FUNDS
            elif self.balances[b] + amount > 20_000:
                reason = RejectReason.LIMIT_EXCEEDED
        self.expect(transfer(a, b, amount), reason)
        if reason is None:
            self.balances[a] -= amount
            self.balances[b] += amount

    @rule(i=st.integers(0, 10), amount=amounts, fee=st.integers(0, 50))
    def cash_out(self, i: int, amount: int, fee: int) -> None:
        w = self.wallets()[i % len(self.balances)]
        reason = self.wallet_rejection(w)
        if reason is None:
            if amount > 5_000:
                reason = RejectReason.LIMIT_EXCEEDED
            elif self.balances[w] < amount + fee:
                reason = RejectReason.INSUFFICIENT_FUNDS
        self.expect(cashout(w, amount, fee=fee), reason)
        if reason is None:
            self.balances[w] -= amount + fee

    @rule(amount=amounts)
    def unknown_account(self, amount: int) -> None:
        self.expect(cashin(uuid.uuid4(), amount), RejectReason.ACCOUNT_NOT_FOUND)

    @rule(i=st.integers(0, 10))
    def close_account(self, i: int) -> None:
        w = self.wallets()[i % len(self.balances)]
        admin = self.run(asyncpg.connect(self.admin_dsn))
        self.run(admin.execute("UPDATE accounts SET status = 'closed' WHERE id = $1", w))
        self.run(admin.close())
        self.closed.add(w)

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        if not self.sent:
            return
        command, _ = data.draw(st.sampled_from(self.sent))
        kind, _ = self.apply_one(command)
        assert kind is OutcomeKind.REPLAYED

    @rule(data=st.data())
    def conflict(self, data: st.DataObject) -> None:
        if not self.sent:
            return
        command, _ = data.draw(st.sampled_from(self.sent))
        if not hasattr(command, "amount"):
            return
        changed = command.model_copy(update={"amount": command.amount % 5_000 + 1})
        if changed.amount == command.amount:
            return
        assert self.apply_one(changed) == (OutcomeKind.CONFLICT, RejectReason.ID_CONFLICT)

    @invariant()
    def ledger_matches_model(self) -> None:
        rows = self.run(
            self.pool.fetch(
                "SELECT account_id, balance FROM balances WHERE account_id = ANY($1::uuid[])",
                list(self.balances),
            )
        )
        assert {r["account_id"]: r["balance"] for r in rows} == self.balances

        async def audit() -> bool:
            async with self.pool.acquire() as conn:
                return all(r.ok for r in await run_audit(conn))

        assert self.run(audit())


def test_ledger_against_model(database: Any) -> None:
    LedgerMachine.dsn = database.app_url
    LedgerMachine.admin_dsn = database.admin_url
    runner = LedgerMachine.TestCase()
    runner.settings = settings(
        max_examples=12,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    runner.runTest()
