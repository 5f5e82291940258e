"""`ledgerflow bench e2e`: commands through Kafka, the worker, PostgreSQL and the relay.

Measures from the moment a command is handed to the producer to the moment its result event is
consumed, on a database and topics of its own. `naive` runs the worker with one message per
batch: one transaction and one commit per message, the baseline that batching is judged by.
Flows: `transfer` (P2P transfers), `cashout-two-phase` (held cash-outs, then their settles:
two commands per cash-out), `payment` (to one hot merchant) and `refund` (payments to one hot
merchant, then a partial refund of each): the others are judged per command against transfers.
Every run reports the CPU each process used in its measured window, and `profile_dir` records
a worker and the relay with py-spy meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ledgerflow.cli.bench_ceiling import ceiling_for
from ledgerflow.cli.bench_ledger import create_bench_database, settle_tables, with_database
from ledgerflow.cli.bench_measure import (
    LatencyWindows,
    Profiler,
    cpu_by_group,
    cpu_snapshot,
    latency_windows,
    machine_cpu_s,
)
from ledgerflow.contracts.codec import KafkaRecord, encode_command
from ledgerflow.contracts.commands import RequestOnboarding
from ledgerflow.contracts.topics import CASHOUT, CASHOUT_SETTLE, PAYMENT, REFUND, TRANSFER, Flow
from ledgerflow.harness.identity import Issuer, Signer, customer_subject
from ledgerflow.harness.processes import ManagedProcess, ledgerflow_env, start_process
from ledgerflow.harness.results import ResultCollector
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import (
    cashin,
    flow_of,
    held_cashout,
    merchant,
    onboarding,
    parsed,
    payment,
    refund,
    settle,
    transfer,
    wallet_of,
)
from ledgerflow.workers import gc_policy
from ledgerflow.workers.kafka_io import idempotent_producer
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import Mapping

SETUP_BATCH = 2_000
RESULT_TIMEOUT_S = 300.0
FUNDS = 10**9
FLOWS = ("transfer", "cashout-two-phase", "payment", "refund")
PARTITIONS_DEFAULT = 6  # command and result partitions per topic, as `ledgerflow topics` makes
PARTITIONS_MAX = 48
# Each flow's worker kind and the flows whose results it waits for.
_WORKER = {
    "transfer": "transfer",
    "cashout-two-phase": "cashout",
    "payment": "transfer",
    "refund": "transfer",
}
_RESULTS: dict[str, tuple[Flow, ...]] = {
    "transfer": (TRANSFER,),
    "cashout-two-phase": (CASHOUT, CASHOUT_SETTLE),
    "payment": (PAYMENT,),
    "refund": (PAYMENT, REFUND),
}


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Means over the workers' batches, from their own metrics (warm-up included)."""

    commands: float = 0.0
    ms: float = 0.0
    lock_wait_ms: float = 0.0  # taking the row locks: other batches' turns, then the statements
    locked_ms: float = 0.0  # holding them, to the commit


@dataclass(frozen=True, slots=True)
class E2EResult:
    mode: str
    offered_rate: float | None
    transfers: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    batch: BatchStats = field(default_factory=BatchStats)
    flow: str = "transfer"  # `transfers` counts commands: two per two-phase cash-out
    ceiling_per_s: float | None = None  # bench ceiling, same run and database (transfers only)
    workers: int = 2
    partitions: int = PARTITIONS_DEFAULT
    # CPU seconds by process over the measured window, and the machine's busy share of it.
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float | None = None
    profiles: dict[str, dict[str, object]] = field(default_factory=dict)  # role: py-spy summary
    windows: LatencyWindows | None = None  # the latency by publish time: steady, or stalls

    @property
    def throughput_per_s(self) -> float:
        return self.transfers / self.seconds

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "offered_rate_per_s": self.offered_rate,
            "transfers": self.transfers,
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.throughput_per_s, 1),
            "latency_ms": {
                "p50": round(self.p50_ms, 1),
                "p95": round(self.p95_ms, 1),
                "p99": round(self.p99_ms, 1),
            },
            **({"latency_windows": self.windows.as_json()} if self.windows else {}),
            "worker_batch_mean_commands": round(self.batch.commands, 1),
            "worker_batch_mean_ms": round(self.batch.ms, 1),
            "worker_batch_lock_wait_mean_ms": round(self.batch.lock_wait_ms, 1),
            "worker_batch_locked_mean_ms": round(self.batch.locked_ms, 1),
            "flow": self.flow,
            "ceiling_per_s": round(self.ceiling_per_s) if self.ceiling_per_s else None,
            "ratio": (
                round(self.throughput_per_s / self.ceiling_per_s, 3) if self.ceiling_per_s else None
            ),
            "workers": self.workers,
            "partitions": self.partitions,
            "cpu_seconds": {k: round(v, 2) for k, v in self.cpu_s.items()},
            "cpu_us_per_command": {
                k: round(1e6 * v / self.transfers) for k, v in self.cpu_s.items() if v >= 0.01
            },
            "machine_busy": round(self.machine_busy, 3) if self.machine_busy is not None else None,
            **({"profiles": self.profiles} if self.profiles else {}),
        }


