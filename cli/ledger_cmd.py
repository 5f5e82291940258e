"""Reading the ledger: balances, accounts, pending holds and the audit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.contracts.events import Tier
from ledgerflow.ledger_db.audit import CheckResult, run_audit
from ledgerflow.ledger_db.pii_rotation import rotate_pii
from ledgerflow.ledger_db.queries import (
    HOLDS_LISTED_MAX,
    AccountView,
    HoldView,
    get_account,
    list_accounts,
    list_pending_holds,
)
from ledgerflow.workers.settings import Settings, pii_vault

console = Console()
T = TypeVar("T")
accounts_app = typer.Typer(no_args_is_help=True, help="Ledger accounts.")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


async def _connect() -> asyncpg.Connection:
    return await asyncpg.connect(Settings().database_url.get_secret_value())


def _with_connection(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run one read against the ledger as the app role, on a connection of its own."""

    async def run() -> T:
        conn = await _connect()
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _accounts_table(views: list[AccountView]) -> Table:
    table = Table("account", "kind", "currency", "status", "tier", "balance", "held", "available")
    for v in views:
        table.add_row(
            str(v.id),
            v.kind,
            v.currency,
            v.status,
            v.tier or "",
            f"{v.balance:,}",
            f"{v.held:,}",
            f"{v.available:,}",
        )
    return table


def balance(account_id: uuid.UUID, as_json: JsonFlag = False) -> None:
    """Show one account's balance in minor units: posted, held by pending cash-outs, and
    available (balance - held, what the wallet may spend)."""

    view = _with_connection(lambda conn: get_account(conn, account_id))
    if view is None:
        console.print(f"[red]no account {account_id}[/red]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(view.as_json()))
    else:
        console.print(_accounts_table([view]))


@accounts_app.command("list")
def accounts_list(as_json: JsonFlag = False) -> None:
    """List accounts, wallets first, with balances."""

    views = _with_connection(list_accounts)
    if as_json:
        print(json.dumps([v.as_json() for v in views]))
    else:
        console.print(_accounts_table(views))


holds_app = typer.Typer(no_args_is_help=True, help="Held cash-outs waiting for the bank.")


@holds_app.command("list")
def holds_list(
    wallet: Annotated[
        uuid.UUID | None, typer.Option("--wallet", help="Only this wallet's holds.")
    ] = None,
    expiring_within: Annotated[
        int | None,
        typer.Option(
            "--expiring-within", min=0, metavar="SECONDS", help="Only holds expiring this soon."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=HOLDS_LISTED_MAX)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List pending holds, soonest to expire first: amount + fee is held on the wallet until
    the bank settles or returns the cash-out, or it expires."""
    holds = _with_connection(lambda conn: list_pending_holds(conn, wallet, expiring_within, limit))
    if as_json:
        print(json.dumps([h.as_json() for h in holds]))
        return
    console.print(_holds_table(holds))
    console.print(f"{len(holds)} pending hold(s) shown")


def _holds_table(holds: list[HoldView]) -> Table:
    table = Table("cash-out", "wallet", "amount", "fee", "currency", "placed", "expires")
    for h in holds:
        table.add_row(
            str(h.cashout_id),
            str(h.wallet_account_id),
            f"{h.amount:,}",
            f"{h.fee:,}",
            h.currency,
            h.placed_at.isoformat(timespec="seconds"),
            h.expires_at.isoformat(timespec="seconds"),
        )
    return table


def audit_report(results: list[CheckResult]) -> Table:
    table = Table("check", "passes", "violations", "what it means")
    for r in results:
        table.add_row(
            r.name,
            "[green]yes[/green]" if r.ok else "[red]NO[/red]",
            str(r.violations),
            r.description,
        )
    return table


def audit(as_json: JsonFlag = False) -> None:
    """Check every ledger invariant over the whole database; exit 1 on any violation."""

    results = _with_connection(run_audit)
    ok = all(r.ok for r in results)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "checks": [
                        {
                            "name": r.name,
                            "ok": r.ok,
                            "violations": r.violations,
                            "examples": r.examples,
                        }
                        for r in results
                    ],
                }
            )
        )
    else:
        console.print(audit_report(results))
        console.print("[green]audit passed[/green]" if ok else "[red]audit FAILED[/red]")
    if not ok:
        raise typer.Exit(1)


customers_app = typer.Typer(no_args_is_help=True, help="Customers.")


@customers_app.command("set-tier")
def set_tier(
    customer_id: uuid.UUID,
    tier: Annotated[str, typer.Argument(help="basic, standard or full")],
) -> None:
    """Move a customer to another tier (its limits apply from the next command on)."""
    if tier not in {t.value for t in Tier}:
        raise typer.BadParameter(f"tier must be one of {', '.join(t.value for t in Tier)}")

    updated = _with_connection(
        lambda conn: conn.execute("UPDATE customers SET tier = $2 WHERE id = $1", customer_id, tier)
    )
    if updated != "UPDATE 1":
        console.print(f"[red]no customer {customer_id}[/red]")
        raise typer.Exit(1)
    console.print(f"customer {customer_id} is now {tier}")


pii_app = typer.Typer(no_args_is_help=True, help="Personal data at rest.")


@pii_app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every customer's personal data under LEDGERFLOW_PII_ACTIVE_KEY_ID.

    Keep the old key in LEDGERFLOW_PII_KEYS until this reports 0 rows left on it.
    """
    settings = Settings()
    vault = pii_vault(settings)

    async def run() -> int:
        conn = await asyncpg.connect(settings.migration_database_url.get_secret_value())
        try:
            return await rotate_pii(conn, vault)
        finally:
            await conn.close()

    console.print(f"re-encrypted {asyncio.run(run())} customer(s) under key {vault.active_key_id}")
