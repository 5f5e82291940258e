"""`ledgerflow merchants set-fee` and `merchants list` (DESIGN.md §5.2): operations set a
merchant's fee, on record with who set it; the next payment pays it; nothing else can have one."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

import orjson
import pytest

from ledgerflow.harness.processes import run_cli
from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, cashin, merchant, onboarding, payment, wallet_of

pytestmark = pytest.mark.integration


def ledgerflow(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, check=check)


def env_for(database: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_") and k != "USER"}
    return env | {"LEDGERFLOW_DATABASE_URL": database.app_url} | extra


def listed(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    merchants = orjson.loads(ledgerflow(env, "merchants", "list", "--json", *args).stdout)
    assert isinstance(merchants, list)
    return merchants


async def test_set_fee_puts_a_fee_in_force_on_record_and_list_shows_it(database: Any) -> None:
    env = env_for(database, USER="ops-alice", LEDGERFLOW_MERCHANT_FEE_BPS="120")
    payer, shop, kiosk = onboarding(), merchant(), merchant()
    pool = await create_pool(database.app_url, size_max=1)
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        # Two batches: merchants are listed oldest first.
        await apply_all(writer, payer, shop)
        await apply_all(writer, kiosk, cashin(wallet_of(payer), 100_000))

        # Nobody set a fee yet: the deployment's default applies, and says so.
        every = listed(env)
        assert [m["customer_id"] for m in every] == [str(shop.customer_id), str(kiosk.customer_id)]
        assert every[0]["wallets"] == [
            {"account_id": str(wallet_of(shop)), "currency": "EUR", "balance": 0}
        ]
        assert every[0]["fee"] == {
            "bps": 120,
            "fixed": 0,
            "default": True,
            "changed_at": None,
            "changed_by": None,
        }

        # Set by $USER, then changed by someone named with --by: the latest is in force.
        out = ledgerflow(env, "merchants", "set-fee", str(shop.customer_id), "--bps", "250")
        assert b"250 bps" in out.stdout
        assert b"ops-alice" in out.stdout
        shown = orjson.loads(
            ledgerflow(
                env,
                "merchants",
                "set-fee",
                str(shop.customer_id),
                "--bps",
                "200",
                "--fixed",
                "30",
                "--by",
                "ops-bob",
                "--json",
            ).stdout
        )
        assert (shown["bps"], shown["fixed"], shown["changed_by"]) == (200, 30, "ops-bob")
        history = await pool.fetch(
            "SELECT bps, fixed, changed_by FROM merchant_fees WHERE customer_id = $1 ORDER BY id",
            shop.customer_id,
        )
        assert [tuple(r) for r in history] == [(250, 0, "ops-alice"), (200, 30, "ops-bob")]
        [first, second] = listed(env)
        assert first["fee"]["bps"] == 200
        assert first["fee"]["fixed"] == 30
        assert first["fee"]["default"] is False
        assert first["fee"]["changed_by"] == "ops-bob"
        assert first["fee"]["changed_at"] == shown["changed_at"]
        assert second["fee"]["default"] is True

        # The next payment pays the fee in force: floor(10,000 x 200 / 10,000) + 30.
        paid = payment(wallet_of(payer), wallet_of(shop), 10_000)
        await apply_all(writer, paid)
        fee = await pool.fetchval("SELECT fee FROM payments WHERE payment_id = $1", paid.payment_id)
        assert fee == 230
    finally:
        await pool.close()

    [first] = listed(env, "--limit", "1")
    assert first["wallets"][0]["balance"] == 10_000 - 230
    # Wide enough that no cell is folded over lines.
    text = ledgerflow(env | {"COLUMNS": "240"}, "merchants", "list").stdout.decode()
    assert "2 merchant(s) shown" in text
    assert "default" in text
    assert "ops-bob" in text
    assert str(wallet_of(shop)) in text
    assert ledgerflow(env, "merchants", "list", "--limit", "0", check=False).returncode != 0
    report = orjson.loads(ledgerflow(env, "audit", "--json").stdout)
    assert report["ok"] is True


async def test_set_fee_refuses_what_is_no_merchants_fee(database: Any) -> None:
    env = env_for(database, USER="ops-alice")
    person, shop = onboarding(), merchant()
    pool = await create_pool(database.app_url, size_max=1)
    try:
        await apply_all(LedgerWriter(pool, {}), person, shop)
    finally:
        await pool.close()

    def refused(*args: str, env: dict[str, str] = env) -> str:
        done = ledgerflow(env, "merchants", "set-fee", *args, check=False)
        assert done.returncode == 1, done
        return " ".join((done.stdout + done.stderr).decode().split())

    shop_id = str(shop.customer_id)
    assert "is a consumer, not a merchant" in refused(str(person.customer_id), "--bps", "100")
    unknown = uuid.uuid4()
    assert f"no customer {unknown}" in refused(str(unknown), "--bps", "100")
    assert "--bps must be between 0 and 10000" in refused(shop_id, "--bps", "10001")
    assert "--bps must be between 0 and 10000" in refused(shop_id, "--bps", "-1")
    assert "--fixed must not be negative" in refused(shop_id, "--bps", "0", "--fixed", "-5")
    assert "--by or $USER" in refused(shop_id, "--bps", "100", env=env_for(database))
    assert "--by or $USER" in refused(shop_id, "--bps", "100", "--by", "")
    # Not a number at all: the usage error of any option.
    assert ledgerflow(env, "merchants", "set-fee", shop_id, "--bps", "1.5", check=False).returncode
    assert ledgerflow(env, "merchants", "set-fee", shop_id, check=False).returncode
    # Nothing was written; the limits of the range are accepted.
    assert listed(env)[0]["fee"]["default"] is True
    ledgerflow(env, "merchants", "set-fee", shop_id, "--bps", "10000")
    ledgerflow(env, "merchants", "set-fee", shop_id, "--bps", "0", "--fixed", "0")
    [shown] = listed(env)
    assert (shown["fee"]["bps"], shown["fee"]["fixed"], shown["fee"]["default"]) == (0, 0, False)
