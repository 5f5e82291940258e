"""Operating commands: topics, migrations, the worker and relay processes."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from ledger_db.migrate import migrate as apply_migrations
from workers.app import FLOW_NAMES, build_worker_app
from workers.relay import build_relay_app
from workers.settings import Settings
from workers.topics import ensure_topics, topic_specs

console = Console()
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the contract.")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


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
        ensure_topics(settings.kafka_bootstrap_servers, specs, settings.replication_factor)
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
    configure_logging()
    settings = Settings()
    app = build_worker_app(settings, names)
    asyncio.run(
        app.run(
            log_level=logging.WARNING,
            run_extra_options={"host": settings.http_host, "port": settings.http_port},
        )
    )


def relay() -> None:
    """Run the outbox relay until SIGTERM (one is active; others wait as standbys)."""
    configure_logging()
    settings = Settings()
    app = build_relay_app(
        settings.database_url.get_secret_value(),
        settings.kafka_bootstrap_servers,
        settings.relay_batch_rows_max,
    )
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")
