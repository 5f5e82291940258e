"""`ledgerflow outbox`: result events the relay quarantined, and releasing them once fixed.

Shows metadata only (id, topic, key, error, attempts, age), never a payload.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.ledger_db.outbox import LISTED_MAX, list_quarantined, retry_quarantined
from ledgerflow.workers.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

console = Console()
outbox_app = typer.Typer(no_args_is_help=True, help="The outbox of result events.")
T = TypeVar("T")
ERROR_PREVIEW_CHARS = 80


def _with_connection(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """As the app role (which may read the outbox and clear a quarantine), on its own session."""

    async def run() -> T:
        conn = await asyncpg.connect(Settings().database_url.get_secret_value())
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@outbox_app.command("quarantined")
def quarantined(
    limit: int = typer.Option(100, min=1, max=LISTED_MAX),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """List the quarantined rows, oldest first: what the relay could not publish, and why."""
    rows = _with_connection(lambda conn: list_quarantined(conn, limit))
    if as_json:
        print(json.dumps([row.as_json() for row in rows]))
        return
    table = Table("id", "topic", "key", "attempts", "error", "age")
    for row in rows:
        table.add_row(
            str(row.id),
            row.topic,
            row.key,
            str(row.attempts),
            row.last_error[:ERROR_PREVIEW_CHARS],
            f"{row.age_s:,.0f} s",
        )
    console.print(table)
    console.print(f"{len(rows)} quarantined row(s) shown")


@outbox_app.command("retry")
def retry(
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", help="A quarantined row's id (repeat for several)."),
    ] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Every quarantined row.")] = False,
) -> None:
    """Release quarantined rows: the relay publishes them in id order (after the cause is fixed).

    A row given by --id is released with the older quarantined rows of its key, so it is not
    published ahead of them. Safe to repeat: a row the relay quarantines again shows again.
    """
    if all_rows == bool(ids):
        raise typer.BadParameter("give either --id N (repeatable) or --all")
    released = _with_connection(lambda conn: retry_quarantined(conn, None if all_rows else ids))
    console.print(f"released {len(released)} row(s) for the relay to publish")
    if released:
        console.print(f"ids {released[0]} … {released[-1]}")
