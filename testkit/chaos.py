"""The soak mode behind `ledgerflow chaos`: combined faults every ~10 s under a steady workload.

A stack of its own (`FaultStack`), two workers, an active relay and a standby. Every interval
one fault is drawn (sometimes two at once): kill -9 or SIGTERM a worker, freeze one past its
session timeout, kill the relay between publish and mark or the active one outright, crash and
restart Kafka or PostgreSQL, freeze PostgreSQL, a poison message, a storm of A<->B transfers.
The faults are healed (processes replaced, services restarted), and at the end the system is
drained and every invariant of `testkit.workload.verify` is checked; the report line says what
was injected and how long the system took to recover each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ledgerflow.testkit.faults import (
    FaultStack,
    freeze,
    kill9,
    kill_relay_between_publish_and_mark,
    kill_worker_at,
    terminate,
    thaw,
)
from ledgerflow.testkit.pipeline import running_pipeline
from ledgerflow.testkit.plugin import build_template
from ledgerflow.testkit.workload import Observer, Report, Workload, drain, measure_recovery, verify
from ledgerflow.workers.app import GRACEFUL_TIMEOUT_S, SESSION_TIMEOUT_MS

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from ledgerflow.harness.processes import ManagedProcess
    from ledgerflow.testkit.pipeline import Pipeline

    Heal = Callable[[], Awaitable[None]]

POISON_MARKER = "CHAOS-POISON-5d2e"
WALLETS = 30
STORM_TRANSFERS = 200
PROBE_ATTEMPTS_MAX = 100
DRAIN_TIMEOUT_S = 180.0
RECOVERY_TIMEOUT_S = 180.0
EXIT_BOUND_S = GRACEFUL_TIMEOUT_S + 5
# uvicorn re-raises SIGTERM once its graceful shutdown is done: -15 is a clean exit as well.
CLEAN_EXIT = (0, -signal.SIGTERM)
FROZEN_S = SESSION_TIMEOUT_MS / 1000 + 3  # past the session timeout: the group rebalances

# Faults of the services; the others act on processes or traffic and may join one of these.
INFRA = ("kafka_restart", "postgres_restart", "postgres_pause")
PROCESS = (
    "kill9_worker",
    "sigstop_worker",
    "sigterm_worker",
    "kill9_relay",
    "kill9_active_relay",
    "poison",
    "storm",
)
# Faults that can join another one (they need no probe of PostgreSQL or Kafka and no long wait).
JOINERS = ("kill9_worker", "kill9_active_relay", "poison", "storm")
COMBINED_SHARE = 0.35
WORKER_FAULTS = ("kill9_worker", "sigstop_worker", "sigterm_worker")


@dataclass(slots=True)
class Chaos:
    stack: FaultStack
    pipeline: Pipeline
    observer: Observer
    workload: Workload
    report: Report
    rng: random.Random
    say: Callable[[str], None]
    relays: list[ManagedProcess] = field(default_factory=list)  # [active, standby]
    _recoveries: list[asyncio.Task[None]] = field(default_factory=list)
    _traffic: list[asyncio.Task[None]] = field(default_factory=list)

    async def start_process(self, *args: str) -> ManagedProcess:
        return await asyncio.to_thread(self.pipeline.start, *args)

    def draw(self) -> list[str]:
        first = self.rng.choice(INFRA + PROCESS)
        if self.rng.random() < COMBINED_SHARE:
            # One fault per worker slot at a time: two would both replace the same worker.
            taken = {first} | (set(WORKER_FAULTS) if first in WORKER_FAULTS else set())
            second = self.rng.choice([k for k in JOINERS if k not in taken])
            return [first, second]
        return [first]

    async def inject(self, kinds: list[str]) -> None:
        """Break everything drawn (services first), keep it broken, heal (services first)."""
        infra = any(k in INFRA for k in kinds)
        kinds = sorted(kinds, key=lambda k: k not in INFRA)
        heals: list[tuple[float, Heal]] = []
        errors: list[BaseException] = []
        try:
            for kind in kinds:
                self.report.faults[kind] += 1
                heals.append(await self.breakers()[kind](probe=not infra))
            await asyncio.sleep(max(down for down, _ in heals))  # the faults' own duration
        finally:
            for _, heal in heals:  # whatever broke is healed, even if the next fault failed
                try:
                    await heal()
                except Exception as error:
                    errors.append(error)
        if errors:
            raise errors[0]
        label = "+".join(kinds)
        self._recoveries.append(
            asyncio.create_task(
                measure_recovery(
                    self.workload, self.report, label, time.monotonic(), RECOVERY_TIMEOUT_S
                )
            )
        )

    def breakers(self) -> dict[str, Callable[..., Awaitable[tuple[float, Heal]]]]:
        return {
            "kafka_restart": self.kafka_restart,
            "postgres_restart": self.postgres_restart,
            "postgres_pause": self.postgres_pause,
            "kill9_worker": self.kill9_worker,
            "sigstop_worker": self.sigstop_worker,
            "sigterm_worker": self.sigterm_worker,
            "kill9_relay": self.kill9_relay,
            "kill9_active_relay": self.kill9_active_relay,
            "poison": self.poison,
            "storm": self.storm,
        }

    async def _nothing(self) -> None:
        return None

    # -- services -------------------------------------------------------------------------------

    async def kafka_restart(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        await self.stack.stop_kafka(crash=self.rng.random() < 0.5)
        return self.rng.uniform(1, 5), self.stack.start_kafka

    async def postgres_restart(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        await self.stack.stop_postgres()
        return self.rng.uniform(1, 4), self.stack.start_postgres

    async def postgres_pause(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        self.stack.pause_postgres()

        async def heal() -> None:
            self.stack.resume_postgres()

        return self.rng.uniform(8, 20), heal

    # -- processes ------------------------------------------------------------------------------

    async def _replace_worker(self, index: int) -> None:
        self.pipeline.workers[index] = await self.start_process("worker", "all")

    async def kill9_worker(self, *, probe: bool) -> tuple[float, Heal]:
        index = self.rng.randrange(len(self.pipeline.workers))
        worker = self.pipeline.workers[index]
        if probe:
            moment = self.rng.choice(("in_transaction", "after_db_commit"))
            kill = await kill_worker_at(
                worker, self.observer, self.workload, moment, self.rng, PROBE_ATTEMPTS_MAX
            )
            self.report.notes["kill_moments"] = ",".join(
                filter(None, (str(self.report.notes.get("kill_moments", "")), kill.moment))
            )
        else:
            kill9(worker)

        async def heal() -> None:
            await self._replace_worker(index)

        return 0.0, heal

    async def sigstop_worker(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        worker = self.rng.choice(self.pipeline.workers)
        freeze(worker)

        async def heal() -> None:
            thaw(worker)

        return FROZEN_S, heal

    async def sigterm_worker(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        index = self.rng.randrange(len(self.pipeline.workers))
        worker = self.pipeline.workers[index]
        code, took = await terminate(worker, EXIT_BOUND_S)
        self.report.recovery_s["sigterm_exit"].append(round(took, 2))
        if code not in CLEAN_EXIT:
            self.report.problems.append(f"SIGTERM: worker exited {code} after {took:.1f} s")
            kill9(worker)

        async def heal() -> None:
            await self._replace_worker(index)

        return 0.0, heal

    async def kill9_relay(self, *, probe: bool) -> tuple[float, Heal]:
        active = self.relays[0]
        if probe:
            _, unmarked = await kill_relay_between_publish_and_mark(
                active, self.observer, self.workload.results, self.rng, PROBE_ATTEMPTS_MAX
            )
            self.report.notes["relay_resend_due"] = (
                int(self.report.notes.get("relay_resend_due", 0)) + unmarked
            )
        else:
            kill9(active)
        return 0.0, self._replace_relay

    async def kill9_active_relay(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        kill9(self.relays[0])
        return 0.0, self._replace_relay

    async def _replace_relay(self) -> None:
        """The standby has taken (or is taking) the lock; a new standby joins."""
        self.relays = [self.relays[1], await self.start_process("relay")]

    # -- traffic --------------------------------------------------------------------------------

    def _background(self, work: Awaitable[object]) -> None:
        """Traffic is published beside the fault: with the broker down it waits for it, and
        must not hold up the heal that brings the broker back."""

        async def run() -> None:
            await work

        self._traffic.append(asyncio.create_task(run()))

    async def poison(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        self._background(self.workload.publish_poison())
        return 0.0, self._nothing

    async def storm(self, *, probe: bool) -> tuple[float, Heal]:  # noqa: ARG002
        from ledgerflow.contracts.topics import TRANSFER  # noqa: PLC0415
        from ledgerflow.testkit.commands import transfer  # noqa: PLC0415

        a, b = self.rng.sample(self.workload.wallets, 2)
        commands = [
            transfer(*((a, b) if i % 2 else (b, a)), self.rng.randint(1, 1_000))
            for i in range(STORM_TRANSFERS)
        ]

        async def publish_all() -> None:
            for command in commands:
                await self.workload.publish(TRANSFER, command)

        self._background(publish_all())
        return 0.0, self._nothing

    async def settle(self) -> None:
        """Every fault healed and measured; the processes all alive."""
        self.stack.resume_postgres()
        for task in (*self._traffic, *self._recoveries):
            await task
        for index, worker in enumerate(self.pipeline.workers):
            if worker.process.poll() is not None:
                self.report.problems.append(f"worker {index} died: {worker.log_tail(10)}")
                await self._replace_worker(index)


async def soak(
    stack: FaultStack | None,
    minutes: float,
    seed: int,
    *,
    interval_s: float = 10.0,
    rate_per_s: float = 100.0,
    workers: int = 2,
    say: Callable[[str], None] = print,
) -> Report:
    """The soak on `stack`, which it crashes and restarts and leaves running, or (None) on a
    stack of its own, removed afterwards. A database and topics of its own; the processes' logs
    are kept when a check failed."""
    say(f"chaos: seed={seed} minutes={minutes} interval={interval_s}s rate={rate_per_s}/s")
    root = Path(tempfile.mkdtemp(prefix="ledgerflow-chaos-"))  # the processes' logs
    report: Report | None = None
    async with contextlib.AsyncExitStack() as owned:
        if stack is None:
            stack = await FaultStack.start()
            owned.push_async_callback(stack.close)
        say(f"chaos: PostgreSQL and Kafka in {stack.settings.stack_dir}, logs in {root}")
        try:
            template = await build_template(stack.postgres)
            async with running_pipeline(
                stack.postgres,
                stack.kafka,
                template,
                root / "logs",
                workers=workers,
                fault_poison_marker=POISON_MARKER,
            ) as p:
                report = await _soak(stack, p, seed, minutes, interval_s, rate_per_s, say)
        finally:
            if report is not None and report.ok:
                shutil.rmtree(root, ignore_errors=True)
            else:
                say(f"chaos: the processes' logs are kept in {root / 'logs'}")
    return report


async def _soak(
    stack: FaultStack,
    p: Pipeline,
    seed: int,
    minutes: float,
    interval_s: float,
    rate_per_s: float,
    say: Callable[[str], None],
) -> Report:
    observer = Observer(p.database.admin_url, p.database.name, p.bootstrap, p.prefix)
    workload = Workload(p.producer, p.results, p.prefix, seed, poison_marker=POISON_MARKER)
    rng = random.Random(seed + 1)
    report = Report(f"chaos {minutes:g}min", seed)
    chaos = Chaos(stack, p, observer, workload, report, rng, say, relays=[p.relay])
    stop = asyncio.Event()
    load: asyncio.Task[int] | None = None
    try:
        chaos.relays.append(await chaos.start_process("relay"))
        await workload.open_wallets(WALLETS)
        await _raise_limits(observer, workload.wallets[: WALLETS * 2 // 3])
        load = asyncio.create_task(workload.run(rate_per_s, stop))
        started = time.monotonic()
        deadline = started + minutes * 60
        while time.monotonic() + interval_s / 2 < deadline:
            await asyncio.sleep(interval_s * rng.uniform(0.7, 1.3))  # the schedule's own pace
            kinds = chaos.draw()
            t = time.monotonic() - started
            say(f"  {t:7.1f}s  {'+'.join(kinds)} ...")
            try:
                await chaos.inject(kinds)
                healed_s = time.monotonic() - started - t
                say(f"  {t:7.1f}s  {'+'.join(kinds)} healed after {healed_s:.1f}s")
            except Exception as error:
                report.problems.append(f"{'+'.join(kinds)}: {type(error).__name__}: {error}")
                say(f"  {t:7.1f}s  {'+'.join(kinds):36s} FAILED: {type(error).__name__}: {error}")
        stop.set()
        await load
        await chaos.settle()
        took = await drain(workload, observer, DRAIN_TIMEOUT_S)
        report.notes["drain_s"] = took.get("results_read")
        await verify(workload, observer, report)
    except Exception as error:
        report.problems.append(f"run aborted: {type(error).__name__}: {error}")
    finally:
        stop.set()
        stack.resume_postgres()
        if load is not None and not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await load
        await observer.close()
    report.elapsed_s = time.monotonic() - report.started
    return report


async def _raise_limits(observer: Observer, wallets: list[uuid.UUID]) -> None:
    """Move most of the soak's customers to the standard tier: at 100 commands/s the basic
    tier's daily limit would end up refusing most of a long soak's debits, and a soak is for
    moving money under faults. The rest stay basic, so limits still bind during faults (and the
    audit checks their totals against the debits)."""
    await observer.value(
        "UPDATE customers c SET tier = 'standard' FROM accounts a"
        " WHERE a.customer_id = c.id AND a.id = ANY($1::uuid[])",
        wallets,
    )
