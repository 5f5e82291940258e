"""Run Ledgerflow's processes against a test stack and await result events by command id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts.codec import KafkaRecord, encode_command
from contracts.topics import FLOWS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import BaseModel

    from contracts.topics import Flow

READY_TIMEOUT_S = 60.0
ID_FIELDS = tuple(flow.id_field for flow in FLOWS)
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ledgerflow_env(
    database_url: str, bootstrap_servers: str, topic_prefix: str, **extra: str
) -> dict[str, str]:
    """The environment of a worker or relay pointed at a test database, broker and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env |= {
        "LEDGERFLOW_DATABASE_URL": database_url,
        "LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "LEDGERFLOW_TOPIC_PREFIX": topic_prefix,
    }
    env |= {f"LEDGERFLOW_{k.upper()}": v for k, v in extra.items()}
    return env


@dataclass(slots=True)
class ManagedProcess:
    """A `ledgerflow …` child process with its HTTP port; stop() is SIGTERM, then SIGKILL."""

    args: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:  # noqa: S310
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.args} not ready in {timeout_s}s: {self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return int(self.process.returncode)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    args: Sequence[str], env: Mapping[str, str], log_dir: Path, *, wait: bool = True
) -> ManagedProcess:
    """Start `ledgerflow ARGS` (e.g. ["worker", "all"] or ["relay"]) on a free HTTP port."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{'-'.join(args)}-{port}.log"
    full_env = dict(env) | {"LEDGERFLOW_HTTP_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args], env=full_env, stdout=log,
            stderr=subprocess.STDOUT,
        )
    managed = ManagedProcess(list(args), port, process, log_path)
    if wait:
        managed.wait_ready()
    return managed


@dataclass(slots=True)
class ResultCollector:
    """Reads every result topic from the start and indexes events by the command's id."""

    bootstrap_servers: str
    topic_prefix: str = ""
    flows: Sequence[Flow] = FLOWS
    events: list[dict[str, Any]] = field(default_factory=list)
    by_causation: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # By idempotency key (transfer_id, …): a replay carries the first command's causationid.
    by_command_key: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        topics = [self.topic_prefix + t for f in self.flows for t in (f.completed_topic, f.rejected_topic)]
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=self.bootstrap_servers, group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    event["_key"] = record.key
                    event["_partition"] = record.partition
                    event["_headers"] = dict(record.headers)
                    self.events.append(event)
                    self.by_causation[str(event.get("causationid"))].append(event)
                    data = event.get("data") or {}
                    for id_field in ID_FIELDS:
                        if id_field in data:
                            self.by_command_key[str(data[id_field])].append(event)
            self._arrived.set()

    async def wait_for(self, causation_id: str, timeout_s: float = 30.0, count: int = 1) -> list[dict[str, Any]]:
        """The result events of one command (by its CloudEvents id), once `count` arrived."""
        async def until() -> None:
            while len(self.by_causation.get(causation_id, ())) < count:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(until(), timeout_s)
        return self.by_causation[causation_id]

    async def wait_for_key(
        self, key: str, timeout_s: float = 30.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """The result events that answer an idempotency key, replays included."""

        async def until() -> None:
            while len(self.by_command_key.get(key, ())) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout_s)
        return self.by_command_key[key]

    async def wait_total(self, count: int, timeout_s: float = 60.0) -> None:
        async def until() -> None:
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(until(), timeout_s)


async def publish(
    producer: AIOKafkaProducer, command: BaseModel, flow: Flow, topic_prefix: str = "", **kwargs: Any
) -> KafkaRecord:
    """Publish one command as an upstream API layer would; returns what was sent."""
    rec = encode_command(flow, command, topic_prefix=topic_prefix, **kwargs)
    await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=list(rec.headers))
    return rec


def event_id_of(rec: KafkaRecord) -> str:
    return str(orjson.loads(rec.value)["id"])


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
