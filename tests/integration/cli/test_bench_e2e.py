"""`ledgerflow bench e2e` through real processes: the refund flow (payments to one merchant,
then a partial refund of each) lands in the ledger, and the run reports its CPU by process and
py-spy profiles of a worker and the relay, on the partitions it was asked for; and repeated
runs summarised by their median."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.cli.bench_e2e import run_e2e
from ledgerflow.cli.bench_ledger import with_database
from ledgerflow.cli.bench_measure import py_spy_path

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

# Measured: 1,000 payments and their 1,000 refunds. Enough CPU for the relay to be sampled and
# ticked: py-spy samples only running threads, /proc counts 10 ms ticks (200 gave it 0-4 samples).
COMMANDS = 2_000
WARM_UP = 100
BENCH_DATABASE = "ledgerflow_bench_e2e_batched_refund"  # the run's own, recreated each run
TRANSFER_DATABASE = "ledgerflow_bench_e2e_batched_transfer"
REPEAT_TIMEOUT_S = 300.0  # two small runs with their set-up and ceilings take ~30 s


async def test_refund_flow_is_measured_with_its_cpu_and_profiles(
    creates_databases: Any, kafka: Any, tmp_path: Path
) -> None:
    result = await run_e2e(
        creates_databases.owner_url,
        creates_databases.app_url,
        kafka.bootstrap_servers,
        transfers=COMMANDS,
        wallets=40,
        rate=None,
        naive=False,
        warm_up=WARM_UP,
        workers=1,
        partitions=2,
        flow="refund",
        profile_dir=tmp_path,
    )
    assert (result.flow, result.transfers, result.workers, result.partitions) == (
        "refund",
        COMMANDS,
        1,
        2,
    )
    assert result.throughput_per_s > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.windows is not None
    assert result.windows.windows >= 1
    assert 0 < result.windows.median_p99_ms <= result.windows.worst_p99_ms
    assert result.as_json()["latency_windows"] == result.windows.as_json()
    assert result.cpu_s["worker transfer"] > 0
    # Every batch locked the hot merchant: the workers' own lock histograms, averaged.
    assert result.batch.commands > 0
    assert 0 < result.batch.locked_ms <= result.batch.ms
    assert 0 < result.batch.lock_wait_ms <= result.batch.ms
    assert result.as_json()["worker_batch_locked_mean_ms"] == round(result.batch.locked_ms, 1)
    assert result.cpu_s["relay"] > 0
    assert result.ceiling_per_s is None  # the yardstick is measured for transfers only
    if py_spy_path() is not None:
        for role in ("worker transfer", "relay"):
            profile: Any = result.profiles[role]
            assert profile["samples"] > 0, profile
            assert profile["inclusive"], profile
    # Every payment was refunded half, once: the ledger says so.
    bench = await asyncpg.connect(with_database(creates_databases.owner_url, BENCH_DATABASE))
    try:
        row = await bench.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE refunded = amount / 2) AS halved "
            "FROM payments"
        )
    finally:
        await bench.close()
        admin = await asyncpg.connect(creates_databases.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        finally:
            await admin.close()
    assert row is not None
    assert (row["n"], row["halved"]) == ((COMMANDS + WARM_UP) // 2,) * 2


async def test_repeated_runs_are_reported_each_and_summarised_by_their_median(
    creates_databases: Any, kafka: Any
) -> None:
    """The command itself, as a user runs it: two whole measurements in a row on one stack,
    each with its own ceiling, and the summary computed from exactly those runs."""
    env = os.environ | {
        "LEDGERFLOW_DATABASE_URL": creates_databases.app_url,
        "LEDGERFLOW_MIGRATION_DATABASE_URL": creates_databases.owner_url,
        "LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
    }
    args = ["--json", "--repeat", "2", "--transfers", "200", "--wallets", "40"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledgerflow.cli", "bench", "e2e", *args,
        "--workers", "1", "--partitions", "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), REPEAT_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
        admin = await asyncpg.connect(creates_databases.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TRANSFER_DATABASE}" WITH (FORCE)')
        finally:
            await admin.close()
    assert process.returncode == 0, err.decode()[-2_000:]
    report = json.loads(out)
    runs = report["runs"]
    assert len(runs) == 2
    ratios = [run["ratio"] for run in runs]
    assert all(run["ceiling_per_s"] > 0 and run["transfers"] == 200 for run in runs)
    assert report["summary"]["ratio"]["values"] == ratios
    assert report["summary"]["ratio"]["min"] == min(ratios)
    assert report["summary"]["ratio"]["max"] == max(ratios)
    throughputs = [run["throughput_per_s"] for run in runs]
    assert report["summary"]["throughput_per_s"]["median"] == round(sum(throughputs) / 2, 3)
    assert report["machine"]["cores"] >= 1
