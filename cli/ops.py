"""Operating commands: topics, migrations, the worker and relay processes."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from contracts.topics import flow_by_name
from ledger_db.migrate import migrate as apply_migrations
from workers import logging as json_logs
from workers import tracing
from workers.app import FLOW_NAMES, build_worker_app, watched_group
from workers.kafka_security import kafka_client_options
from workers.lag import LagMonitor
from workers.relay import build_relay_app
from workers.settings import Settings
from workers.topics import ensure_topics, topic_specs

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


def migrate() -> None:
    """Apply the ledger's SQL migrations (safe to run twice, and from two processes at once)."""
    settings = Settings()
    applied = asyncio.run(apply_migrations(settings.migration_database_url.get_secret_value()))
    console.print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")


def worker(
    name: Annotated[str, typer.Argument(help="onboarding, cashin, transfer, cashout or all")],
) -> None:
    """Run the command worker(s) until SIGTERM."""
    names = list(FLOW_NAMES) if name == "all" else [name]
    unknown = set(names) - set(FLOW_NAMES)
    if unknown:
        raise typer.BadParameter(f"unknown worker {', '.join(sorted(unknown))}")
    settings = Settings()
    configure_logging(settings, "ledgerflow-worker")
    app = build_worker_app(settings, names)
    try:
        asyncio.run(
            app.run(
                log_level=logging.WARNING,
                # log_config=None: uvicorn logs through our handler instead of its own.
                run_extra_options={
                    "host": settings.http_host,
                    "port": settings.http_port,
                    "log_config": None,
                },
            )
        )
    finally:
        tracing.shutdown()


def relay() -> None:
    """Run the outbox relay until SIGTERM (one is active; others wait as standbys)."""
    settings = Settings()
    configure_logging(settings, "ledgerflow-relay")
    # Every flow's lag, measured here too: it must be reported when no worker runs.
    lag = LagMonitor(
        settings.kafka_bootstrap_servers,
        [watched_group(settings, flow_by_name(name)) for name in FLOW_NAMES],
        settings.lag_interval_ms / 1000,
        kafka_client_options(settings),
    )
    app = build_relay_app(
        settings.database_url.get_secret_value(),
        settings.kafka_bootstrap_servers,
        settings.relay_batch_rows_max,
        lag,
        kafka_client_options(settings),
    )
    try:
        uvicorn.run(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            log_config=None,
        )
    finally:
        tracing.shutdown()
