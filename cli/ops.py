"""Operating commands: topics, migrations, the worker and relay processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Annotated

import asyncpg
import typer
import uvicorn
from rich.console import Console

from ledgerflow.contracts.topics import FLOWS
from ledgerflow.ledger_db.content_hash import keying_state
from ledgerflow.ledger_db.migrate import migrate as apply_migrations
from ledgerflow.workers import event_loop, gc_policy, tracing
from ledgerflow.workers import logging as json_logs
from ledgerflow.workers.app import FLOW_NAMES, build_worker_app, watched_group
from ledgerflow.workers.kafka_security import kafka_client_options
from ledgerflow.workers.lag import LagMonitor
from ledgerflow.workers.relay import build_relay_app
from ledgerflow.workers.settings import Settings, content_hash_key, http_port
from ledgerflow.workers.topics import ensure_topics, topic_specs

console = Console()
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the contract.")


def configure_logging(settings: Settings, service: str) -> None:
    """JSON lines on stdout (workers/logging.py), and traces when an OTLP endpoint is set."""
    json_logs.configure(
        service,
        level=settings.log_level,
        fmt=settings.log_format,
        command_lines=settings.log_commands,
    )
    tracing.configure(settings, service)


@topics_app.command("ensure")
def topics_ensure() -> None:
    """Create every command, result and dead-letter topic that is missing."""
    settings = Settings()
    specs = topic_specs(
        settings.topic_prefix,
        settings.command_partitions,
        settings.result_partitions,
        settings.dlq_partitions,
    )
    created = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers,
            specs,
            settings.replication_factor,
            kafka_client_options(settings),
        )
    )
    console.print(f"topics: {len(specs)} in the contract, {len(created)} created")
    for name in created:
        console.print(f"  created {name}")


def migrate(
    key_content_hashes: Annotated[
        bool,
        typer.Option(
            "--key-content-hashes",
            help="Key the content hashes at rest (HMAC under LEDGERFLOW_CONTENT_HASH_KEY) and "
            "re-key old rows. Only once no worker older than release 0.2 runs: those compare "
            "plain hashes (docs/decisions/migrations.md).",
        ),
    ] = False,
) -> None:
    """Apply the ledger's SQL migrations and data steps (safe to run twice, and concurrently)."""
    settings = Settings()
    dsn = settings.migration_database_url.get_secret_value()
    key = content_hash_key(settings)
    if key.is_dev:
        console.print("[yellow]content hashes are keyed with the public development key[/yellow]")

    async def run() -> tuple[list[str], str]:
        applied = await apply_migrations(
            dsn, content_hash_key=key, key_content_hashes_now=key_content_hashes
        )
        conn = await asyncpg.connect(dsn)
        try:
            return applied, (await keying_state(conn)).describe()
        finally:
            await conn.close()

    applied, keying = asyncio.run(run())
    console.print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    console.print(f"content hashes: {keying}")


def checked_http_port(settings: Settings, kind: str) -> int:
    """The process' HTTP port, checked free before anything starts. uvicorn binds only after
    the app's startup: a worker would join its consumer groups (rebalancing them), then exit 3
    with a bare errno line. A port taken between this check and uvicorn's bind still exits 3."""
    host, port = settings.http_host, http_port(settings, kind)
    if port == 0:  # any free port: nothing to check
        return port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as error:
        reason = "port in use" if error.errno == errno.EADDRINUSE else str(error)
        raise SystemExit(
            f"ledgerflow {kind}: cannot serve HTTP on {host}:{port} ({reason}); set "
            "LEDGERFLOW_HTTP_PORT to a free port (each process on a host needs its own)"
        ) from None
    return port


def worker(
    name: Annotated[str, typer.Argument(help="onboarding, cashin, transfer, cashout or all")],
) -> None:
    """Run the command worker(s) until SIGTERM. The cash-out worker also consumes the second
    phase (cashout.settled, cashout.returned) and expires holds."""
    names = list(FLOW_NAMES) if name == "all" else [name]
    unknown = set(names) - set(FLOW_NAMES)
    if unknown:
        raise typer.BadParameter(f"unknown worker {', '.join(sorted(unknown))}")
    settings = Settings()
    port = checked_http_port(settings, "worker" if name == "all" else f"worker-{name}")
    configure_logging(settings, "ledgerflow-worker")
    app = build_worker_app(settings, names)
    gc_policy.tune_for_batches()
    try:
        event_loop.run(
            app.run(
                log_level=logging.WARNING,
                # log_config=None: uvicorn logs through our handler instead of its own.
                run_extra_options={
                    "host": settings.http_host,
                    "port": port,
                    "log_config": None,
                },
            )
        )
    finally:
        tracing.shutdown()


def api() -> None:
    """Run the read API (balances, history, statements, command outcomes over HTTP) until
    SIGTERM; stateless, read-only, as many replicas as needed."""
    from ledgerflow.api.app import asgi_app  # noqa: PLC0415 (FastAPI only for this command)

    settings = Settings()
    port = checked_http_port(settings, "api")
    configure_logging(settings, "ledgerflow-api")
    try:
        uvicorn.run(
            asgi_app(settings),
            host=settings.http_host,
            port=port,
            log_level="warning",
            log_config=None,
            lifespan="on",
        )
    finally:
        tracing.shutdown()


def relay() -> None:
    """Run the outbox relay until SIGTERM (one is active; others wait as standbys)."""
    settings = Settings()
    port = checked_http_port(settings, "relay")
    configure_logging(settings, "ledgerflow-relay")
    # Every flow's lag, measured here too: it must be reported when no worker runs.
    lag = LagMonitor(
        settings.kafka_bootstrap_servers,
        [watched_group(settings, flow) for flow in FLOWS],
        settings.lag_interval_ms / 1000,
        kafka_client_options(settings),
    )
    app = build_relay_app(
        settings.database_url.get_secret_value(),
        settings.kafka_bootstrap_servers,
        settings.relay_batch_rows_max,
        lag,
        kafka_client_options(settings),
        topic_prefix=settings.topic_prefix,
        quarantine_attempts=settings.relay_quarantine_attempts,
        retention_s=settings.outbox_retention_s,
    )
    gc_policy.tune_for_batches()
    try:
        uvicorn.run(
            app,
            host=settings.http_host,
            port=port,
            log_level="warning",
            log_config=None,
        )
    finally:
        tracing.shutdown()
