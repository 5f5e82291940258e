"""Reading the ledger: balances, accounts, pending holds, merchants and the audit; setting a
customer's tier and a merchant's fee."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Column, Table

from ledgerflow.contracts.events import Tier
from ledgerflow.ledger_db import reads
from ledgerflow.ledger_db.audit import CheckResult, run_audit
from ledgerflow.ledger_db.merchants import FeeRefusedError, set_merchant_fee
from ledgerflow.ledger_db.pii_rotation import rotate_pii
from ledgerflow.ledger_db.queries import (
    HOLDS_LISTED_MAX,
    MERCHANTS_LISTED_MAX,
    AccountView,
    HoldView,
    MerchantView,
    get_account,
    list_accounts,
    list_merchants,
    list_pending_holds,
)
from ledgerflow.workers.settings import Settings, pii_vault

console = Console()
T = TypeVar("T")
accounts_app = typer.Typer(no_args_is_help=True, help="Ledger accounts.")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


async def _connect(*, reader: bool = False) -> asyncpg.Connection:
    settings = Settings()
    url = settings.read_database_url if reader else settings.database_url
    return await asyncpg.connect(url.get_secret_value())


def _with_connection(
    work: Callable[[asyncpg.Connection], Awaitable[T]], *, reader: bool = False
) -> T:
    """Run one read against the ledger on a connection of its own: as the app role, or as the
    read API's role (`reader`), which is what `history` and `statement` read with."""

    async def run() -> T:
        conn = await _connect(reader=reader)
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


HISTORY_LINES_MAX = 10_000
FromOption = Annotated[
    datetime | None, typer.Option("--from", help="From this instant (RFC 3339), inclusive.")
]
ToOption = Annotated[
    datetime | None, typer.Option("--to", help="Up to this instant (RFC 3339), exclusive.")
]


def _aware(value: datetime | None, default: datetime) -> datetime:
    """A time given without a zone is UTC, as the ledger's days are."""
    if value is None:
        return default
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _entries_table(lines: list[reads.EntryLine]) -> Table:
    table = Table(
        "posted at (UTC)",
        "type",
        "id",
        Column("amount", justify="right"),
        "counterparty",
        Column("balance after", justify="right"),
    )
    for line in lines:
        table.add_row(
            line.created_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            line.type,
            str(line.id),
            f"{line.amount:+,}",
            str(line.counterparty_account_id or ""),
            f"{line.balance_after:,}",
        )
    return table


def _line_json(line: reads.EntryLine) -> dict[str, object]:
    return {
        "journal_entry_id": str(line.journal_entry_id),
        "type": line.type,
        "id": str(line.id),
        "amount": line.amount,
        "counterparty_account_id": (
            str(line.counterparty_account_id) if line.counterparty_account_id else None
        ),
        "balance_after": line.balance_after,
        "created_at": line.created_at.isoformat(),
    }


