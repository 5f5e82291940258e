"""`ledgerflow bench …`: measured numbers, never timing assertions in tests."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from ledgerflow.cli import (
    bench_api,
    bench_ceiling,
    bench_contracts,
    bench_e2e,
    bench_ledger,
    bench_plot,
)
from ledgerflow.cli.bench_measure import repeat_summary
from ledgerflow.workers import event_loop, gc_policy
from ledgerflow.workers.settings import Settings

console = Console()
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; results go to docs/benchmarks.md.")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
REPEAT_MAX = 50  # runs of one `bench e2e --repeat`: ~25-90 s each


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
    gc_policy.tune_for_batches()  # the apply runs here as in a worker process
    results = bench_ledger.run(
        settings.migration_database_url.get_secret_value(),
        settings.database_url.get_secret_value(),
        wallets,
        batch,
        transfers,
    )
    spread_500 = next((r.per_s for r in results if r.case == "spread" and r.batch == 500), None)
    ceiling = next((r.per_s for r in results if r.case == "ceiling"), None)
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
        out: dict[str, object] = {"machine": machine(), "results": rows}
        if ceiling:
            out["ceiling_per_s"] = round(ceiling)
            out["ratio"] = round(spread_500 / ceiling, 3) if spread_500 else None
        print(json.dumps(out))
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
        if ceiling:
            console.print(f"spread at batch 500 / ceiling: {spread_500 / ceiling:.2f}")
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
    workers: int = typer.Option(
        2, min=1, max=bench_e2e.PARTITIONS_MAX, help="Worker processes (≤ partitions)."
    ),
    partitions: int = typer.Option(
        bench_e2e.PARTITIONS_DEFAULT,
        min=1,
        max=bench_e2e.PARTITIONS_MAX,
        help="Partitions of each command and result topic.",
    ),
    auth: bool = typer.Option(True, help="Sign commands and verify tokens, as in production."),
    flow: str = typer.Option(
        "transfer",
        help="transfer; cashout-two-phase (held cash-outs, then their settles), payment (to one "
        "hot merchant) or refund (payments to one merchant, then a partial refund of each): "
        "the others measured in the same run as transfers, per command.",
    ),
    profile: Path | None = typer.Option(
        None,
        help="Record the first worker and the relay with py-spy over the measured window, into "
        "this folder (raw folded stacks; the JSON summarises them).",
    ),
    setting: list[str] = typer.Option(
        [],
        help="A worker setting for this run, NAME=VALUE (LEDGERFLOW_NAME), e.g. batch_wait_ms=20; "
        "repeatable.",
    ),
    repeat: int = typer.Option(
        1,
        min=1,
        max=REPEAT_MAX,
        help="Run the whole measurement this many times in a row on the same stack and report "
        "each run and the median, range and values of its figures (one run's ratio spreads "
        "by ±10 % on a shared box).",
    ),
    as_json: JsonFlag = False,
) -> None:
    """Publish commands and measure publish → result-consumed throughput and latency."""
    worker_settings = _settings_of(setting)
    if flow not in bench_e2e.FLOWS:
        raise typer.BadParameter(f"unknown flow {flow}; one of {', '.join(bench_e2e.FLOWS)}")
    if workers > partitions:
        raise typer.BadParameter("--workers must not exceed --partitions (an idle worker)")
    # A flow other than transfers is judged against transfers measured in the same run.
    runs = [("transfer", False), (flow, False)] if flow != "transfer" else []
    runs += [] if runs else [(flow, False), (flow, True)] if compare else [(flow, naive)]
    reports: list[tuple[list[bench_e2e.E2EResult], dict[str, object]]] = []
    for _ in range(repeat):
        results = []
        for run_flow, mode in runs:
            n = min(transfers, 2_000) if (mode and compare) else transfers
            results.append(
                _run_e2e(
                    transfers=n,
                    wallets=wallets,
                    rate=rate,
                    naive=mode,
                    workers=workers,
                    auth=auth,
                    flow=run_flow,
                    partitions=partitions,
                    profile_dir=profile,
                    worker_settings=worker_settings,
                )
            )
        reports.append((results, _e2e_report(results, flow, compare=compare)))
    outs = [out for _, out in reports]
    summary = repeat_summary(outs) if repeat > 1 else {}
    if as_json:
        if repeat == 1:
            print(json.dumps(outs[0]))
        else:
            print(json.dumps({"runs": outs, "summary": summary, "machine": machine()}))
        return
    for results, out in reports:
        _print_e2e(results, out, flow, compare=compare)
    for path, figure in summary.items():
        console.print(
            f"{path} over {repeat} runs: median {figure['median']}, "
            f"min {figure['min']}, max {figure['max']}"
        )
    console.print(f"machine: {machine()}")


def _e2e_report(
    results: list[bench_e2e.E2EResult], flow: str, *, compare: bool
) -> dict[str, object]:
    """One measurement's JSON: the last run, with transfers (another flow) or the naive mode
    (--compare) beside it."""
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
    return out


def _print_e2e(
    results: list[bench_e2e.E2EResult], out: dict[str, object], flow: str, *, compare: bool
) -> None:
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
            f"{r.batch.commands:.0f}",
            f"{r.batch.ms:.0f}",
        )
    console.print(table)
    for r in results:
        console.print(f"{r.flow} {r.mode}: CPU seconds in the window: {_cpu_used(r)}")
        if r.ceiling_per_s:
            ratio = r.throughput_per_s / r.ceiling_per_s
            console.print(f"ceiling {r.ceiling_per_s:,.0f}/s; ratio {ratio:.2f}")
    if flow != "transfer":
        console.print(
            f"{flow} / transfer throughput per command: {out['per_command_over_transfer']}x"
        )
    elif compare:
        console.print(f"batched / naive throughput: {out['batched_over_naive']}x")


def _run_e2e(**options: Any) -> bench_e2e.E2EResult:
    """One `run_e2e` against the configured stack (the databases, Kafka, the batch bound)."""
    settings = Settings()
    # The client on the workers' loop: it shares their two cores, so its cost is theirs too.
    return event_loop.run(
        bench_e2e.run_e2e(
            settings.migration_database_url.get_secret_value(),
            settings.database_url.get_secret_value(),
            settings.kafka_bootstrap_servers,
            batch_records_max=settings.batch_records_max,
            **options,
        )
    )


def _cpu_used(result: bench_e2e.E2EResult) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_s.items() if v >= 0.1)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _settings_of(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs as worker settings; a name must be one of Settings' fields."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name.lower() not in Settings.model_fields:
            raise typer.BadParameter(f"--setting {pair!r}: NAME=VALUE with a worker setting NAME")
        out[name.lower()] = value
    return out


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


@bench_app.command("api")
def api(
    entries: int = typer.Option(1_000_000, min=1_000, max=100_000_000, help="Journal entries."),
    wallets: int = typer.Option(100_000, min=100, max=10_000_000, help="Wallets they are on."),
    batch: int = typer.Option(
        2_000, min=100, max=5_000, help="Transfers per LedgerWriter batch (--build writer)."
    ),
    days: int = typer.Option(365, min=1, max=3_650, help="Days of history the entries span."),
    build: str = typer.Option(
        bench_api.BUILD_SQL,
        help="How the transfers are written: sql (bulk-loaded, the wallets through LedgerWriter) "
        "or writer (every transfer through LedgerWriter: slower, over 5 minutes at the default "
        "size on 2 cores).",
    ),
    clients: int = typer.Option(16, min=1, max=256, help="Concurrent keep-alive clients."),
    read_rate: float | None = typer.Option(
        None,
        min=1,
        max=100_000,
        help="Requests/s offered by all clients together (open loop); default: each client "
        "sends its next request when the last is answered.",
    ),
    seconds: float = typer.Option(30.0, min=1, max=600, help="Measured seconds."),
    warm_up: float = typer.Option(5.0, min=0, max=120, help="Seconds of reads not measured."),
    write_rate: float = typer.Option(
        1_000.0, min=0, max=20_000, help="Transfers/s published through Kafka meanwhile."
    ),
    workers: int = typer.Option(2, min=1, max=6, help="Transfer worker processes."),
    as_owners: bool = typer.Option(
        False,
        "--as-owners",
        help=f"Read {bench_api.ACTIVE_USERS:,} wallets with their owners' tokens "
        "(else ledger:read tokens).",
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the benchmark's database."),
    reuse: bool = typer.Option(
        False, "--reuse", help="Measure on the database a --keep run left, if any (no build)."
    ),
    profile: Path | None = typer.Option(
        None, help="Record the API process with py-spy over the window (raw folded stacks)."
    ),
    as_json: JsonFlag = False,
) -> None:
    """Read API latency and throughput on a large ledger while the workers write."""
    if build not in bench_api.BUILD_METHODS:
        raise typer.BadParameter(f"--build is one of {', '.join(bench_api.BUILD_METHODS)}")
    if entries <= wallets:
        raise typer.BadParameter("--entries must exceed --wallets (a cash-in each, then transfers)")
    settings = Settings()
    progress = Console(stderr=True).print
    result = asyncio.run(
        bench_api.run_api_bench(
            settings.migration_database_url.get_secret_value(),
            settings.database_url.get_secret_value(),
            settings.read_database_url.get_secret_value(),
            settings.kafka_bootstrap_servers,
            wallets=wallets,
            entries=entries,
            batch=batch,
            days=days,
            build=build,
            clients=clients,
            read_rate=read_rate,
            seconds=seconds,
            warm_up_s=warm_up,
            write_rate=write_rate,
            workers=workers,
            as_owners=as_owners,
            keep=keep or reuse,
            reuse=reuse,
            profile=profile,
            progress=progress,
        )
    )
    out = result.as_json() | {"machine": machine()}
    if as_json:
        print(json.dumps(out))
        return
    ledger = result.ledger
    console.print(
        f"ledger: {ledger.entries:,} entries ({ledger.postings:,} postings) on "
        f"{len(ledger.wallets):,} wallets, built in {ledger.seconds:.0f}s: {ledger.method}"
    )
    table = Table(
        Column("endpoint", no_wrap=True),
        Column("count", justify="right"),
        Column("req/s", justify="right"),
        Column("p50", justify="right"),
        Column("p95", justify="right"),
        Column("p99", justify="right"),
        Column("max", justify="right"),
        Column("err", justify="right"),
        Column("non-2xx", justify="right"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title=f"{result.clients} clients"
        + (f" offering {result.read_rate:,.0f} req/s" if result.read_rate else " (closed loop)")
        + f", {result.seconds:.1f}s, {'owner' if result.as_owners else 'ledger:read'} tokens"
        + " (latencies in ms)",
    )
    for e in result.endpoints:
        table.add_row(
            e.endpoint,
            f"{e.count:,}",
            f"{e.per_s:,.0f}",
            *(_ms(v) for v in (e.p50_ms, e.p95_ms, e.p99_ms, e.max_ms)),
            str(e.errors),
            str(sum(e.non_2xx.values())),
        )
    overall: dict[str, Any] = out["overall"]  # type: ignore[assignment]
    cpu: dict[str, Any] = out["cpu"]  # type: ignore[assignment]
    table.add_row(
        "all",
        f"{overall['requests']:,}",
        f"{overall['per_s']:,.0f}",
        *[""] * 4,
        str(overall["errors"]),
        str(overall["non_2xx"]),
    )
    console.print(table)
    console.print(
        "server side (the API's histogram), p99 within: "
        + ", ".join(
            f"{e.endpoint} ≤ {e.server_p99_le_ms:g} ms"
            for e in result.endpoints
            if e.server_p99_le_ms is not None and e.endpoint != "entries (next page)"
        )
    )
    console.print(
        f"writes: {result.write_rate:,.0f} transfers/s committed during the window "
        f"(offered {result.write_rate_offered:,.0f}/s, {result.writes_published:,} published)"
    )
    console.print(
        f"api CPU: {cpu['api_seconds']}s = {cpu['api_ms_per_request']} ms per request "
        f"({cpu['api_cores']} cores), waited runnable for a CPU "
        f"{cpu['api_runqueue_wait_ms_per_request']} ms per request; "
        f"machine busy {cpu['machine_busy']:.0%}"
    )
    by_process: dict[str, float] = cpu["seconds_by_process"]
    console.print(
        "CPU seconds in the window: "
        + ", ".join(f"{name} {used:.1f}" for name, used in list(by_process.items())[:6])
    )
    if result.others_cpu_s > 0.1 * result.seconds * (os.cpu_count() or 1):
        console.print(
            f"[yellow]noisy: other processes used {result.others_cpu_s:.1f} CPU s during the "
            "window (another session on this machine?)[/yellow]"
        )
    verdict = "met" if result.target_met() else "MISSED"
    console.print(
        f"target p99 ≤ {bench_api.TARGET_P99_MS:g} ms for a wallet read and a history page: "
        f"{verdict}"
    )
    console.print(f"machine: {machine()}")


@bench_app.command("sweep")
def sweep(
    rates: str = typer.Option("250,500,1000,2000,3000", help="Offered rates per second."),
    seconds: float = typer.Option(8.0, min=1, max=120, help="Measured seconds per rate."),
    wallets: int = typer.Option(10_000, min=2, max=1_000_000),
    workers: int = typer.Option(2, min=1, max=bench_e2e.PARTITIONS_DEFAULT),
    setting: list[str] = typer.Option([], help="A worker setting, NAME=VALUE; repeatable."),
    out: str = typer.Option("docs/bench", help="Folder for e2e-sweep.json and e2e-latency.png."),
) -> None:
    """Latency percentiles against offered rate (one e2e run per rate), as JSON and a PNG plot."""
    worker_settings = _settings_of(setting)
    results = []
    for rate in [float(r) for r in rates.split(",")]:
        result = _run_e2e(
            transfers=int(rate * seconds),
            wallets=wallets,
            rate=rate,
            naive=False,
            workers=workers,
            ceiling=False,  # a latency run: the yardstick is the throughput runs'
            worker_settings=worker_settings,
        )
        results.append(result)
        console.print(
            f"offered {rate:,.0f}/s: achieved {result.throughput_per_s:,.0f}/s, "
            f"p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
        )
        if (w := result.windows) is not None:
            console.print(
                f"  p99 per {w.window_s:g} s: median {w.median_p99_ms:.0f} ms, worst "
                f"{w.worst_p99_ms:.0f} ms at {w.worst_at_s:.2f} s, {w.over_limit} of "
                f"{w.windows} over {w.limit_ms:.0f} ms"
            )
    folder = Path(out)
    _write_json(
        folder / "e2e-sweep.json",
        {"machine": machine(), "results": [r.as_json() for r in results]},
    )
    bench_plot.latency_plot(results, folder / "e2e-latency.png")
    console.print(f"wrote {folder / 'e2e-sweep.json'} and {folder / 'e2e-latency.png'}")


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{name} is a comma-separated list of integers") from None
    if not values or min(values) < 1 or max(values) > bench_e2e.PARTITIONS_MAX:
        raise typer.BadParameter(f"{name}: 1..{bench_e2e.PARTITIONS_MAX} each")
    return values


@bench_app.command("scaling")
def scaling(
    workers: str = typer.Option("1,2,4", help="Worker process counts."),
    partitions: str = typer.Option("6,12,24", help="Partition counts of every topic."),
    transfers: int = typer.Option(20_000, min=100, max=1_000_000, help="Transfers per run."),
    wallets: int = typer.Option(10_000, min=2, max=1_000_000),
    out: str = typer.Option("docs/bench", help="Folder for e2e-scaling.json and the plot."),
) -> None:
    """Throughput against worker processes by partitions, auth on, with CPU by process per run
    and one ceiling for all of them, as JSON and a PNG plot."""
    grid = [
        (w, p)
        for p in _int_list(partitions, "--partitions")
        for w in _int_list(workers, "--workers")
        if w <= p
    ]
    results = []
    for i, (w, p) in enumerate(grid):
        result = _run_e2e(
            transfers=transfers,
            wallets=wallets,
            rate=None,
            naive=False,
            workers=w,
            partitions=p,
            ceiling=i == len(grid) - 1,  # the yardstick once, after the last run
        )
        results.append(result)
        console.print(
            f"{w} workers, {p} partitions: {result.throughput_per_s:,.0f}/s, p99 "
            f"{result.p99_ms:.0f} ms, machine busy {100 * (result.machine_busy or 0):.0f} %; "
            f"CPU s: {_cpu_used(result)}"
        )
    ceiling_per_s = results[-1].ceiling_per_s if results else None
    folder = Path(out)
    _write_json(
        folder / "e2e-scaling.json",
        {
            "machine": machine(),
            "ceiling_per_s": round(ceiling_per_s) if ceiling_per_s else None,
            "results": [r.as_json() for r in results],
        },
    )
    bench_plot.scaling_plot(results, ceiling_per_s, folder / "e2e-scaling.png")
    console.print(f"wrote {folder / 'e2e-scaling.json'} and {folder / 'e2e-scaling.png'}")


bench_app.command("ceiling")(bench_ceiling.ceiling)


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
