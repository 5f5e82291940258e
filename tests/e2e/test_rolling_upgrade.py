"""Rolling upgrade: the previous release's worker and relay on the schema of the current code.

DESIGN.md §7: migrations are expand-then-contract, so release N's workers keep working on release
N+1's schema, alone and beside N+1's workers while a rollout is under way. The database is
migrated by the current code (the `database` fixture), the topics created by it; the previous
release (docs/releases.md, tag `v<version>`) runs from a `git worktree` with the same interpreter.
The rollout goes through every state a Deployment passes through, each with a workload of every
flow, and each command must be answered as it would be on one version:

1. old worker and old relay alone (the schema was migrated before the pods were replaced);
2. mixed fleet: a current worker joins the old one's consumer groups, a current relay stands by;
   both workers decide commands, and replays of what the old one wrote;
3. the new pod is lost mid-rollout: the old worker alone replays what the new one wrote;
4. the rollout completes: a current worker replays what the old one wrote, the old worker and
   relay stop, the current relay takes over; then the current audit must pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from e2e_harness import REPORT_LINES, metric

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.commands import (
    ApproveCashOut,
    ConfirmCashIn,
    InitiateTransfer,
    RequestOnboarding,
)
from ledgerflow.contracts.topics import CASHIN, CASHOUT, FLOWS, ONBOARDING, TRANSFER
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.migrate import load_migrations
from ledgerflow.testkit.commands import (
    cashin,
    cashout,
    flow_of,
    onboarding,
    record,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.pipeline import (
    ResultCollector,
    event_id_of,
    ledgerflow_env,
    publish,
    start_process,
)
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.testkit.releases import (
    foreign_modules,
    is_git_checkout,
    previous_release,
    probe_imports,
    release_commit,
    release_worktree,
    start_release_process,
)
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pydantic import BaseModel

    from ledgerflow.contracts.codec import KafkaRecord
    from ledgerflow.harness.processes import ManagedProcess
    from ledgerflow.testkit.plugin import IsolatedDatabase, KafkaServer
    from ledgerflow.testkit.releases import Release

pytestmark = pytest.mark.e2e

V1_FLOWS = (ONBOARDING, CASHIN, TRANSFER, CASHOUT)

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
FUNDING = 100_000
TOO_MUCH = 900_000  # above any wallet's balance here, within the basic tier's single limit
ANSWER_TIMEOUT_S = 30.0
REBALANCE_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Release, Path]]:
    """The previous release checked out in a worktree of its own (removed afterwards)."""
    if not is_git_checkout(ROOT):
        pytest.skip(
            f"ROLLING-UPGRADE TEST NOT RUN: {ROOT} is not a git checkout (an sdist or a copy), "
            "so the previous release cannot be checked out. Run it from a git clone."
        )
    release = previous_release(ROOT)
    commit = release_commit(ROOT, release)  # a tag/table mismatch or a shallow clone fails loudly
    path = tmp_path_factory.mktemp("release") / release.tag
    with release_worktree(ROOT, commit, path) as worktree:
        yield release, worktree


def partition_of(key: bytes) -> int:
    """The partition the producer's default partitioner picks (murmur2, as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def people_on_every_partition() -> list[RequestOnboarding]:
    """One customer per transfer partition, so transfers from them reach every worker."""
    chosen: dict[int, RequestOnboarding] = {}
    while len(chosen) < PARTITIONS:
        person = onboarding()
        probe = record(transfer(wallet_of(person), uuid.uuid4(), 1))
        chosen.setdefault(partition_of(probe.key or b""), person)
    return [chosen[p] for p in range(PARTITIONS)]


def id_of(command: BaseModel) -> str:
    return str(getattr(command, flow_of(command).id_field))