async def _open_merchant(app_url: str, topic_prefix: str) -> tuple[uuid.UUID, str]:
    """One merchant wallet (setup, straight in the ledger), paid by every payment; and its
    owner, who signs its refunds."""
    pool = await create_pool(app_url, size_max=1)
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()}, topic_prefix=topic_prefix)
        shop = merchant()
        await writer.apply([Incoming(parsed(shop), subject=owner_of(shop))])
        return wallet_of(shop), owner_of(shop)
    finally:
        await pool.close()


def owner_of(person: RequestOnboarding) -> str:
    return customer_subject(person.customer_id)


async def _fund_wallets(
    app_url: str, wallets: int, topic_prefix: str
) -> tuple[list[uuid.UUID], dict[uuid.UUID, str]]:
    """Open wallets owned by `owner_of(person)` and fund them, straight in the ledger (setup)."""
    pool = await create_pool(app_url, size_max=1)
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()}, topic_prefix=topic_prefix)
        people = [onboarding() for _ in range(wallets)]
        for start in range(0, wallets, SETUP_BATCH):
            chunk = people[start : start + SETUP_BATCH]
            await writer.apply([Incoming(parsed(p), subject=owner_of(p)) for p in chunk])
            await writer.apply([Incoming(parsed(cashin(wallet_of(p), FUNDS))) for p in chunk])
        return [wallet_of(p) for p in people], {wallet_of(p): owner_of(p) for p in people}
    finally:
        await pool.close()


def run_settings(
    batch_records_max: int,
    auth: Mapping[str, str],
    overrides: Mapping[str, str],
    *,
    naive: bool,
) -> dict[str, str]:
    """The workers' settings for a run: the run's own, then `--setting`'s, which win (a batch
    size among them is the ceiling's too); the naive mode's one-record batches win over all."""
    settings = {
        "batch_records_max": str(batch_records_max),
        "basic_single_amount_max": str(10**15),
        "basic_balance_max": str(10**15),
        **auth,
        **overrides,
    }
    if naive:
        settings["batch_records_max"] = "1"
    return settings


