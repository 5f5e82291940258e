"""`ledgerflow demo`: the whole system on real traffic, from an empty machine to the audit.

Brings up the embedded stack, migrates, creates topics, starts the workers, the relay and the
read API as child processes, then drives onboarding, cash-in, a burst of P2P transfers (invalid,
duplicate, overdrawing and conflicting ones on purpose), cash-out (immediate and held until the
bank answers) and a merchant paid by customers and refunding some of it, through Kafka, and
shows what came back, ending with one wallet's statement fetched over HTTP. Child processes
are stopped on exit and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import typer
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ledgerflow import stack
from ledgerflow.cli.ledger_cmd import audit_report
from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.commands import (
    ApproveCashOut,
    BankAccount,
    ConfirmCashIn,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
    Settlement,
)
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
    Flow,
)
from ledgerflow.harness.identity import Issuer, Signer
from ledgerflow.harness.processes import ManagedProcess, ledgerflow_env, start_process
from ledgerflow.harness.results import ResultCollector
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.merchants import MerchantFee, set_merchant_fee
from ledgerflow.ledger_db.migrate import migrate
from ledgerflow.ledger_db.queries import AccountView, get_account
from ledgerflow.ledger_db.rules import AccountKind, house_account_id, wallet_account_id
from ledgerflow.workers.kafka_io import idempotent_producer
from ledgerflow.workers.topics import ensure_topics, topic_specs

console = Console()
RESULT_TIMEOUT_S = 120.0
CASH_IN = 200_000  # 2,000.00 per wallet
DEMO_HOLD_EXPIRES_S = 4
HELD_AMOUNT, HELD_FEE = 50_000, 250
# The merchant's fee, set by operations as `ledgerflow merchants set-fee` does: 2.5% + 0.30.
MERCHANT_FEE_BPS, MERCHANT_FEE_FIXED = 250, 30
PAYMENTS = (12_000, 4_990, 25_000)  # 120.00, 49.90, 250.00
PARTIAL_REFUND = 5_000  # of the first payment; the second is refunded in full


@dataclass
class Traffic:
    """What the demo sent, and when, so every answer can be matched and timed."""

    producer: AIOKafkaProducer
    results: ResultCollector
    sent_at: dict[str, float] = field(default_factory=dict)  # idempotency key -> first send
    expected: Counter[str] = field(default_factory=Counter)  # idempotency key -> answers due
    drained: int = 0
    transfer_keys: set[str] = field(default_factory=set)
    signer: Signer = field(default_factory=Signer)

    async def send(
        self,
        flow: Flow,
        command: BaseModel,
        *,
        value: bytes | None = None,
        as_subject: str | None = None,
    ) -> None:
        record = encode_command(
            flow, command, authorization=self.signer.authorization(command, as_subject)
        )
        key = str(getattr(command, flow.id_field))
        self.sent_at.setdefault(key, time.monotonic())
        self.expected[key] += 1
        if flow is TRANSFER:
            self.transfer_keys.add(key)
        await self.producer.send(
            record.topic, value or record.value, key=record.key, headers=list(record.headers)
        )

    def answered(self) -> int:
        return sum(
            min(len(self.results.by_command_key.get(k, ())), n) for k, n in self.expected.items()
        )

    def total(self) -> int:
        return sum(self.expected.values())

    async def drain(self, progress: Progress, label: str) -> None:
        """Wait (bounded) until every command sent so far has its answer."""
        await self.producer.flush()
        before = self.drained
        task = progress.add_task(label, total=self.total() - before)
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while (done := self.answered()) < self.total():
            progress.update(task, completed=done - before)
            if time.monotonic() > deadline:
                missing = self.total() - done
                raise TimeoutError(f"{missing} commands unanswered after {RESULT_TIMEOUT_S}s")
            await asyncio.sleep(0.05)
        progress.update(task, completed=self.total() - before)
        self.drained = self.total()


def phone_number() -> str:
    """Fresh on every run (not from the seed): a phone number has one wallet, ever."""
    return f"+49151{random.SystemRandom().randrange(10**7, 10**8)}"


def _say_moved_ports(change: stack.ServiceChange) -> None:
    for note in change.notes:
        console.print(f"    [yellow]{note}[/yellow]", highlight=False)


async def run_demo(customers: int, transfers: int, seed: int) -> bool:
    rng = random.Random(seed)
    console.rule("[bold]Ledgerflow demo")
    console.print("1/5 starting the embedded PostgreSQL and Apache Kafka …")
    endpoints = await stack.up_async(on_progress=_say_moved_ports)
    applied = await migrate(endpoints.owner_database_url)
    console.print(f"    migrations applied: {', '.join(applied) or 'none (up to date)'}")
    created = await ensure_topics(
        endpoints.kafka_bootstrap_servers, topic_specs("", 6, 6, 1), replication_factor=1
    )
    console.print(f"    topics created: {len(created)} (the rest existed)")
    log_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-demo-"))
    # The demo is its own identity provider: every command carries a signed token, and the
    # workers verify it as they would the bank's (LEDGERFLOW_AUTH_MODE=required).
    identity = Issuer()
    env = ledgerflow_env(
        endpoints.app_database_url,
        endpoints.kafka_bootstrap_servers,
        "",
        **identity.settings(log_dir / "jwks.json"),
        read_database_url=endpoints.reader_database_url,
        # Holds left alone expire after a few seconds here (production: 3 days).
        hold_expires_s=str(DEMO_HOLD_EXPIRES_S),
        hold_expiry_interval_s="0.5",
    )
    console.print("    authentication: required (the demo signs its commands, RS256 JWTs)")
    processes: list[ManagedProcess] = []
    async with AsyncExitStack() as cleanup:
        cleanup.callback(lambda: [p.stop() for p in processes])
        console.print("2/5 starting the workers, the outbox relay and the read API …")
        for args in (["worker", "all"], ["relay"], ["api"]):
            process = await asyncio.to_thread(start_process, args, env, log_dir)
            processes.append(process)
            console.print(
                f"    ledgerflow {' '.join(args)}: pid {process.process.pid}, "
                f"http://127.0.0.1:{process.port}/metrics"
            )
        producer = idempotent_producer(endpoints.kafka_bootstrap_servers, "ledgerflow-demo")
        await producer.start()
        cleanup.push_async_callback(producer.stop)
        results = ResultCollector(endpoints.kafka_bootstrap_servers)
        await results.start(from_end=True)
        cleanup.push_async_callback(results.stop)
        traffic = Traffic(producer, results, signer=Signer(identity))

        with Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            console.print("3/5 onboarding customers and cashing in …")
            people = [
                RequestOnboarding(
                    customer_id=uuid.uuid4(),
                    full_name=f"Demo Customer {i}",
                    phone_number=phone_number(),
                    currency="EUR",
                )
                for i in range(customers)
            ]
            for person in people:
                await traffic.send(ONBOARDING, person)
            await traffic.drain(progress, "onboarding")
            # Someone else with a phone number that has a wallet: phone_number_taken.
            await traffic.send(
                ONBOARDING, people[0].model_copy(update={"customer_id": uuid.uuid4()})
            )
            await traffic.drain(progress, "onboarding, phone number taken")
            wallets = [wallet_account_id(p.customer_id, p.currency) for p in people]
            for wallet in wallets:
                await traffic.send(
                    CASHIN,
                    ConfirmCashIn(
                        cashin_id=uuid.uuid4(),
                        wallet_account_id=wallet,
                        amount=CASH_IN,
                        currency="EUR",
                        bank_reference=f"SEPA-{rng.randrange(10**9)}",
                    ),
                )
            await traffic.drain(progress, "cash-in")

            console.print(f"4/5 a burst of {transfers:,} P2P transfers, some wrong on purpose …")
            started = time.monotonic()
            sent: list[InitiateTransfer] = []
            for i in range(transfers):
                a, b = rng.sample(wallets, 2)
                roll = rng.random()
                if roll < 0.02 and sent:  # a client retry: same command again, replayed
                    await traffic.send(TRANSFER, rng.choice(sent))
                    continue
                if roll < 0.03 and sent:  # same id, other content: id_conflict
                    old = rng.choice(sent)
                    await traffic.send(TRANSFER, old.model_copy(update={"amount": old.amount + 1}))
                    continue
                command = InitiateTransfer(
                    transfer_id=uuid.uuid4(),
                    from_account_id=a,
                    to_account_id=b,
                    amount=rng.randint(100, 5_000),
                    currency="EUR",
                    note=f"demo {i}",
                )
                if roll < 0.05:  # an amount string: invalid_command, answered, not recorded
                    envelope = orjson.loads(encode_command(TRANSFER, command).value)
                    envelope["data"]["amount"] = str(command.amount)
                    await traffic.send(TRANSFER, command, value=orjson.dumps(envelope))
                    continue
                if roll < 0.07:  # more than the sender holds: insufficient_funds
                    command = command.model_copy(update={"amount": 3 * CASH_IN})
                elif roll < 0.08:  # to oneself: same_account
                    command = command.model_copy(update={"to_account_id": a})
                elif roll < 0.09:  # to nobody: account_not_found
                    command = command.model_copy(update={"to_account_id": uuid.uuid4()})
                elif roll < 0.10:  # someone else's token on a's wallet: unauthorized
                    await traffic.send(TRANSFER, command, as_subject="user-mallory")
                    continue
                sent.append(command)
                await traffic.send(TRANSFER, command)
            await traffic.drain(progress, "transfers")
            burst_s = time.monotonic() - started

            for wallet in wallets[: max(1, customers // 2)]:
                await traffic.send(
                    CASHOUT,
                    ApproveCashOut(
                        cashout_id=uuid.uuid4(),
                        wallet_account_id=wallet,
                        amount=10_000,
                        fee=150,
                        currency="EUR",
                        destination=BankAccount(
                            bank_code="BANKDEFF", account_number="DE89370400440532013000"
                        ),
                    ),
                )
            await traffic.drain(progress, "cash-out")

            console.print(
                "    held cash-outs: one settled by the bank, one returned, one left to expire"
            )
            held_on = wallets[-3:]
            conn = await asyncpg.connect(endpoints.app_database_url)
            try:
                before = [await get_account(conn, w) for w in held_on]
                holds = [
                    ApproveCashOut(
                        cashout_id=uuid.uuid4(),
                        wallet_account_id=wallet,
                        amount=HELD_AMOUNT,
                        fee=HELD_FEE,
                        currency="EUR",
                        destination=BankAccount(
                            bank_code="BANKDEFF", account_number="DE89370400440532013000"
                        ),
                        settlement=Settlement.ON_CONFIRMATION,
                        # The first two are answered long before; the third takes the
                        # deployment's (short) default.
                        hold_expires_in_s=3_600 if i < 2 else None,
                    )
                    for i, wallet in enumerate(held_on)
                ]
                for hold in holds:
                    await traffic.send(CASHOUT, hold)
                await traffic.drain(progress, "cash-out held")
                during = [await get_account(conn, w) for w in held_on]
                await traffic.send(
                    CASHOUT_SETTLE,
                    SettleCashOut(
                        cashout_id=holds[0].cashout_id,
                        wallet_account_id=holds[0].wallet_account_id,
                        bank_reference="SEPA-OUT-1",
                    ),
                )
                await traffic.send(
                    CASHOUT_RETURN,
                    ReturnCashOut(
                        cashout_id=holds[1].cashout_id,
                        wallet_account_id=holds[1].wallet_account_id,
                        return_code="AC04",
                        detail="account closed",
                    ),
                )
                await traffic.drain(progress, "cash-out settled / returned")
                await results.wait_for_key(
                    str(holds[2].cashout_id), timeout_s=DEMO_HOLD_EXPIRES_S + 30, count=2
                )
                after = [await get_account(conn, w) for w in held_on]
                console.print(
                    "    a merchant: its fee set by operations, three customers pay it,"
                    " one refund in part, one in full"
                )
                story = await merchant_story(traffic, progress, conn, wallets)
            finally:
                await conn.close()

        console.print("5/5 results")
        show_outcomes(results.events)
        show_latency(traffic, transfers, burst_s)
        show_holds(results, holds, before, during, after)
        show_merchant(results, story)
        conn = await asyncpg.connect(endpoints.app_database_url)
        try:
            await show_balances(conn, wallets[:8])
            audit = await run_audit(conn)
        finally:
            await conn.close()
        console.print(audit_report(audit))
        ok = all(r.ok for r in audit)
        console.print(
            "[bold green]audit passed: the ledger balances[/bold green]"
            if ok
            else "[bold red]audit FAILED[/bold red]"
        )
        api = processes[-1]
        return await show_statement(api.port, story.payments[0].from_account_id, identity) and ok
    return False


@dataclass
class MerchantStory:
    """What the merchant part of the demo did, and the balances around it."""

    merchant: uuid.UUID  # its wallet
    fee: MerchantFee
    payments: list[InitiatePayment]
    refunds: list[RequestRefund]
    # account -> balance before the payments, after them, after the refunds
    balances: dict[uuid.UUID, list[int]] = field(default_factory=dict)
    roles: dict[uuid.UUID, str] = field(default_factory=dict)


async def _balances(conn: asyncpg.Connection, story: MerchantStory) -> None:
    for account in story.roles:
        view = await get_account(conn, account)
        story.balances.setdefault(account, []).append(view.balance if view else 0)


async def merchant_story(
    traffic: Traffic, progress: Progress, conn: asyncpg.Connection, wallets: list[uuid.UUID]
) -> MerchantStory:
    """Onboard a merchant (signed, through Kafka), set its fee as operations would, have the
    customers with the most to spend pay it, then refund one payment in part and one in full
    (signed as the merchant)."""
    shop = RequestOnboarding(
        customer_id=uuid.uuid4(),
        full_name="Demo Coffee Roasters GmbH",
        phone_number=phone_number(),
        currency="EUR",
        kind=CustomerKind.MERCHANT,
    )
    await traffic.send(ONBOARDING, shop)
    await traffic.drain(progress, "merchant onboarding")
    merchant = wallet_account_id(shop.customer_id, shop.currency)
    fee = await set_merchant_fee(
        conn,
        shop.customer_id,
        MERCHANT_FEE_BPS,
        MERCHANT_FEE_FIXED,
        f"ledgerflow demo ({os.environ['USER']})" if os.environ.get("USER") else "ledgerflow demo",
    )
    views = [v for v in [await get_account(conn, w) for w in wallets] if v is not None]
    # With only two customers, one of them pays twice.
    payers = [v.id for v in sorted(views, key=lambda v: (-v.available, v.id))[: len(PAYMENTS)]]
    payers = [payers[i % len(payers)] for i in range(len(PAYMENTS))]
    payments = [
        InitiatePayment(
            payment_id=uuid.uuid4(),
            from_account_id=payer,
            merchant_account_id=merchant,
            amount=amount,
            currency="EUR",
            order_reference=f"DEMO-ORDER-{i + 1}",
        )
        for i, (payer, amount) in enumerate(zip(payers, PAYMENTS, strict=True))
    ]
    fee_revenue = house_account_id(AccountKind.FEE_REVENUE, "EUR")
    story = MerchantStory(merchant, fee, payments, [])
    story.roles = {merchant: "merchant"}
    for i, paid in enumerate(payments):
        story.roles.setdefault(paid.from_account_id, f"payer {i + 1}")
    story.roles[fee_revenue] = "fee revenue"
    await _balances(conn, story)
    for paid in payments:
        await traffic.send(PAYMENT, paid)
    await traffic.drain(progress, "payments")
    await _balances(conn, story)
    story.refunds = [
        RequestRefund(
            refund_id=uuid.uuid4(),
            payment_id=paid.payment_id,
            merchant_account_id=merchant,
            amount=amount,
            currency="EUR",
            reason=reason,
        )
        for paid, amount, reason in (
            (payments[0], PARTIAL_REFUND, "one bag arrived damaged"),
            (payments[1], payments[1].amount, "order cancelled"),
        )
    ]
    for back in story.refunds:
        await traffic.send(REFUND, back)
    await traffic.drain(progress, "refunds")
    await _balances(conn, story)
    return story


def show_merchant(results: ResultCollector, story: MerchantStory) -> None:
    """The merchant's, its payers' and fee revenue's balances around the payments and refunds,
    and what each payment and refund answered."""
    table = Table(
        "account",
        "role",
        "before",
        "after payments",
        "after refunds",
        title="Merchant, payers and fee revenue: balances (EUR)",
        caption=(
            f"the merchant's fee: {story.fee.bps} bps + {_eur(story.fee.fixed)}, set by "
            f"{story.fee.changed_by}"
        ),
    )
    for account, role in story.roles.items():
        table.add_row(
            str(account)[:8] + "…", role, *(_eur(b) for b in story.balances.get(account, []))
        )
    console.print(table)
    answers = Table(
        "payment",
        "paid",
        "fee",
        "refunded",
        "fee returned",
        "answers",
        title="Payments to the merchant and their refunds (EUR)",
    )

    def answers_to(key: uuid.UUID, prefix: str) -> list[dict[str, Any]]:
        events = results.by_command_key.get(str(key), [])
        return [e for e in events if e["type"].startswith(prefix)]

    for paid in story.payments:
        done = answers_to(paid.payment_id, "payment.")
        backs = [b for b in story.refunds if b.payment_id == paid.payment_id]
        refunds = [e for b in backs for e in answers_to(b.refund_id, "refund.")]
        fee = next((e["data"]["fee"] for e in done if "fee" in e["data"]), None)
        back = [e["data"] for e in refunds if "fee_returned" in e["data"]]
        answers.add_row(
            str(paid.payment_id)[:8] + "…",
            _eur(paid.amount),
            "-" if fee is None else _eur(fee),
            _eur(sum(d["amount"] for d in back)) if back else "-",
            _eur(sum(d["fee_returned"] for d in back)) if back else "-",
            " → ".join(
                e["type"].replace("payment.", "").replace(".", " ")
                + (f" ({e['data']['reason']})" if "reason" in e["data"] else "")
                for e in done + refunds
            ),
        )
    console.print(answers)


def show_outcomes(events: list[dict[str, Any]]) -> None:
    counts = Counter((e["type"], (e.get("data") or {}).get("reason", "")) for e in events)
    table = Table("result event", "reason", "count", title="Outcomes by type and reason")
    for (kind, reason), n in sorted(counts.items()):
        table.add_row(kind, reason or "-", f"{n:,}")
    ids = Counter(e["id"] for e in events)
    replays = sum(n - 1 for n in ids.values())
    table.add_row("(of these) replays", "same CloudEvents id again", f"{replays:,}")
    console.print(table)


def show_latency(traffic: Traffic, transfers: int, burst_s: float) -> None:
    latencies = sorted(
        (events[0]["_received"] - traffic.sent_at[key]) * 1000
        for key, events in traffic.results.by_command_key.items()
        if key in traffic.transfer_keys and events
    )
    if not latencies:
        return
    q = statistics.quantiles(latencies, n=100)
    console.print(
        f"transfer burst: {transfers:,} commands answered in {burst_s:.2f}s "
        f"({transfers / burst_s:,.0f}/s end to end); latency publish→result "
        f"p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, p99 {q[98]:.0f} ms"
    )


def _eur(minor: int) -> str:
    return f"{minor // 100:,}.{minor % 100:02d}"


def show_holds(
    results: ResultCollector,
    holds: list[ApproveCashOut],
    before: list[AccountView | None],
    during: list[AccountView | None],
    after: list[AccountView | None],
) -> None:
    """Each held cash-out's answers and its wallet before, while held, and after."""
    table = Table(
        "cash-out (500.00 + 2.50 fee)",
        "answers",
        "before",
        "while held",
        "after",
        title="Held cash-outs: balance / held / available (EUR)",
    )
    for hold, b, d, a in zip(holds, before, during, after, strict=True):
        answers = [
            e["type"].removeprefix("cashout.")
            + (f" ({e['data']['reason']})" if "reason" in e["data"] else "")
            for e in results.by_command_key.get(str(hold.cashout_id), [])
        ]
        table.add_row(
            str(hold.cashout_id)[:8] + "…",
            " → ".join(answers),
            *(
                f"{_eur(v.balance)} / {_eur(v.held)} / {_eur(v.available)}" if v else "-"
                for v in (b, d, a)
            ),
        )
    console.print(table)