@dataclass(slots=True)
class Rollout:
    """Sends commands, checks each answer against what it must be, keeps the expected ledger."""

    producer: AIOKafkaProducer
    results: ResultCollector
    prefix: str
    balances: dict[uuid.UUID, int] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> first answer
    sent: int = 0

    async def _publish(self, command: BaseModel) -> tuple[KafkaRecord, float]:
        self.sent += 1
        at = time.monotonic()
        return await publish(self.producer, command, flow_of(command), self.prefix), at

    async def expect(self, *cases: tuple[BaseModel, str | None]) -> None:
        """Publish every command, then check each answer: completed (None) or that rejection."""
        sent = [await self._publish(command) for command, _ in cases]
        try:
            events = await asyncio.gather(
                *(self.results.wait_for(event_id_of(rec), ANSWER_TIMEOUT_S) for rec, _ in sent)
            )
        except TimeoutError:
            missing = [
                f"{type(command).__name__} {id_of(command)}"
                for (command, _), (rec, _) in zip(cases, sent, strict=True)
                if not self.results.by_causation.get(event_id_of(rec))
            ]
            raise AssertionError(f"unanswered after {ANSWER_TIMEOUT_S} s: {missing}") from None
        for (command, reason), [event, *_] in zip(cases, events, strict=True):
            flow = flow_of(command)
            if reason is None:
                assert event["type"] == flow.completed_topic, (command, event)
                self._apply(command)
            else:
                assert event["type"] == flow.rejected_topic, (command, event)
                assert event["data"]["reason"] == reason, (command, event)
            self.answers.setdefault(id_of(command), event)

    async def replay(self, *commands: BaseModel) -> None:
        """A client retry of each (a new envelope, same id): answered with the first answer."""
        sent = [await self._publish(command) for command in commands]
        for command, (_, at) in zip(commands, sent, strict=True):
            key, first = id_of(command), self.answers[id_of(command)]

            def later(key: str = key, at: float = at) -> list[dict[str, Any]]:
                return [e for e in self.results.by_command_key.get(key, []) if e["_received"] >= at]

            await wait_until(
                lambda later=later: bool(later()),
                timeout_s=ANSWER_TIMEOUT_S,
                message=f"replay of {type(command).__name__} {key} answered",
            )
            for event in later():
                assert (event["id"], event["type"], event["data"]) == (
                    first["id"],
                    first["type"],
                    first["data"],
                ), f"replay of {key} answered {event}, first answer was {first}"

    def _apply(self, command: BaseModel) -> None:
        match command:
            case RequestOnboarding():
                self.balances[wallet_of(command)] = 0
            case ConfirmCashIn():
                self.balances[command.wallet_account_id] += command.amount
            case InitiateTransfer():
                self.balances[command.from_account_id] -= command.amount
                self.balances[command.to_account_id] += command.amount
            case ApproveCashOut():
                self.balances[command.wallet_account_id] -= command.amount + command.fee


def assigned(process: ManagedProcess, flow: str) -> int:
    process.get("/readyz")  # readiness refreshes the gauge
    return int(metric(process, "ledgerflow_assigned_partitions", flow=flow))


def decided(process: ManagedProcess, flow: str = "transfer") -> float:
    return metric(process, "ledgerflow_commands_total", flow=flow)


def ring(wallets: list[uuid.UUID], amount: int) -> list[InitiateTransfer]:
    """wallet i pays wallet i+1: one transfer from every partition of the transfer topic."""
    return [transfer(w, wallets[(i + 1) % len(wallets)], amount + i) for i, w in enumerate(wallets)]


async def start(*starting: Callable[[], ManagedProcess]) -> list[ManagedProcess]:
    """Start processes side by side, off the event loop (each waits until ready)."""
    return list(await asyncio.gather(*(asyncio.to_thread(s) for s in starting)))


def no_failures(process: ManagedProcess) -> None:
    """Scraped while it runs: no batch failed and no relay round failed on this process."""
    failures = metric(process, "ledgerflow_batch_failures_total")
    errors = metric(process, "ledgerflow_relay_errors_total")
    assert failures == errors == 0, f"{process.args}: {failures} failed batches, {errors} relay"


