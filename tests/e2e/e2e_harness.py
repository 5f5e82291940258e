"""One scenario: a pipeline on the fault stack, a seeded workload, faults, drain, checks, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledgerflow.testkit.pipeline import running_pipeline
from ledgerflow.testkit.scrape import metric
from ledgerflow.testkit.workload import Observer, Report, Workload, drain, measure_recovery, verify

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from ledgerflow.harness.processes import ManagedProcess
    from ledgerflow.testkit.faults import FaultStack
    from ledgerflow.testkit.pipeline import Pipeline

__all__ = ["assert_ok", "http_get", "metric", "scenario"]

# Report lines of the session's scenarios, repeated in pytest's terminal summary (conftest).
REPORT_LINES: list[str] = []
WALLETS = 24
LOAD_RATE_PER_S = 100.0
DRAIN_TIMEOUT_S = 120.0


@dataclass(slots=True)
class Scenario:
    pipeline: Pipeline
    observer: Observer
    workload: Workload
    report: Report
    rng: random.Random
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _load: asyncio.Task[int] | None = None
    _recoveries: list[asyncio.Task[None]] = field(default_factory=list)

    def start_load(self, rate_per_s: float = LOAD_RATE_PER_S) -> None:
        self._stop.clear()
        self._load = asyncio.create_task(self.workload.run(rate_per_s, self._stop))

    async def stop_load(self) -> None:
        self._stop.set()
        if self._load is not None:
            await self._load
            self._load = None

    async def load_for(self, seconds: float) -> None:
        """Let the load run on (a fault's own duration, not a synchronisation)."""
        await asyncio.sleep(seconds)

    def recovery(self, kind: str, healed_at: float | None = None) -> asyncio.Task[None]:
        """Count a fault and measure, beside the load, how long until everything sent so far
        is answered."""
        self.report.faults[kind] += 1
        task = asyncio.create_task(
            measure_recovery(
                self.workload, self.report, kind, healed_at or time.monotonic(), DRAIN_TIMEOUT_S
            )
        )
        self._recoveries.append(task)
        return task

    async def start(self, *args: str) -> ManagedProcess:
        """Another process on the pipeline, started off the event loop (it waits until ready)."""
        return await asyncio.to_thread(self.pipeline.start, *args)

    async def finish(self, drained: Callable[[], Awaitable[None]] | None = None) -> Report:
        """Stop the load, drain (bounded), run every check, print and keep the report line.
        `drained` runs once the system is drained, before the report (to add notes)."""
        await self.stop_load()
        try:
            took = await drain(self.workload, self.observer, DRAIN_TIMEOUT_S)
            self.report.notes["drain_s"] = took.get("results_read")
        except TimeoutError as error:
            self.report.problems.append(str(error))
        for task in self._recoveries:
            await task
        if drained is not None:
            await drained()
        await verify(self.workload, self.observer, self.report)
        line = self.report.line()
        print(line)
        if self.report.problems:  # what the processes said, for a failure seen only in CI
            for process in (*self.pipeline.workers, self.pipeline.relay, *self.pipeline.extra):
                print(warnings_of(process))
        REPORT_LINES.append(line)
        return self.report

    async def close(self) -> None:
        self._stop.set()
        for task in (self._load, *self._recoveries):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.observer.close()


@asynccontextmanager
async def scenario(
    name: str,
    faults: FaultStack,
    template: str,
    tmp_path: Path,
    seed: int,
    *,
    workers: int = 1,
    worker_args: tuple[str, ...] = ("worker", "all"),
    wallets: int = WALLETS,
    **settings: Any,
) -> AsyncIterator[Scenario]:
    async with running_pipeline(
        faults.postgres,
        faults.kafka,
        template,
        tmp_path / "logs",
        workers=workers,
        worker_args=worker_args,
        **settings,
    ) as p:
        observer = Observer(p.database.admin_url, p.database.name, p.bootstrap, p.prefix)
        workload = Workload(
            p.producer,
            p.results,
            p.prefix,
            seed,
            poison_marker=settings.get("fault_poison_marker", ""),
        )
        s = Scenario(p, observer, workload, Report(name, seed), random.Random(seed + 1))
        try:
            if wallets:
                await workload.open_wallets(wallets)
            yield s
        finally:
            await s.close()


def warnings_of(process: ManagedProcess, kinds_max: int = 40) -> str:
    """A process' warnings and errors, one line per message with its count and last time."""
    seen: dict[tuple[str, str, str], tuple[int, str]] = {}
    text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"level": "raw", "logger": "", "msg": raw[:200], "ts": ""}
        if entry.get("level") not in {"warning", "error", "critical", "raw"}:
            continue
        what = f"{entry.get('msg', '')} {entry.get('flow', '')} {entry.get('error_class', '')}"
        key = (str(entry.get("level")), str(entry.get("logger")), what.strip()[:200])
        count, _ = seen.get(key, (0, ""))
        seen[key] = (count + 1, str(entry.get("ts", "")))
    lines = [f"-- {' '.join(process.args)} ({process.log_path.name}): warnings and errors"]
    for (level, logger, msg), (count, last) in list(seen.items())[-kinds_max:]:
        lines.append(f"{count:6d}x last {last} {level} {logger}: {msg}")
    return "\n".join(lines)


def assert_ok(report: Report) -> None:
    assert report.ok, "\n".join([report.line(), *report.problems[:30]])


def http_get(process: ManagedProcess, path: str, timeout_s: float = 10.0) -> tuple[int, str, float]:
    """(status, body, seconds): like ManagedProcess.get, with a longer bound and its duration."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{process.port}{path}", timeout=timeout_s
        ) as response:
            status, body = int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = int(error.code), error.read().decode()
    return status, body, time.monotonic() - started
