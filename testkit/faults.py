"""Fault injection: crash, freeze and restart Ledgerflow's processes and its PostgreSQL and Kafka.

`FaultStack` is an embedded stack of its own (own folder, free ports), so a test or
`ledgerflow chaos` can kill its broker or database without touching the shared one. The process
faults act on `harness.processes.ManagedProcess` children. The probing kills freeze a process
(SIGSTOP), look at PostgreSQL and Kafka from outside, and either kill it there (the moment they
were looking for: inside a transaction, or after the DB commit but before the offset commit, or
after publishing but before marking) or let it run on and look again a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ledgerflow.harness.processes import free_port
from ledgerflow.stack import StackSettings, down_async, up_async
from ledgerflow.stack import kafka_broker as stack_kafka
from ledgerflow.stack import postgres as stack_postgres
from ledgerflow.stack.process import descendants, pid_alive, remove_file, stop_process
from ledgerflow.testkit.plugin import KafkaServer, PostgresServer

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable

    from ledgerflow.harness.processes import ManagedProcess
    from ledgerflow.harness.results import ResultCollector
    from ledgerflow.testkit.workload import Observer, Workload

KAFKA_HEAP_MB = 512  # a second broker beside the shared one on a 2-core machine
EXIT_WAIT_S = 10.0
PROBE_ATTEMPTS_MAX = 400
PROBE_PAUSE_S = (0.002, 0.04)  # how long a probed process runs on between two looks


@dataclass(slots=True)
class FaultStack:
    """PostgreSQL and Kafka of one's own, to crash, restart and freeze."""

    settings: StackSettings
    postgres: PostgresServer
    kafka: KafkaServer
    _frozen: list[int] = field(default_factory=list)

    @classmethod
    async def start(cls, kafka_heap_mb: int = KAFKA_HEAP_MB) -> FaultStack:
        """A new stack in `.stack/fault-stacks/<pid>-<id>` (after stopping orphans, see there)."""
        await reap_orphans()
        settings = StackSettings(
            dir=_home() / f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
            postgres_port=free_port(),
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            kafka_heap_mb=kafka_heap_mb,
        )
        try:
            await up_async(settings)
        except BaseException:
            await _take_down(settings.stack_dir)  # whichever service did start
            raise
        return cls(
            settings,
            PostgresServer(admin_url=stack_postgres.admin_url(settings), source="embedded"),
            KafkaServer(bootstrap_servers=settings.kafka_bootstrap_servers, source="embedded"),
        )

    async def close(self) -> None:
        self.resume_postgres()
        await _take_down(self.settings.stack_dir)

    # -- Kafka ---------------------------------------------------------------------------------

    async def stop_kafka(self, *, crash: bool) -> None:
        """crash: SIGKILL (the log is recovered at start); else a clean SIGTERM shutdown."""
        pid = stack_kafka.running_pid(self.settings)
        assert pid is not None, "the broker is not running"
        first = signal.SIGKILL if crash else signal.SIGTERM
        await asyncio.to_thread(
            stop_process, pid, first_signal=first, timeout_s=self.settings.stop_timeout_s
        )
        remove_file(stack_kafka.paths(self.settings).pid_file)

    async def start_kafka(self) -> None:
        await stack_kafka.start(self.settings)

    # -- PostgreSQL ----------------------------------------------------------------------------

    async def stop_postgres(self) -> None:
        """Immediate shutdown (SIGQUIT, what `pg_ctl stop -m immediate` sends): no checkpoint,
        sessions cut, crash recovery at the next start."""
        pid = stack_postgres.running_pid(self.settings)
        assert pid is not None, "PostgreSQL is not running"
        await asyncio.to_thread(
            stop_process, pid, first_signal=signal.SIGQUIT, timeout_s=self.settings.stop_timeout_s
        )
        user = stack_postgres.os_user(self.settings, create=False)
        remove_file(stack_postgres.paths(self.settings, user).pid_file)

    async def start_postgres(self) -> None:
        await stack_postgres.start(self.settings)

    def pause_postgres(self) -> None:
        """Freeze the server and every backend: connections stay open and nothing answers, as
        in a network partition (TCP retransmits until it heals)."""
        pid = stack_postgres.running_pid(self.settings)
        assert pid is not None, "PostgreSQL is not running"
        for target in (pid, *descendants(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGSTOP)
                self._frozen.append(target)

    def resume_postgres(self) -> None:
        for target in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)
        self._frozen.clear()


# Fault stacks live beside the shared stack, in `.stack/fault-stacks/<pid>-<id>`, named after
# the process that started them. A run killed outright (SIGKILL, a CI timeout) cannot stop its
# stack; the next start finds it by its dead owner and stops and removes it.
def _home() -> Path:
    return StackSettings().stack_dir / "fault-stacks"