async def run_e2e(
    owner_url: str,
    app_url: str,
    bootstrap_servers: str,
    *,
    transfers: int,
    wallets: int,
    rate: float | None,
    naive: bool,
    batch_records_max: int = 500,
    warm_up: int = 1_000,
    workers: int = 2,
    auth: bool = True,
    flow: str = "transfer",
    partitions: int = PARTITIONS_DEFAULT,
    profile_dir: Path | None = None,
    ceiling: bool = True,
    worker_settings: Mapping[str, str] | None = None,
) -> E2EResult:
    assert flow in FLOWS, flow
    assert 1 <= workers <= partitions <= PARTITIONS_MAX, "a worker has a partition at least"
    database = f"ledgerflow_bench_e2e_{'naive' if naive else 'batched'}_{flow.replace('-', '_')}"
    bench_owner_url = await create_bench_database(owner_url, database)
    bench_app_url = with_database(app_url, database)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    # Setup results go to this run's topics too: the relay must never wait on a missing topic.
    ids, owners = await _fund_wallets(bench_app_url, wallets, prefix)
    await ensure_topics(bootstrap_servers, topic_specs(prefix, partitions, partitions, 1), 1)
    log_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-bench-"))
    # Signed like production: each sender's session token (verified once, then cached), the
    # payout service's for settles.
    identity = Issuer()
    signer = Signer(identity, owners=owners, ttl_s=3_600)

    settings = run_settings(
        batch_records_max,
        identity.settings(log_dir / "jwks.json") if auth else {"auth_mode": "off"},
        worker_settings or {},
        naive=naive,
    )
    if not naive:  # the ceiling batches as the workers do
        batch_records_max = int(settings["batch_records_max"])
    env = ledgerflow_env(bench_app_url, bootstrap_servers, prefix, **settings)
    processes: list[ManagedProcess] = []
    try:
        processes.extend(
            [
                await asyncio.to_thread(start_process, args, env, log_dir)
                for args in [["worker", _WORKER[flow]]] * workers + [["relay"]]
            ]
        )
        results = ResultCollector(bootstrap_servers, prefix, flows=_RESULTS[flow])
        await results.start(from_end=True)
        producer = idempotent_producer(bootstrap_servers, "ledgerflow-bench")
        await producer.start()
        try:
            rng = random.Random(11)

            def signed(command: BaseModel) -> KafkaRecord:
                return encode_command(
                    flow_of(command),
                    command,
                    topic_prefix=prefix,
                    authorization=signer.authorization(command) if auth else None,
                )

            # Phases: each is published whole, then awaited (a settle needs its hold first).
            phases: list[list[tuple[str, KafkaRecord]]] = []
            if flow == "payment":
                # Every payment pays one merchant: its wallet is the hottest row there is.
                shop, _ = await _open_merchant(bench_app_url, prefix)
                phases.append(
                    [
                        (str(c.payment_id), signed(c))
                        for c in (
                            payment(rng.choice(ids), shop, rng.randint(100, 10_000))
                            for _ in range(transfers + warm_up)
                        )
                    ]
                )
            elif flow == "refund":
                # Payments to one merchant, then a partial refund of each, signed by the
                # merchant's owner: both debit or credit the one hot merchant wallet.
                shop, shop_owner = await _open_merchant(bench_app_url, prefix)
                signer.owners[shop] = shop_owner
                paid = [
                    payment(w, shop, rng.randint(100, 10_000))
                    for w in rng.choices(ids, k=(transfers + warm_up) // 2)
                ]
                phases.append([(str(c.payment_id), signed(c)) for c in paid])
                phases.append([(str(c.payment_id), signed(refund(c, c.amount // 2))) for c in paid])
            elif flow == "transfer":
                phase = []
                for _ in range(transfers + warm_up):
                    a, b = rng.sample(ids, 2)
                    command = transfer(a, b, rng.randint(1, 100))
                    phase.append((str(command.transfer_id), signed(command)))
                phases.append(phase)
            else:
                held = [
                    held_cashout(w, rng.randint(1, 100), expires_in_s=3_600)
                    for w in rng.choices(ids, k=(transfers + warm_up) // 2)
                ]
                phases.append([(str(c.cashout_id), signed(c)) for c in held])
                phases.append([(str(c.cashout_id), signed(settle(c))) for c in held])
            # Warm-up: connections, prepared statements, producer metadata and caches settle
            # before anything is measured.
            expected = 0
            for phase in phases:
                share = warm_up // len(phases) if flow != "transfer" else warm_up
                for _, rec in phase[:share]:
                    await producer.send(
                        rec.topic, rec.value, key=rec.key, headers=list(rec.headers)
                    )
                await producer.flush()
                expected += share
                await results.wait_total(expected, RESULT_TIMEOUT_S)
            # The set-up's rows are all in and published (the warm-up's results came after
            # them): settled, as in bench ledger, before the clock starts.
            await settle_tables(bench_owner_url)
            sent_at: dict[tuple[str, int], float] = {}
            # The measured window: CPU by process and py-spy from here to the last result.
            roles = {p.process.pid: " ".join(p.args) for p in processes}
            roles[os.getpid()] = "bench client"
            profilers = {}
            if profile_dir is not None:
                await asyncio.to_thread(profile_dir.mkdir, parents=True, exist_ok=True)
                for process in (processes[0], processes[-1]):  # a worker, the relay
                    role = " ".join(process.args)
                    out = profile_dir / f"{flow}-{role.replace(' ', '-')}.folded"
                    profilers[role] = Profiler(process.process.pid, out)
            # The client must not pause its own clock: what it built (commands, tokens, the
            # warm-up's results) is frozen out of collections and young collections are rare,
            # as in a worker, for the window only (this also runs in a test's process). Untuned,
            # a full collection over 10^5-10^6 of its objects took 50-200 ms now and then,
            # stalling publishing and the result timestamps alike.
            with gc_policy.restored():
                gc_policy.tune_for_batches()
                cpu_before, machine_before = cpu_snapshot(), machine_cpu_s()
                started = time.monotonic()
                interval = 1.0 / rate if rate else 0.0
                i = 0
                for answer, phase in enumerate(phases):
                    share = warm_up // len(phases) if flow != "transfer" else warm_up
                    for key, rec in phase[share:]:
                        if interval:
                            due = started + i * interval
                            delay = due - time.monotonic()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        if answer:
                            # As the payout service would: a settle once its hold was answered,
                            # streamed behind the approvals rather than after all of them.
                            await results.wait_for_key(key, RESULT_TIMEOUT_S, count=answer)
                        sent_at[(key, answer)] = time.monotonic()
                        await producer.send(
                            rec.topic, rec.value, key=rec.key, headers=list(rec.headers)
                        )
                        i += 1
                    await producer.flush()
                    expected += len(phase) - share
                await results.wait_total(expected, RESULT_TIMEOUT_S)
                cpu_s = cpu_by_group(cpu_before, cpu_snapshot(), roles)
                busy, total = (b - a for a, b in zip(machine_before, machine_cpu_s(), strict=True))
                profiles = {role: await asyncio.to_thread(p.stop) for role, p in profilers.items()}
            transfers = i
        finally:
            await producer.stop()
            await results.stop()
        # The n-th answer to a key answers its n-th phase (held, then completed).
        received = {(key, n): results.by_command_key[key][n]["_received"] for key, n in sent_at}
        samples = [(t - started, (received[k] - t) * 1000) for k, t in sent_at.items()]
        latencies = sorted(latency for _, latency in samples)
        last = max(received.values())
        q = statistics.quantiles(latencies, n=100)
        batch = _batch_stats(processes[:workers], _RESULTS[flow])
        ceiling_per_s = None
        if flow == "transfer" and ceiling and rate is None:  # a yardstick for full speed
            # The yardstick from the same run, on the same database and wallets. Workers and
            # relay stop first (idle by now): the database is the ceiling's alone, and its
            # result rows stay in the outbox.
            for process in processes:
                process.stop()
            ceiling_per_s = await ceiling_for(
                bench_app_url, ids, transfers, batch_records_max, topic_prefix=prefix
            )
        return E2EResult(
            "naive" if naive else "batched",
            rate,
            transfers,
            last - started,
            q[49],
            q[94],
            q[98],
            batch,
            flow,
            ceiling_per_s=ceiling_per_s,
            workers=workers,
            partitions=partitions,
            cpu_s=cpu_s,
            machine_busy=busy / total if total else None,
            profiles=profiles,
            windows=latency_windows(samples),
        )
    finally:
        for process in processes:
            process.stop()
        # Imported here: testkit.plugin imports pytest, which the container image does not ship.
        from ledgerflow.testkit.plugin import delete_topics_with_prefix  # noqa: PLC0415

        await delete_topics_with_prefix(bootstrap_servers, prefix)


def _metric_sum(text: str, name: str, flows: tuple[Flow, ...]) -> float:
    labels = tuple(f'flow="{f.name}"' for f in flows)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and any(label in line for label in labels)
    )


def _batch_stats(workers: list[ManagedProcess], flows: tuple[Flow, ...]) -> BatchStats:
    histograms = (
        ("ledgerflow_batch_size_commands", 1.0),
        ("ledgerflow_batch_duration_seconds", 1000.0),
        ("ledgerflow_batch_lock_wait_seconds", 1000.0),
        ("ledgerflow_batch_locked_seconds", 1000.0),
    )
    sums = [0.0] * len(histograms)
    counts = [0.0] * len(histograms)
    for worker in workers:
        _, text = worker.get("/metrics")
        for i, (name, _) in enumerate(histograms):
            sums[i] += _metric_sum(text, name + "_sum", flows)
            counts[i] += _metric_sum(text, name + "_count", flows)
    means = [
        scale * total / count if count else 0.0
        for (_, scale), total, count in zip(histograms, sums, counts, strict=True)
    ]
    return BatchStats(*means)
