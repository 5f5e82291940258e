"""Run Ledgerflow's processes against a test stack and await result events by command id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from cli.processes import ManagedProcess, free_port, ledgerflow_env, start_process
from cli.results import ResultCollector, event_id_of, publish


@dataclass(slots=True)
class Pipeline:
    """Everything a test needs of a running pipeline."""

    database: Any  # testkit.plugin.IsolatedDatabase
    prefix: str
    bootstrap: str
    env: dict[str, str]
    worker: ManagedProcess
    relay: ManagedProcess
    producer: AIOKafkaProducer
    results: ResultCollector
    log_dir: Path


__all__ = [
    "ManagedProcess",
    "Pipeline",
    "ResultCollector",
    "event_id_of",
    "free_port",
    "ledgerflow_env",
    "publish",
    "start_process",
]