async def stop(*processes: ManagedProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


async def test_previous_release_runs_on_the_current_schema_alone_and_beside_the_current(
    database: IsolatedDatabase,
    kafka: KafkaServer,
    kafka_topic_prefix: str,
    old_release: tuple[Release, Path],
    tmp_path: Path,
) -> None:
    release, worktree = old_release
    began = time.monotonic()
    timings: dict[str, float] = {}
    prefix, bootstrap = kafka_topic_prefix, kafka.bootstrap_servers
    schema = [m.version for m in load_migrations()]
    old_schema = sorted(p.stem for p in (worktree / "ledger_db" / "migrations").glob("*.sql"))
    assert schema[: len(old_schema)] == old_schema, "a released migration was renamed or removed"
    await ensure_topics(
        bootstrap, topic_specs(prefix, PARTITIONS, PARTITIONS, 1), replication_factor=1
    )
    env = ledgerflow_env(database.app_url, bootstrap, prefix, auth_mode="off")

    # The old processes import the release's code only, nothing of the current tree.
    modules = await asyncio.to_thread(probe_imports, worktree, env)
    assert Path(modules["workers.app"] or "").is_relative_to(worktree), modules["workers.app"]
    assert not foreign_modules(modules, worktree, ROOT), foreign_modules(modules, worktree, ROOT)

    logs = tmp_path / "logs"
    processes: list[ManagedProcess] = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    results = ResultCollector(bootstrap, prefix)
    try:
        await results.start()
        run = Rollout(producer, results, prefix)

        def old(*args: str) -> Callable[[], ManagedProcess]:
            return partial(start_release_process, worktree, args, env, logs, label=release.tag)

        def new(*args: str) -> Callable[[], ManagedProcess]:
            return partial(start_process, args, env, logs)

        old_worker, old_relay = await start(old("worker", "all"), old("relay"))
        processes += [old_worker, old_relay]
        timings["start_old"] = time.monotonic() - began

        # 1. The previous release alone on the current schema: every flow, every outcome.
        mark = time.monotonic()
        people = people_on_every_partition()
        wallets = [wallet_of(p) for p in people]
        await run.expect(*((p, None) for p in people))
        await run.expect(
            *((cashin(w, FUNDING), None) for w in wallets),
            (onboarding(phone_number=people[0].phone_number), "phone_number_taken"),
        )
        first_ring = ring(wallets, 1_000)
        conflicting = first_ring[0].model_copy(update={"amount": first_ring[0].amount + 1})
        await run.expect(
            *((t, None) for t in first_ring),
            (transfer(wallets[0], wallets[1], TOO_MUCH), "insufficient_funds"),
            (transfer(wallets[1], uuid.uuid4(), 10), "account_not_found"),
            (cashout(wallets[2], 5_000, fee=100), None),
        )
        await run.expect((conflicting, "id_conflict"))
        await run.replay(people[0], first_ring[0], first_ring[1])
        timings["old_alone"] = time.monotonic() - mark

        # 2. Mixed fleet: a current worker joins the old one's groups; a current relay waits.
        mark = time.monotonic()
        new_worker, new_relay = await start(new("worker", "all"), new("relay"))
        processes += [new_worker, new_relay]

        def split() -> bool:
            # The groups both releases consume (0.1.0 has no second-phase cash-out flows).
            shares = [
                (assigned(old_worker, f.name), assigned(new_worker, f.name)) for f in V1_FLOWS
            ]
            return all(a > 0 and b > 0 and a + b == PARTITIONS for a, b in shares)

        await wait_until(
            split, timeout_s=REBALANCE_TIMEOUT_S, message="old and new workers share each group"
        )
        timings["mixed_rebalanced"] = time.monotonic() - mark
        before = decided(old_worker)
        late = [onboarding(), onboarding()]
        await run.expect(*((p, None) for p in late))
        wallets += [wallet_of(p) for p in late]
        mixed_ring = ring(wallets[:PARTITIONS], 500)
        await run.expect(*((cashin(w, FUNDING // 2), None) for w in wallets[PARTITIONS:]))
        await run.expect(
            *((t, None) for t in mixed_ring),
            (transfer(wallets[6], wallets[0], 700), None),
            (transfer(wallets[7], wallets[0], TOO_MUCH), "insufficient_funds"),
            (cashout(wallets[3], 2_000, fee=50), None),
        )
        await run.replay(*first_ring, late[0])
        assert decided(old_worker) > before, "the old worker decided nothing in the mixed fleet"
        assert decided(new_worker) > 0, "the new worker decided nothing in the mixed fleet"
        timings["mixed"] = time.monotonic() - mark

        # 3. The new pod is lost: the old worker alone replays what the new one wrote.
        mark = time.monotonic()
        no_failures(new_worker)
        await stop(new_worker)
        await run.replay(*mixed_ring)
        third_ring = ring(wallets[:PARTITIONS], 200)
        await run.expect(*((t, None) for t in third_ring), (cashout(wallets[6], 1_000), None))
        timings["old_again"] = time.monotonic() - mark

        # 4. The rollout completes: current worker and relay only.
        mark = time.monotonic()
        [last_worker] = await start(new("worker", "all"))
        processes.append(last_worker)
        no_failures(old_worker)
        no_failures(old_relay)
        await stop(old_worker, old_relay)
        await run.replay(*first_ring, *third_ring, people[1])
        newest = onboarding()
        wallets.append(wallet_of(newest))
        await run.expect((newest, None))
        await run.expect((cashin(wallets[-1], FUNDING), None))
        await run.expect(
            (transfer(wallets[-1], wallets[0], 3_000), None),
            (cashout(wallets[-1], 4_000, fee=100), None),
            (transfer(wallets[-1], wallets[1], TOO_MUCH), "insufficient_funds"),
        )
        assert metric(new_relay, "ledgerflow_relay_active") == 1, "current relay took over"
        timings["new_alone"] = time.monotonic() - mark

        # Nothing failed on the way, nothing is left behind, and the ledger is what was expected.
        no_failures(last_worker)
        no_failures(new_relay)
        conn = await asyncpg.connect(database.app_url)
        try:

            async def outbox_published() -> bool:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                return int(pending) == 0

            await wait_until(
                outbox_published, timeout_s=DRAIN_TIMEOUT_S, message="every outbox row published"
            )
            rows = await conn.fetch(
                "SELECT account_id, balance FROM balances WHERE account_id = ANY($1::uuid[])",
                list(run.balances),
            )
            assert dict(rows) == run.balances
            audit = await run_audit(conn)
        finally:
            await conn.close()
        failed = [(c.name, c.violations, c.examples[:3]) for c in audit if not c.ok]
        assert not failed, failed
        letters = await read_dead_letters(
            bootstrap, [prefix + f.dlq_topic for f in FLOWS], limit=10
        )
        assert not letters, [(x.topic, x.value) for x in letters]
    except BaseException as error:  # what the processes said goes with the failure
        for process in processes:
            error.add_note(f"--- {process.args} (log {process.log_path}):\n{process.log_tail(15)}")
        raise
    finally:
        await stop(*processes)
        await results.stop()
        await producer.stop()

    took = time.monotonic() - began
    line = (
        f"rolling-upgrade: {release.tag} ({release.commit[:7]}, schema {old_schema[-1]}) on "
        f"schema {schema[-1]}: {run.sent} commands, every answer as expected, audit ok; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"; total {took:.1f}s"
    )
    print(line)
    REPORT_LINES.append(line)
