"""The read and setup commands (migrate, topics ensure, balance, accounts list, audit)."""

from __future__ import annotations

import base64
import os
import subprocess
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ledgerflow.contracts.topics import all_topics
from ledgerflow.harness.processes import run_cli
from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    held_cashout,
    onboarding,
    settle,
    transfer,
    wallet_of,
)

pytestmark = pytest.mark.integration


def ledgerflow(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, check=check)


def env_for(database: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    return (
        env
        | {
            "LEDGERFLOW_DATABASE_URL": database.app_url,
            "LEDGERFLOW_MIGRATION_DATABASE_URL": database.owner_url,
        }
        | extra
    )


async def test_read_commands_and_audit(database: Any) -> None:
    env = env_for(database)
    assert b"up to date" in ledgerflow(env, "migrate").stdout
    pool = await create_pool(database.app_url, size_max=1)
    try:
        a, b = onboarding(), onboarding()
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        await apply_all(
            writer, a, b, cashin(wallet_of(a), 900), transfer(wallet_of(a), wallet_of(b), 400)
        )
    finally:
        await pool.close()
    shown = orjson.loads(ledgerflow(env, "balance", str(wallet_of(a)), "--json").stdout)
    assert (shown["balance"], shown["kind"], shown["currency"]) == (500, "wallet", "EUR")
    listed = orjson.loads(ledgerflow(env, "accounts", "list", "--json").stdout)
    balances = {x["id"]: x["balance"] for x in listed}
    assert balances[str(wallet_of(b))] == 400
    assert sum(balances.values()) == 0, "wallets and house accounts balance out"
    report = orjson.loads(ledgerflow(env, "audit", "--json").stdout)
    assert report["ok"] is True
    assert (
        ledgerflow(env, "balance", "00000000-0000-0000-0000-000000000000", check=False).returncode
        == 1
    )

    admin = await asyncpg.connect(database.admin_url)
    try:
        await admin.execute(
            "UPDATE balances SET balance = balance + 1 WHERE account_id = $1", wallet_of(b)
        )
    finally:
        await admin.close()
    tampered = ledgerflow(env, "audit", "--json", check=False)
    assert tampered.returncode == 1
    failed = {c["name"] for c in orjson.loads(tampered.stdout)["checks"] if not c["ok"]}
    assert "balances_equal_postings" in failed


async def test_holds_list_and_balance_show_what_is_held(database: Any) -> None:
    env = env_for(database)
    pool = await create_pool(database.app_url, size_max=1)
    try:
        a, b = onboarding(), onboarding()
        wa, wb = wallet_of(a), wallet_of(b)
        soon = held_cashout(wa, 1_000, expires_in_s=60)
        later = held_cashout(wa, 3_000, fee=50)
        paid = held_cashout(wa, 500)
        other = held_cashout(wb, 200, expires_in_s=600)
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        await apply_all(writer, a, b, cashin(wa, 10_000), cashin(wb, 1_000))
        await apply_all(writer, later, soon, paid, other)
        await apply_all(writer, settle(paid))
    finally:
        await pool.close()

    shown = orjson.loads(ledgerflow(env, "balance", str(wa), "--json").stdout)
    assert (shown["balance"], shown["held"], shown["available"]) == (9_500, 4_050, 5_450)
    table = ledgerflow(env, "balance", str(wa)).stdout.decode()
    assert "held" in table
    assert "available" in table
    assert "5,450" in table

    def holds(*args: str) -> list[dict[str, Any]]:
        listed = orjson.loads(ledgerflow(env, "holds", "list", "--json", *args).stdout)
        assert isinstance(listed, list)
        return listed

    # Pending only (the settled one is gone), soonest to expire first.
    every = holds()
    assert [h["cashout_id"] for h in every] == [
        str(soon.cashout_id),
        str(other.cashout_id),
        str(later.cashout_id),
    ]
    first = every[-1]
    assert (first["wallet_account_id"], first["amount"], first["fee"], first["currency"]) == (
        str(wa),
        3_000,
        50,
        "EUR",
    )
    assert first["placed_at"] < first["expires_at"]
    assert [h["cashout_id"] for h in holds("--wallet", str(wb))] == [str(other.cashout_id)]
    assert [h["cashout_id"] for h in holds("--expiring-within", "120")] == [str(soon.cashout_id)]
    assert [h["cashout_id"] for h in holds("--wallet", str(wa), "--expiring-within", "3600")] == [
        str(soon.cashout_id)
    ]
    assert len(holds("--limit", "1")) == 1
    assert ledgerflow(env, "holds", "list", "--limit", "0", check=False).returncode != 0
    text = ledgerflow(env, "holds", "list").stdout.decode()
    assert "3 pending hold(s) shown" in text
    report = orjson.loads(ledgerflow(env, "audit", "--json").stdout)
    assert report["ok"] is True


async def test_topics_ensure_is_idempotent(
    kafka: Any, kafka_topic_prefix: str, database: Any
) -> None:
    env = env_for(
        database,
        LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        LEDGERFLOW_TOPIC_PREFIX=kafka_topic_prefix,
    )
    first = ledgerflow(env, "topics", "ensure").stdout.decode()
    contract = len(all_topics())
    assert f"{contract} in the contract, {contract} created" in first
    assert "0 created" in ledgerflow(env, "topics", "ensure").stdout.decode()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([kafka_topic_prefix + t for t in all_topics()])
    finally:
        await admin.close()
    partitions = {
        t["topic"].removeprefix(kafka_topic_prefix): len(t["partitions"]) for t in described
    }
    assert partitions["transfer.initiated"] == 6
    assert partitions["transfer.completed"] == 6
    assert partitions["transfer.initiated.dlq"] == 1
    assert set(partitions) == set(all_topics())


async def test_customers_set_tier(database: Any) -> None:
    env = env_for(database)
    pool = await create_pool(database.app_url, size_max=1)
    try:
        person = onboarding()
        await apply_all(LedgerWriter(pool, {}), person)
        ledgerflow(env, "customers", "set-tier", str(person.customer_id), "standard")
        tier = await pool.fetchval("SELECT tier FROM customers WHERE id = $1", person.customer_id)
        # On record, for the audit's limits check (a lowered tier explains totals above it).
        change = await pool.fetchrow(
            "SELECT old_tier, new_tier FROM customer_tier_changes WHERE customer_id = $1",
            person.customer_id,
        )
    finally:
        await pool.close()
    assert tier == "standard"
    assert change is not None
    assert tuple(change) == ("basic", "standard")
    unknown = ledgerflow(env, "customers", "set-tier", str(person.customer_id), "gold", check=False)
    assert unknown.returncode != 0


async def test_migrate_keys_content_hashes_only_when_asked_and_never_with_the_dev_key(
    database: Any,
) -> None:
    env = env_for(database)
    assert b"plain SHA-256" in ledgerflow(env, "migrate").stdout
    refused = ledgerflow(env, "migrate", "--key-content-hashes", check=False)
    assert refused.returncode != 0
    assert b"public development key" in refused.stderr + refused.stdout
    keyed = env_for(
        database, LEDGERFLOW_CONTENT_HASH_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode()
    )
    assert (
        b"keyed (HMAC-SHA-256), every row"
        in ledgerflow(keyed, "migrate", "--key-content-hashes").stdout
    )
    assert b"keyed (HMAC-SHA-256), every row" in ledgerflow(keyed, "migrate").stdout