def history(
    account_id: uuid.UUID,
    limit: Annotated[
        int, typer.Option(min=1, max=HISTORY_LINES_MAX, help="Entries to show, newest first.")
    ] = 20,
    start: FromOption = None,
    end: ToOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A wallet's entries, newest first, with the balance after each (the read API's query)."""
    first, last = _aware(start, reads.TIME_MIN), _aware(end, reads.TIME_MAX)

    async def read(conn: asyncpg.Connection) -> list[reads.EntryLine] | None:
        if await reads.wallet_owner(conn, account_id) is None:
            return None
        lines: list[reads.EntryLine] = []
        before = None
        while len(lines) < limit:
            page = await reads.history(
                conn,
                account_id,
                limit=min(reads.PAGE_LIMIT_MAX, limit - len(lines)),
                before=before,
                start=first,
                end=last,
            )
            lines += page.lines
            if page.next_position is None:
                break
            before = page.next_position
        return lines

    lines = _with_connection(read, reader=True)
    if lines is None:
        console.print(f"[red]no wallet {account_id}[/red]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps([_line_json(line) for line in lines]))
    else:
        console.print(_entries_table(lines))


def statement(
    account_id: uuid.UUID,
    start: Annotated[datetime, typer.Option("--from", help="Start (RFC 3339), inclusive.")],
    end: Annotated[datetime, typer.Option("--to", help="End (RFC 3339), exclusive.")],
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, as the API's text/csv.")] = (
        False
    ),
    as_json: JsonFlag = False,
) -> None:
    """A wallet's statement: opening balance, the entries, totals in and out, closing balance
    (the read API's query)."""
    first, last = _aware(start, reads.TIME_MIN), _aware(end, reads.TIME_MAX)
    if not first < last <= first + timedelta(days=reads.STATEMENT_DAYS_MAX):
        raise typer.BadParameter(
            f"--from must be before --to, at most {reads.STATEMENT_DAYS_MAX} days apart"
        )

    async def read(conn: asyncpg.Connection) -> reads.Statement | None:
        owner = await reads.wallet_owner(conn, account_id)
        if owner is None:
            return None
        return await reads.statement(conn, account_id, owner.currency, first, last)

    try:
        found = _with_connection(read, reader=True)
    except reads.StatementTooLargeError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    if found is None:
        console.print(f"[red]no wallet {account_id}[/red]")
        raise typer.Exit(1)
    if as_csv:
        print(reads.statement_csv(found), end="")
    elif as_json:
        print(
            json.dumps(
                {
                    "account_id": str(found.account_id),
                    "currency": found.currency,
                    "from": found.start.isoformat(),
                    "to": found.end.isoformat(),
                    "opening_balance": found.opening_balance,
                    "closing_balance": found.closing_balance,
                    "total_in": found.total_in,
                    "total_out": found.total_out,
                    "entries": [_line_json(line) for line in found.lines],
                }
            )
        )
    else:
        console.print(
            f"statement of {found.account_id} ({found.currency}), "
            f"{found.start.isoformat()} to {found.end.isoformat()}"
        )
        console.print(f"opening balance {found.opening_balance:,}")
        console.print(_entries_table(found.lines))
        console.print(
            f"in {found.total_in:,}, out {found.total_out:,}, "
            f"closing balance {found.closing_balance:,}"
        )


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


merchants_app = typer.Typer(no_args_is_help=True, help="Merchants and their fees.")


@merchants_app.command("set-fee")
def merchants_set_fee(
    customer_id: Annotated[uuid.UUID, typer.Argument(help="The merchant customer's id.")],
    bps: Annotated[
        int, typer.Option("--bps", help="Basis points of each payment's amount, 0 to 10000.")
    ],
    fixed: Annotated[
        int, typer.Option("--fixed", help="Added to each payment's fee, in minor units.")
    ] = 0,
    by: Annotated[
        str | None, typer.Option("--by", help="Who sets it, on record (default: $USER).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Put a merchant's fee in force from its next payment on: min(amount, floor(amount x bps /
    10,000) + fixed). The previous schedules stay on record, with who set them and when."""
    operator = by if by is not None else os.environ.get("USER", "")
    try:
        fee = _with_connection(
            lambda conn: set_merchant_fee(conn, customer_id, bps, fixed, operator)
        )
    except FeeRefusedError as refused:
        console.print(f"[red]refused: {refused}[/red]", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(fee.as_json()))
        return
    console.print(
        f"merchant {customer_id} now pays {fee.bps} bps + {fee.fixed:,} fixed per payment"
        f" (set by {fee.changed_by} at {fee.changed_at.isoformat(timespec='seconds')})",
        highlight=False,
    )


@merchants_app.command("list")
def merchants_list(
    limit: Annotated[int, typer.Option(min=1, max=MERCHANTS_LISTED_MAX)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List merchants, oldest first: their wallets and the fee in force, with when and by whom
    it was set (`default`: none set, LEDGERFLOW_MERCHANT_FEE_BPS and _FIXED apply)."""
    settings = Settings()
    merchants = _with_connection(
        lambda conn: list_merchants(
            conn, settings.merchant_fee_bps, settings.merchant_fee_fixed, limit
        )
    )
    if as_json:
        print(json.dumps([m.as_json() for m in merchants]))
        return
    console.print(_merchants_table(merchants))
    console.print(f"{len(merchants)} merchant(s) shown")


def _merchants_table(merchants: list[MerchantView]) -> Table:
    # Folded, not cut: an id must stay whole to be copied, however narrow the terminal.
    headers = ("merchant", "wallet", "currency", "balance", "bps", "fixed", "set at", "set by")
    table = Table(*(Column(h, overflow="fold") for h in headers))
    for m in merchants:
        table.add_row(
            str(m.customer_id),
            "\n".join(str(w.account_id) for w in m.wallets),
            "\n".join(w.currency for w in m.wallets),
            "\n".join(f"{w.balance:,}" for w in m.wallets),
            str(m.bps),
            f"{m.fixed:,}",
            m.changed_at.isoformat(timespec="seconds") if m.changed_at else "default",
            m.changed_by or "",
        )
    return table


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