async def _take_down(stack_dir: Path) -> None:
    """Stop both services of a fault stack and remove its files, also its PostgreSQL folder
    when that lives elsewhere (as root it may be in /var/tmp, see stack.postgres.paths)."""
    settings = StackSettings(dir=stack_dir)
    await down_async(settings)
    user = stack_postgres.os_user(settings, create=False)
    pg_root = stack_postgres.paths(settings, user).root
    if not pg_root.is_relative_to(settings.stack_dir):
        shutil.rmtree(pg_root, ignore_errors=True)
    shutil.rmtree(stack_dir, ignore_errors=True)


async def reap_orphans() -> list[Path]:
    """Stop and remove the fault stacks whose starting process is gone; returns their folders."""
    reaped: list[Path] = []
    if not _home().is_dir():
        return reaped
    for stack_dir in sorted(_home().iterdir()):
        owner = stack_dir.name.split("-", 1)[0]
        if owner.isdigit() and pid_alive(int(owner)):
            continue
        await _take_down(stack_dir)
        reaped.append(stack_dir)
    return reaped


# --------------------------------------------------------------------------------------------
# Process faults.


def kill9(process: ManagedProcess) -> None:
    process.process.kill()
    process.process.wait(EXIT_WAIT_S)


def freeze(process: ManagedProcess) -> None:
    process.process.send_signal(signal.SIGSTOP)


def thaw(process: ManagedProcess) -> None:
    process.process.send_signal(signal.SIGCONT)


async def terminate(process: ManagedProcess, timeout_s: float) -> tuple[int | None, float]:
    """SIGTERM; (exit code or None if it outlived `timeout_s`, seconds it took)."""
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(process.process.wait, timeout_s)
    return process.process.poll(), time.monotonic() - started


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (Linux /proc): PostgreSQL knows its clients by
    them (pg_stat_activity.client_port), which tells one worker's sessions from another's."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True, slots=True)
class Kill:
    """What a probing kill found at the moment it struck."""

    attempts: int
    in_transaction: bool  # a batch transaction of the worker was open, not committing: rolled back
    applied_not_committed: int  # commands in PostgreSQL whose offsets Kafka had not got yet

    @property
    def moment(self) -> str:
        """Both can hold at once: `worker all` runs one subscriber per flow."""
        found = [
            name
            for name, hit in (
                ("in_transaction", self.in_transaction),
                ("after_db_commit", self.applied_not_committed > 0),
            )
            if hit
        ]
        return "+".join(found) or "between_batches"


async def probe_until(
    process: ManagedProcess,
    found: Callable[[], Awaitable[bool]],
    rng: random.Random,
    attempts_max: int = PROBE_ATTEMPTS_MAX,
) -> int:
    """Freeze `process`, and leave it frozen as soon as `found()` holds; otherwise let it run a
    moment and look again. Returns the attempts made (the process is frozen on return)."""
    attempt = 0
    while True:
        attempt += 1
        freeze(process)
        if await found() or attempt >= attempts_max:
            return attempt
        thaw(process)
        await asyncio.sleep(rng.uniform(*PROBE_PAUSE_S))


async def kill_worker_at(
    worker: ManagedProcess,
    observer: Observer,
    workload: Workload,
    moment: str,
    rng: random.Random,
    attempts_max: int = PROBE_ATTEMPTS_MAX,
) -> Kill:
    """kill -9 `worker` at `moment`: "in_transaction" (a batch transaction open) or
    "after_db_commit" (a batch committed in PostgreSQL, its offsets not yet in Kafka)."""
    in_tx = False

    async def found() -> bool:
        nonlocal in_tx
        in_tx = await observer.open_worker_transactions(local_ports(worker.process.pid)) > 0
        if moment == "in_transaction":
            return in_tx
        return await observer.applied_beyond_committed(workload) > 0

    attempts = await probe_until(worker, found, rng, attempts_max)
    kill9(worker)
    # PostgreSQL finishes whatever the frozen worker had already sent (even a COMMIT): classify
    # by what is durable after the kill.
    beyond = await observer.applied_beyond_committed(workload)
    return Kill(attempts, in_tx, beyond)


async def kill_relay_between_publish_and_mark(
    relay: ManagedProcess,
    observer: Observer,
    results: ResultCollector,
    rng: random.Random,
    attempts_max: int = PROBE_ATTEMPTS_MAX,
) -> tuple[int, int]:
    """kill -9 the relay once the result topics hold events it has not marked published yet.
    Returns (attempts, events that will be published again)."""

    async def found() -> bool:
        return await observer.delivered_but_unmarked(results) > 0

    attempts = await probe_until(relay, found, rng, attempts_max)
    kill9(relay)
    return attempts, await observer.delivered_but_unmarked(results)
