"""What the benchmarks measure besides the percentiles: latency by publish window, CPU by
process from /proc, the run queue, py-spy profiles of the processes under load (folded
stacks, summarised by function), and the spread of repeated runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

PROFILE_RATE_HZ = 100  # py-spy samples per second: enough for shares of a few percent
PROFILE_TOP = 25  # functions kept per profile summary
PROFILE_STOP_TIMEOUT_S = 30.0
WINDOW_S = 0.25  # latency windows: a few hundred commands each at 1,000/s
WINDOW_LIMIT_MS = 100.0  # the p99 target (issue 18): windows above it are counted
# The figures of a run report that repeated runs are summarised by (dotted paths into its JSON).
REPEATED_FIGURES = (
    "throughput_per_s",
    "ratio",
    "per_command_over_transfer",
    "transfer.throughput_per_s",
    "transfer.ratio",
    "latency_ms.p99",
    "worker_batch_locked_mean_ms",
    "machine_busy",
)


@dataclass(frozen=True, slots=True)
class LatencyWindows:
    """The p99 of each window of publish time: a run's p99 above the target is either every
    window a little slow, or a few windows stalled (a slow disk flush, a pause) while the rest
    stay well under it. Those need different fixes."""

    window_s: float
    windows: int
    over_limit: int  # windows whose p99 is above limit_ms
    limit_ms: float
    median_p99_ms: float  # the typical window
    worst_p99_ms: float
    worst_at_s: float  # the worst window's start, seconds into the measured run

    def as_json(self) -> dict[str, object]:
        return {
            "window_s": self.window_s,
            "windows": self.windows,
            f"over_{self.limit_ms:.0f}ms": self.over_limit,
            "median_p99_ms": round(self.median_p99_ms, 1),
            "worst_p99_ms": round(self.worst_p99_ms, 1),
            "worst_at_s": round(self.worst_at_s, 2),
        }


def latency_windows(
    samples: Iterable[tuple[float, float]],
    window_s: float = WINDOW_S,
    limit_ms: float = WINDOW_LIMIT_MS,
) -> LatencyWindows | None:
    """`samples`: (seconds since the start when published, latency in ms). None: no samples."""
    by_window: defaultdict[int, list[float]] = defaultdict(list)
    for at_s, latency_ms in samples:
        by_window[int(at_s // window_s)].append(latency_ms)
    if not by_window:
        return None
    p99s: dict[int, float] = {}
    for window, latencies in by_window.items():
        latencies.sort()
        p99s[window] = latencies[int(0.99 * (len(latencies) - 1))]
    ordered = sorted(p99s.values())
    worst = max(p99s, key=lambda w: p99s[w])
    return LatencyWindows(
        window_s,
        len(p99s),
        sum(1 for p99 in ordered if p99 > limit_ms),
        limit_ms,
        ordered[(len(ordered) - 1) // 2],
        p99s[worst],
        worst * window_s,
    )


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """Every process's command name and CPU seconds (its threads' included)."""
    tick = os.sysconf("SC_CLK_TCK")
    snapshot = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            command = text[text.index("(") + 1 : text.rindex(")")]
            snapshot[int(stat.parent.name)] = (command, (int(fields[11]) + int(fields[12])) / tick)
    return snapshot


def cpu_by_group(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    roles: dict[int, str],
) -> dict[str, float]:
    """CPU seconds between two snapshots by role (the bench's processes) or command name (the
    others: postgres, java for Kafka, …), largest first; processes gone meanwhile are missed."""
    groups: dict[str, float] = defaultdict(float)
    for pid, (command, seconds) in after.items():
        used = seconds - before.get(pid, (command, 0.0))[1]
        if used > 0:
            name = roles.get(pid) or {"java": "kafka (java)"}.get(command, command)
            groups[name] += used
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads have waited, runnable, for a CPU (/proc/PID/task/*/schedstat,
    second field): time a saturated machine adds to every answer."""
    waited = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            waited += int(stat.read_text().split()[1])
    return waited / 1e9


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot, all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # without guest time, which user time already counts
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def py_spy_path() -> str | None:
    """py-spy beside this interpreter (the dev extra installs it), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy recording one process until stopped (SIGINT: it writes its folded stacks)."""

    def __init__(self, pid: int, out: Path) -> None:
        py_spy = py_spy_path()
        if py_spy is None:
            raise RuntimeError("py-spy is not installed (make setup installs the dev extra)")
        self.out = out
        args = [py_spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ)]
        args += ["--format", "raw", "--nonblocking", "-o", str(out)]
        self._spy = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, object]:
        """Stop recording; the profile's summary (see `summarize_folded`)."""
        if self._spy.poll() is None:
            self._spy.send_signal(signal.SIGINT)
        try:
            self._spy.wait(PROFILE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._spy.kill()
            self._spy.wait()
        if not self.out.exists():
            return {"stacks": str(self.out), "error": "py-spy wrote no profile"}
        return {"stacks": str(self.out)} | summarize_folded(self.out.read_text())


_LINE = re.compile(r":\d+\)$")


def summarize_folded(text: str, top: int = PROFILE_TOP) -> dict[str, object]:
    """Samples, and the functions with the largest shares of them, inclusive (on the stack)
    and self (on top), from py-spy's raw folded stacks (`frame;frame;… count` per line)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n

    def shares(counter: Counter[str]) -> list[list[object]]:
        return [[name, round(n / total, 3)] for name, n in counter.most_common(top)]

    return (
        {"samples": total, "inclusive": shares(inclusive), "self": shares(own)}
        if total
        else {"samples": 0}
    )


def _figure(report: Mapping[str, object], path: str) -> float | None:
    value: object = report
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def repeat_summary(reports: Sequence[Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Median, range and values of each figure that every run reported: a box shared by the
    client, the broker and PostgreSQL spreads one run's ratio by ±10 %, so a target is judged
    on the median of several runs in a row, not on one."""
    summary: dict[str, dict[str, object]] = {}
    if not reports:
        return summary
    for path in REPEATED_FIGURES:
        values = [_figure(report, path) for report in reports]
        present = [v for v in values if v is not None]
        if len(present) < len(values):
            continue
        summary[path] = {
            "median": round(statistics.median(present), 3),
            "min": min(present),
            "max": max(present),
            "values": present,
        }
    return summary
