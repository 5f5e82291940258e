"""The plots of docs/benchmarks.md and docs/scaling.md."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from ledgerflow.cli.bench_e2e import E2EResult


@contextlib.contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """One plot's axes, then its grid, legend and PNG at `path`."""
    import matplotlib as mpl  # noqa: PLC0415 - a plotting stack is loaded only to plot

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(visible=True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def latency_plot(results: Sequence[E2EResult], path: Path) -> None:
    rates = [r.offered_rate or r.throughput_per_s for r in results]
    with _figure(
        path,
        "Ledgerflow end to end: latency against offered rate (2 cores, all local)",
        "offered transfers per second",
        "publish → result consumed (ms)",
    ) as ax:
        for label, values in (
            ("p50", [r.p50_ms for r in results]),
            ("p95", [r.p95_ms for r in results]),
            ("p99", [r.p99_ms for r in results]),
        ):
            ax.plot(rates, values, marker="o", label=label)
        ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="p99 target (100 ms)")
        ax.set_yscale("log")


def scaling_plot(results: Sequence[E2EResult], ceiling_per_s: float | None, path: Path) -> None:
    """Throughput against worker processes, one line per partition count."""
    with _figure(
        path,
        "Ledgerflow end to end: throughput against workers (2 cores, all local)",
        "worker processes",
        "transfers per second, end to end",
    ) as ax:
        for p in sorted({r.partitions for r in results}):
            line = sorted((r.workers, r.throughput_per_s) for r in results if r.partitions == p)
            ax.plot(*zip(*line, strict=True), marker="o", label=f"{p} partitions")
        if ceiling_per_s:
            ax.axhline(ceiling_per_s, color="grey", linestyle="--", linewidth=1, label="ceiling")
            ax.axhline(
                ceiling_per_s / 2, color="grey", linestyle=":", linewidth=1, label="0.5x ceiling"
            )
        ax.set_xticks(sorted({r.workers for r in results}))
        ax.set_ylim(bottom=0)
