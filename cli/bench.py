"""`ledgerflow bench …`: measured numbers, never timing assertions in tests."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.cli import bench_contracts, bench_e2e, bench_ledger, bench_plot
from ledgerflow.workers.settings import Settings

console = Console()
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; results go to docs/benchmarks.md.")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def machine() -> dict[str, object]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cores": os.cpu_count(), "memory_gib": round(pages / 2**30, 1)}


@bench_app.command("ledger")
def ledger(
    wallets: int = typer.Option(10_000, help="Wallets the transfers spread over."),
    batch: list[int] = typer.Option([1, 100, 500, 2000], help="Batch sizes to measure."),
    transfers: int = typer.Option(20_000, help="Transfers per case at most."),
    as_json: JsonFlag = False,
) -> None:
    """Transfers/s through the batched apply, spread over wallets and into one hot wallet."""
    settings = Settings()
    results = bench_ledger.run(
        settings.migration_database_url.get_secret_value(),
        settings.database_url.get_secret_value(),
        wallets,
        batch,
        transfers,
    )
    spread_500 = next((r.per_s for r in results if r.case == "spread" and r.batch == 500), None)
    rows = [
        {
            "case": r.case,
            "batch": r.batch,
            "transfers": r.transfers,
            "seconds": round(r.seconds, 3),
            "transfers_per_s": round(r.per_s),
        }
        for r in results
    ]
    if as_json:
        print(json.dumps({"machine": machine(), "results": rows}))
        return
    table = Table("case", "batch", "transfers", "seconds", "transfers/s", "vs batch 1")
    base = {r.case: r.per_s for r in results if r.batch == 1}
    for r in results:
        ratio = f"{r.per_s / base[r.case]:.1f}x" if r.case in base else ""
        table.add_row(
            r.case, str(r.batch), str(r.transfers), f"{r.seconds:.2f}", f"{r.per_s:,.0f}", ratio
        )
    console.print(table)
    if spread_500:
        hot_500 = next((r.per_s for r in results if r.case == "hot" and r.batch == 500), 0.0)
        console.print(f"hot/spread at batch 500: {hot_500 / spread_500:.2f}")
    console.print(f"machine: {machine()}")


@bench_app.command("e2e")
def e2e(
    transfers: int = typer.Option(20_000, min=100, max=1_000_000, help="Transfers to publish."),
    wallets: int = typer.Option(10_000, min=2, max=1_000_000, help="Wallets they spread over."),
    rate: float | None = typer.Option(None, help="Offered rate per second (default: full speed)."),
    naive: bool = typer.Option(False, "--naive", help="One transaction and commit per message."),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Run batched, then naive (at most 2,000 transfers), and report the ratio.",
    ),
    workers: int = typer.Option(2, min=1, max=6, help="Transfer worker processes (≤ partitions)."),
    auth: bool = typer.Option(True, help="Sign commands and verify tokens, as in production."),
    flow: str = typer.Option(
        "transfer",
        help="transfer; cashout-two-phase (held cash-outs, then their settles) or payment (to "
        "one hot merchant): both measured in the same run as transfers, per command.",
    ),
    as_json: JsonFlag = False,
) -> None:
    """Publish commands and measure publish → result-consumed throughput and latency."""
    if flow not in bench_e2e.FLOWS:
        raise typer.BadParameter(f"unknown flow {flow}; one of {', '.join(bench_e2e.FLOWS)}")
    settings = Settings()
    owner, app = (
        settings.migration_database_url.get_secret_value(),
        settings.database_url.get_secret_value(),
    )
    # A flow other than transfers is judged against transfers measured in the same run.
    runs = [("transfer", False), (flow, False)] if flow != "transfer" else []
    runs += [] if runs else [(flow, False), (flow, True)] if compare else [(flow, naive)]
    results = []
    for run_flow, mode in runs:
        n = min(transfers, 2_000) if (mode and compare) else transfers
        results.append(
            asyncio.run(
                bench_e2e.run_e2e(
                    owner,
                    app,
                    settings.kafka_bootstrap_servers,
                    transfers=n,
                    wallets=wallets,
                    rate=rate,
                    naive=mode,
                    batch_records_max=settings.batch_records_max,
                    workers=workers,
                    auth=auth,
                    flow=run_flow,
                )
            )
        )
    out: dict[str, object] = results[-1].as_json() | {"machine": machine()}
    if flow != "transfer":
        out["transfer"] = results[0].as_json()
        out["per_command_over_transfer"] = round(
            results[1].throughput_per_s / results[0].throughput_per_s, 2
        )
    elif compare:
        out = results[0].as_json() | {"machine": machine()}
        out["naive"] = results[1].as_json()
        out["batched_over_naive"] = round(
            results[0].throughput_per_s / results[1].throughput_per_s, 1
        )
    if as_json:
        print(json.dumps(out))
        return
    table = Table(
        "flow",
        "mode",
        "offered/s",
        "transfers",
        "throughput/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "batch (mean)",
        "batch ms (mean)",
    )
    for r in results:
        table.add_row(
            r.flow,
            r.mode,
            f"{r.offered_rate:,.0f}" if r.offered_rate else "max",
            f"{r.transfers:,}",
            f"{r.throughput_per_s:,.0f}",
            f"{r.p50_ms:.0f}",
            f"{r.p95_ms:.0f}",
            f"{r.p99_ms:.0f}",
        )
    console.print(table)
    if flow != "transfer":
        console.print(
            f"{flow} / transfer throughput per command: {out['per_command_over_transfer']}x"
        )
    elif compare:
        console.print(f"batched / naive throughput: {out['batched_over_naive']}x")
    console.print(f"machine: {machine()}")


@bench_app.command("sweep")
def sweep(
    rates: str = typer.Option("250,500,1000,2000,3000", help="Offered rates per second."),
    seconds: float = typer.Option(8.0, min=1, max=120, help="Measured seconds per rate."),
    wallets: int = typer.Option(10_000, min=2, max=1_000_000),
    out: str = typer.Option("docs/bench", help="Folder for e2e-sweep.json and e2e-latency.png."),
) -> None:
    """Latency percentiles against offered rate (one e2e run per rate), as JSON and a PNG plot."""
    settings = Settings()
    owner, app = (
        settings.migration_database_url.get_secret_value(),
        settings.database_url.get_secret_value(),
    )
    results = []
    for rate in [float(r) for r in rates.split(",")]:
        result = asyncio.run(
            bench_e2e.run_e2e(
                owner,
                app,
                settings.kafka_bootstrap_servers,
                transfers=int(rate * seconds),
                wallets=wallets,
                rate=rate,
                naive=False,
                batch_records_max=settings.batch_records_max,
            )
        )
        results.append(result)
        console.print(
            f"offered {rate:,.0f}/s: achieved {result.throughput_per_s:,.0f}/s, "
            f"p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
        )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "e2e-sweep.json").write_text(
        json.dumps({"machine": machine(), "results": [r.as_json() for r in results]}, indent=2)
        + "\n"
    )
    bench_plot.latency_plot(results, folder / "e2e-latency.png")
    console.print(f"wrote {folder / 'e2e-sweep.json'} and {folder / 'e2e-latency.png'}")


@bench_app.command("contracts")
def contracts(
    messages: int = typer.Option(100_000, min=1_000, max=10_000_000),
    as_json: JsonFlag = False,
) -> None:
    """Decode + validate of transfer.initiated, single core, in process."""
    result = bench_contracts.bench_parse(messages)
    if as_json:
        print(json.dumps(result | {"machine": machine()}))
        return
    console.print(
        f"parse_command: {result['messages_per_s']:,.0f} messages/s "
        f"(baseline orjson + pydantic only: {result['baseline_messages_per_s']:,.0f}/s)"
    )