async def show_balances(conn: asyncpg.Connection, wallets: list[uuid.UUID]) -> None:
    table = Table("wallet", "balance (EUR)", title="Demo wallets")
    for wallet in wallets:
        view = await get_account(conn, wallet)
        if view is not None:
            table.add_row(str(wallet), f"{view.balance // 100:,}.{view.balance % 100:02d}")
    console.print(table)


STATEMENT_LINES_SHOWN = 12


async def show_statement(port: int, wallet: uuid.UUID, identity: Issuer) -> bool:
    """One demo wallet's statement of today, fetched from the read API over HTTP as the wallet
    app would (a `ledger:read` token); True when it adds up."""
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    params = {"from": start.isoformat(), "to": (now + timedelta(minutes=1)).isoformat()}
    url = f"http://127.0.0.1:{port}/v1/wallets/{wallet}/statement"
    token = identity.bearer("ledgerflow-demo", scope="ledger:read")
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            url, params=params, headers={"authorization": token}, timeout=RESULT_TIMEOUT_S
        )
    console.print(
        f"GET http://127.0.0.1:{port}/v1/wallets/{wallet}/statement?from=<today>&to=<now> "
        f"-> {answer.status_code}",
        soft_wrap=True,
    )
    if answer.status_code != httpx.codes.OK:
        console.print(f"[bold red]the read API answered {answer.text[:300]}[/bold red]")
        return False
    body = answer.json()
    entries = body["entries"]
    table = Table(
        Column("posted (UTC)", no_wrap=True),
        Column("type", no_wrap=True),
        Column("amount", justify="right", no_wrap=True),
        Column("counterparty", no_wrap=True),
        Column("balance after", justify="right", no_wrap=True),
        title=f"Statement of {wallet}, today (UTC), EUR, from the read API",
        caption=(
            f"opening {_eur(body['opening_balance'])} + in {_eur(body['total_in'])} - out "
            f"{_eur(body['total_out'])} = closing {_eur(body['closing_balance'])}"
            + (
                f"; the last {STATEMENT_LINES_SHOWN} of {len(entries)} entries shown"
                if len(entries) > STATEMENT_LINES_SHOWN
                else ""
            )
        ),
    )
    for entry in entries[-STATEMENT_LINES_SHOWN:]:
        table.add_row(
            entry["created_at"][11:23],
            entry["type"],
            ("-" if entry["amount"] < 0 else "+") + _eur(abs(entry["amount"])),
            (entry["counterparty_account_id"] or "")[:8],
            _eur(entry["balance_after"]),
        )
    console.print(table)
    adds_up: bool = (
        body["opening_balance"] + body["total_in"] - body["total_out"] == body["closing_balance"]
    )
    if not adds_up:
        console.print("[bold red]the statement does not add up[/bold red]")
    return adds_up


def demo(
    customers: int = typer.Option(20, min=2, max=1_000, help="Customers to onboard."),
    transfers: int = typer.Option(3_000, min=1, max=200_000, help="P2P transfers in the burst."),
    seed: int = typer.Option(2026, help="Seed of the random traffic."),
) -> None:
    """Run the whole system on real traffic and show the outcome, balances and audit."""
    ok = asyncio.run(run_demo(customers, transfers, seed))
    if not ok:
        raise typer.Exit(1)
