"""`ledgerflow stack up|down|status|env`: the local PostgreSQL and Apache Kafka, without Docker."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from ledgerflow import stack
from ledgerflow.stack import ServiceChange, StackError, StackSettings

stack_app = typer.Typer(
    no_args_is_help=True,
    help="The embedded local stack: PostgreSQL and Apache Kafka as plain processes.",
)
console = Console()
errors = Console(stderr=True)


def _print_failure(what: str, exc: StackError) -> None:
    """Log tails contain [brackets]: print them verbatim, not as rich markup, and unwrapped."""
    errors.print(f"[red]{what} failed:[/red]")
    errors.print(str(exc), markup=False, highlight=False, soft_wrap=True)


def _report_start(change: ServiceChange) -> None:
    for note in change.notes:
        console.print(f"[yellow]{note}[/yellow]", markup=True, highlight=False)
    if change.changed:
        console.print(f"[green]started[/green] {change.name} (pid {change.pid})")
    else:
        console.print(f"{change.name} already running (pid {change.pid})")


@stack_app.command()
def up() -> None:
    """Start PostgreSQL and Kafka unless they run; wait until both accept connections."""
    settings = StackSettings()
    try:
        endpoints = asyncio.run(stack.up_async(settings, on_progress=_report_start))
    except StackError as exc:
        _print_failure("stack up", exc)
        raise typer.Exit(1) from exc
    console.print(
        f"PostgreSQL {settings.host}:{settings.postgres_port} (database ledgerflow), "
        f"Kafka {endpoints.kafka_bootstrap_servers}. "
        "`ledgerflow stack env --show-secrets` prints the connection variables."
    )
    if settings.secure:
        console.print(
            "Secure mode: Kafka SASL_SSL/SCRAM-SHA-512 on "
            f"{endpoints.kafka_bootstrap_servers}, mutual TLS on "
            f"{settings.kafka_mtls_bootstrap_servers}, ACLs per principal; PostgreSQL over TLS "
            "only. `--kafka-principal` picks whose Kafka credentials `stack env` prints."
        )


@stack_app.command()
def down() -> None:
    """Stop both services (bounded: SIGKILL after LEDGERFLOW_STACK_STOP_TIMEOUT_S)."""
    try:
        changes = stack.down(StackSettings())
    except StackError as exc:
        _print_failure("stack down", exc)
        raise typer.Exit(1) from exc
    for change in changes.values():
        if change.changed:
            console.print(f"stopped {change.name} (pid {change.pid})")
        else:
            console.print(f"{change.name} was not running")


@stack_app.command()
def status() -> None:
    """Pid, port and health of each service; exits 1 unless both are healthy."""
    rows = stack.status(StackSettings())
    table = Table(title="ledgerflow stack")
    for column in ("service", "pid", "address", "health"):
        table.add_column(column)
    table.add_column("log", overflow="fold")  # a path is only useful whole
    for row in rows:
        if row.healthy:
            health = "[green]healthy[/green]"
        elif row.running:
            health = "[yellow]not answering[/yellow]"
        else:
            health = "[red]stopped[/red]"
        table.add_row(row.name, str(row.pid or "-"), f"{row.host}:{row.port}", health, str(row.log))
    console.print(table)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


@stack_app.command()
def env(
    show_secrets: bool = typer.Option(
        False, "--show-secrets", help="Print real passwords (for `eval`); masked otherwise."
    ),
    kafka_principal: str = typer.Option(
        "ledgerflow-worker",
        help="Secure mode: whose Kafka credentials (ledgerflow-worker, -relay, -api, -admin).",
    ),
) -> None:
    """Print `export LEDGERFLOW_...` lines; use: eval "$(ledgerflow stack env --show-secrets)"."""
    try:
        lines = stack.env_lines(
            StackSettings(), show_secrets=show_secrets, kafka_principal=kafka_principal
        )
    except StackError as exc:
        _print_failure("stack env", exc)
        raise typer.Exit(1) from exc
    for line in lines:
        print(line)
