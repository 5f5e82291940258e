"""The latency-against-offered-rate plot of docs/benchmarks.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ledgerflow.cli.bench_e2e import E2EResult


def latency_plot(results: Sequence[E2EResult], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - a plotting stack is loaded only to plot

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rates = [r.offered_rate or r.throughput_per_s for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, values in (
        ("p50", [r.p50_ms for r in results]),
        ("p95", [r.p95_ms for r in results]),
        ("p99", [r.p99_ms for r in results]),
    ):
        ax.plot(rates, values, marker="o", label=label)
    ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="p99 target (100 ms)")
    ax.set_xlabel("offered transfers per second")
    ax.set_ylabel("publish → result consumed (ms)")
    ax.set_yscale("log")
    ax.set_title("Ledgerflow end to end: latency against offered rate (2 cores, all local)")
    ax.grid(visible=True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
