"""A seeded random workload, the system's observable state, and the invariants checked after faults.

Used by the fault-injection tests (tests/e2e) and `ledgerflow chaos`. The workload publishes
commands as the API layer would and remembers each one; `verify` then proves, from Kafka and
PostgreSQL alone, what DESIGN.md §3 promises: every command has exactly one outcome (its result
events may repeat, with one CloudEvents id), nothing was applied twice, money is conserved, no
wallet is negative, balances equal what the result events say, per-key order holds, the outbox is
drained, the consumer groups have no lag and the ledger audit passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    FLOWS,
    ONBOARDING,
    TRANSFER,
    Flow,
    flow_by_topic,
)
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.testkit.commands import cashin, cashout, onboarding, transfer, wallet_of
from ledgerflow.workers.app import group_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord
    from pydantic import BaseModel

    from ledgerflow.harness.results import ResultCollector

# The test kit creates every topic with these partition counts (testkit.pipeline).
COMMAND_PARTITIONS = 6
RESULT_PARTITIONS = 6
DLQ_PARTITIONS = 1

PUBLISH_IN_FLIGHT_MAX = 64  # commands awaiting the broker's acknowledgement
PUBLISH_GIVE_UP_S = 180.0  # a command the broker has not taken in 3 minutes fails the run
PUBLISH_RETRY_S = 0.25
OBSERVE_TIMEOUT_S = 10.0  # one look at Kafka or PostgreSQL
DRAIN_POLL_S = 0.25
# Commands looked at by the probes (the last ones published): older ones are committed long
# before a probe runs, and a soak publishes tens of thousands.
PROBE_WINDOW = 20_000
READ_LOG_TIMEOUT_S = 60.0

FUNDING = 200_000  # minor units cashed in to every wallet at setup


def _id_of(flow: Flow, command: BaseModel) -> str:
    return str(getattr(command, flow.id_field))


@dataclass(slots=True)
class Sent:
    """One command of the workload (client retries of it share the entry)."""

    flow: Flow
    key: str  # idempotency key
    command: BaseModel
    record_key: bytes
    poison: bool = False
    publishes: int = 0  # acknowledged publications (client retries and resends add to it)
    partition: int | None = None  # of the first acknowledged publication
    offset: int | None = None
    first_sent: float = 0.0


@dataclass(slots=True)
class Workload:
    """Commands published as the API layer would, remembered for the checks."""

    producer: AIOKafkaProducer
    results: ResultCollector
    prefix: str
    seed: int
    currency: str = "EUR"
    poison_marker: str = ""
    rng: random.Random = field(init=False)
    wallets: list[uuid.UUID] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    by_key: dict[str, Sent] = field(default_factory=dict)
    publishes: int = 0
    resends: int = 0  # publications retried after a producer error (the broker was away)
    client_retries: int = 0  # the same command published again on purpose (same key, content)
    _in_flight: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(PUBLISH_IN_FLIGHT_MAX)
    )
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _failures: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        flow: Flow,
        command: BaseModel,
        *,
        record_key: bytes | None = None,
        poison: bool = False,
        wait: bool = False,
    ) -> Sent:
        """Publish in the background (bounded in flight); `wait` awaits the acknowledgement."""
        key = _id_of(flow, command)
        entry = self.by_key.get(key)
        if entry is None:
            rec = encode_command(flow, command)
            entry = Sent(flow, key, command, record_key or rec.key, poison, first_sent=time.time())
            self.sent.append(entry)
            self.by_key[key] = entry
        else:
            self.client_retries += 1
        await self._in_flight.acquire()
        task = asyncio.create_task(self._send(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            await task
        return entry

    async def _send(self, entry: Sent) -> None:
        # A new envelope id per publication, like a client's retry: the key and content decide.
        rec = encode_command(entry.flow, entry.command, topic_prefix=self.prefix)
        deadline = time.monotonic() + PUBLISH_GIVE_UP_S
        try:
            while True:
                try:
                    meta = await self.producer.send_and_wait(
                        rec.topic, rec.value, key=entry.record_key, headers=list(rec.headers)
                    )
                    break
                except KafkaError as error:
                    if time.monotonic() > deadline:
                        self._failures.append(error)
                        return
                    self.resends += 1
                    await asyncio.sleep(PUBLISH_RETRY_S)
            self.publishes += 1
            entry.publishes += 1
            if entry.offset is None:
                entry.partition, entry.offset = meta.partition, meta.offset
        finally:
            self._in_flight.release()

    async def flush(self) -> None:
        """Every publication acknowledged (or given up: that fails the run)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        if self._failures:
            raise RuntimeError(f"the broker refused {len(self._failures)} commands for minutes")

    # -- the workload -------------------------------------------------------------------------

    async def open_wallets(self, count: int, funding: int = FUNDING, timeout_s: float = 60) -> None:
        """Onboard and fund `count` customers through Kafka, and wait for their outcomes."""
        people = [onboarding(self.currency) for _ in range(count)]
        for person in people:
            await self.publish(ONBOARDING, person)
        await self.flush()
        await self.wait_answered([str(p.customer_id) for p in people], timeout_s)
        wallets = [wallet_of(p) for p in people]
        funds = [cashin(w, funding, self.currency) for w in wallets]
        for command in funds:
            await self.publish(CASHIN, command)
        await self.flush()
        await self.wait_answered([str(c.cashin_id) for c in funds], timeout_s)
        self.wallets.extend(wallets)

    async def wait_answered(self, keys: Iterable[str], timeout_s: float) -> None:
        for key in keys:
            await self.results.wait_for_key(key, timeout_s=timeout_s)

    def random_command(self) -> tuple[Flow, BaseModel]:
        """One command of the mix; most succeed, some are rejected, a few are client retries."""
        rng, wallets = self.rng, self.wallets
        roll = rng.random()
        if roll < 0.04 and self.sent:
            earlier = rng.choice(self.sent[-500:])
            if not earlier.poison:
                return earlier.flow, earlier.command  # a client retry: same key, same content
        a, b = rng.sample(wallets, 2)
        if roll < 0.60:
            return TRANSFER, transfer(a, b, rng.randint(1, 2_500), self.currency)
        if roll < 0.64:
            return TRANSFER, transfer(a, b, rng.randint(150_000, 900_000), self.currency)
        if roll < 0.66:
            return TRANSFER, transfer(a, uuid.uuid4(), 10, self.currency)  # account_not_found
        if roll < 0.82:
            return CASHIN, cashin(a, rng.randint(500, 20_000), self.currency)
        fee = rng.choice((0, 0, 10, 25))
        return CASHOUT, cashout(a, rng.randint(1, 3_000), fee, self.currency)

    async def publish_random(self, count: int) -> None:
        for _ in range(count):
            flow, command = self.random_command()
            await self.publish(flow, command)

    async def publish_poison(self) -> Sent:
        """A transfer that fails every time in the worker (LEDGERFLOW_FAULT_POISON_MARKER)."""
        assert self.poison_marker, "the pipeline must run with a poison marker"
        a, b = self.rng.sample(self.wallets, 2)
        command = transfer(a, b, 1, self.currency).model_copy(update={"note": self.poison_marker})
        return await self.publish(TRANSFER, command, poison=True)

    async def run(
        self,
        rate_per_s: float,
        stop: asyncio.Event,
        *,
        count_max: int | None = None,
        extra: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Publish random commands at about `rate_per_s` until `stop` (or `count_max`)."""
        tick_s = 0.05
        per_tick = rate_per_s * tick_s
        owed = 0.0
        published = 0
        while not stop.is_set() and (count_max is None or published < count_max):
            owed += per_tick
            while owed >= 1 and (count_max is None or published < count_max):
                owed -= 1
                flow, command = self.random_command()
                await self.publish(flow, command)
                published += 1
            if extra is not None:
                await extra()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)  # pacing, not synchronisation
        return published

    # -- bookkeeping ---------------------------------------------------------------------------

    def expected_keys(self) -> list[str]:
        """Keys that must get an outcome (poison commands are dead-lettered instead)."""
        return [s.key for s in self.sent if not s.poison]

    def unanswered(self, upto: int | None = None) -> int:
        entries = self.sent if upto is None else self.sent[:upto]
        return sum(
            1 for s in entries if not s.poison and not self.results.by_command_key.get(s.key)
        )

    def first_unanswered(self, start: int, upto: int) -> int:
        """The index of the first command in [start, upto) without an outcome (upto: none).
        Waiting callers resume from it, so a long run is scanned once, not once per poll."""
        answered = self.results.by_command_key
        while start < upto and (self.sent[start].poison or answered.get(self.sent[start].key)):
            start += 1
        return start


# --------------------------------------------------------------------------------------------
# Looking at the system from outside.


@dataclass(slots=True)
class Observer:
    """Read-only views of one pipeline's PostgreSQL database and Kafka topics and groups."""

    database_url: str  # a superuser URL of the pipeline's database (sees every session)
    database_name: str
    bootstrap: str
    prefix: str
    _conn: asyncpg.Connection | None = None
    _admin: AIOKafkaAdminClient | None = None
    _consumer: AIOKafkaConsumer | None = None

    async def close(self) -> None:
        await self._drop_db()
        await self._drop_kafka()

    async def _drop_db(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _drop_kafka(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def db(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.database_url,
                timeout=OBSERVE_TIMEOUT_S,
                server_settings={"application_name": "ledgerflow-observer"},
            )
        return self._conn

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One query; a connection broken by a PostgreSQL fault is reopened once."""
        for attempt in (1, 2):
            try:
                conn = await self.db()
                return await conn.fetch(sql, *args, timeout=OBSERVE_TIMEOUT_S)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                await self._drop_db()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def value(self, sql: str, *args: Any) -> Any:
        rows = await self.query(sql, *args)
        return rows[0][0] if rows else None

    async def _kafka(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=int(OBSERVE_TIMEOUT_S * 1000)
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
            )
            await asyncio.wait_for(admin.start(), OBSERVE_TIMEOUT_S)
            await asyncio.wait_for(consumer.start(), OBSERVE_TIMEOUT_S)
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _kafka_call(
        self, call: Callable[[AIOKafkaAdminClient, AIOKafkaConsumer], Any]
    ) -> Any:
        """A Kafka look-up; clients broken by a broker restart are made anew once."""
        for attempt in (1, 2):
            try:
                admin, consumer = await self._kafka()
                return await asyncio.wait_for(call(admin, consumer), OBSERVE_TIMEOUT_S)
            except (KafkaError, OSError, TimeoutError):
                await self._drop_kafka()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- Kafka --------------------------------------------------------------------------------

    async def committed(self, flow: Flow) -> dict[int, int]:
        """The group's committed offset per partition of the flow's command topic (-1: none)."""
        group = self.prefix + group_id(flow)
        topic = self.prefix + flow.command_topic

        async def call(admin: AIOKafkaAdminClient, _: AIOKafkaConsumer) -> dict[int, int]:
            offsets = await admin.list_consumer_group_offsets(group)
            found = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
            return {p: found.get(p, -1) for p in range(COMMAND_PARTITIONS)}

        result: dict[int, int] = await self._kafka_call(call)
        return result

    async def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in range(partitions)]

        async def call(_: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> dict[int, int]:
            ends = await consumer.end_offsets(tps)
            return {tp.partition: int(offset) for tp, offset in ends.items()}

        result: dict[int, int] = await self._kafka_call(call)
        return result

    async def lag(self) -> dict[str, int]:
        """Per flow: records in the command topic not yet committed by the flow's group."""
        lags: dict[str, int] = {}
        for flow in FLOWS:
            ends = await self.end_offsets(self.prefix + flow.command_topic, COMMAND_PARTITIONS)
            committed = await self.committed(flow)
            lags[flow.name] = sum(
                end - max(committed.get(p, -1), 0) for p, end in ends.items() if end > 0
            )
        return lags

    # -- PostgreSQL ----------------------------------------------------------------------------

    async def outbox_pending(self) -> int:
        return int(await self.value("SELECT count(*) FROM outbox WHERE published_at IS NULL"))

    async def open_worker_transactions(self, client_ports: set[int] | None = None) -> int:
        """Worker sessions inside a transaction that is not committing right now (the pool's
        application_name), of every worker or of the one whose connections use `client_ports`.
        Frozen or killed there, the worker's transaction is rolled back."""
        return int(
            await self.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                " AND application_name = 'ledgerflow' AND xact_start IS NOT NULL"
                " AND state <> 'idle' AND NOT (state = 'active' AND query ILIKE 'commit%')"
                " AND ($2::int[] IS NULL OR client_port = ANY($2::int[]))",
                self.database_name,
                sorted(client_ports) if client_ports is not None else None,
            )
        )

    async def recorded(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (flow, key) pairs have an idempotency record (were decided and committed)."""
        if not keys:
            return set()
        rows = await self.query(
            "SELECT r.flow, r.key::text AS key FROM idempotency_records r"
            " JOIN unnest($1::text[], $2::uuid[]) AS k(flow, key) ON r.flow = k.flow"
            " AND r.key = k.key",
            [f for f, _ in keys],
            [k for _, k in keys],
        )
        return {(r["flow"], r["key"]) for r in rows}

    async def applied_beyond_committed(self, workload: Workload) -> int:
        """Commands committed in PostgreSQL whose offsets Kafka has not got yet: the window
        between a batch's DB commit and its offset commit (a crash there means redelivery)."""
        beyond: list[tuple[str, str]] = []
        recent = workload.sent[-PROBE_WINDOW:]
        for flow in FLOWS:
            committed = await self.committed(flow)
            beyond += [
                (flow.name, s.key)
                for s in recent
                if s.flow is flow
                and s.offset is not None
                and s.partition is not None
                and s.offset >= committed.get(s.partition, -1)
            ]
        return len(await self.recorded(beyond))

    async def relay_lock_holder(self) -> int | None:
        """The backend pid holding the relay's advisory lock (None: no active relay)."""
        from ledgerflow.ledger_db.outbox import RELAY_LOCK_KEY  # noqa: PLC0415 - one constant

        value = await self.value(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            RELAY_LOCK_KEY >> 32,
            RELAY_LOCK_KEY & 0xFFFF_FFFF,
        )
        return int(value) if value is not None else None

    async def delivered_but_unmarked(self, results: ResultCollector) -> int:
        """Outbox rows whose event the result topics already hold but that are not marked
        published: the window between the relay's publish and its mark."""
        rows = await self.query("SELECT event_id::text FROM outbox WHERE published_at IS NULL")
        seen = {str(e.get("id")) for e in results.events}
        return sum(1 for r in rows if r[0] in seen)


# --------------------------------------------------------------------------------------------
# The report and the checks.


@dataclass(slots=True)
class Report:
    scenario: str
    seed: int
    commands: int = 0
    publishes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[str] = field(default_factory=Counter)  # reason code -> commands
    dup_delivered: int = 0  # result events received more than once (same CloudEvents id)
    # Command records applied again after a crash or rebalance (outbox rows beyond one per
    # consumed command record): the idempotency records turned them into replays.
    redelivered: int = 0
    dup_applied: int = 0  # journal entries beyond one per key: must stay 0
    lost: int = 0  # commands without an outcome and not dead-lettered: must stay 0
    dead_lettered: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recovery_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0

    def recovered(self, kind: str, seconds: float) -> None:
        self.recovery_s[kind].append(round(seconds, 2))

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        faults = ",".join(f"{k}:{v}" for k, v in sorted(self.faults.items())) or "none"
        recovery = (
            ",".join(
                f"{k}:max={max(v):.1f}s/mean={sum(v) / len(v):.1f}s"
                for k, v in sorted(self.recovery_s.items())
                if v
            )
            or "-"
        )
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        outcomes = "/".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        if self.rejected_by:
            reasons = ",".join(f"{k}:{v}" for k, v in self.rejected_by.most_common())
            outcomes += f" rejected_by={{{reasons}}}"
        verdict = "OK" if self.ok else f"FAILED({len(self.problems)})"
        return (
            f"[{self.scenario}] seed={self.seed} commands={self.commands} "
            f"publishes={self.publishes} outcomes={sum(self.outcomes.values())}({outcomes}) "
            f"dup_delivered={self.dup_delivered} redelivered={self.redelivered} "
            f"dup_applied={self.dup_applied} lost={self.lost} dead_lettered={self.dead_lettered} "
            f"faults={{{faults}}} recovery={{{recovery}}} {notes} "
            f"elapsed={self.elapsed_s:.1f}s {verdict}"
        ).replace("  ", " ")


async def measure_recovery(
    workload: Workload, report: Report, kind: str, healed_at: float, timeout_s: float = 120.0
) -> None:
    """Record, under `kind`, the time from `healed_at` (monotonic) until every command published
    before it has its outcome. Run as a task beside the load; the caller counts the fault."""
    upto = len(workload.sent)
    deadline = healed_at + timeout_s
    waiting = 0
    while (waiting := workload.first_unanswered(waiting, upto)) < upto:
        if time.monotonic() > deadline:
            report.problems.append(f"{kind}: not recovered {timeout_s:.0f} s after healing")
            return
        await asyncio.sleep(0.1)
    report.recovered(kind, time.monotonic() - healed_at)


async def drain(
    workload: Workload, observer: Observer, timeout_s: float = 120.0
) -> dict[str, float]:
    """Wait (bounded) until every command is answered, the outbox is empty, the groups have no
    lag and the collector has read every result. Returns how long each took."""
    await workload.flush()
    started = time.monotonic()
    deadline = started + timeout_s
    took: dict[str, float] = {}

    async def done(name: str, holds: Callable[[], Awaitable[bool]]) -> None:
        while not await holds():
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain: {name} not reached within {timeout_s:.0f} s")
            await asyncio.sleep(DRAIN_POLL_S)
        took[name] = round(time.monotonic() - started, 2)

    waiting = 0

    async def answered() -> bool:
        nonlocal waiting
        waiting = workload.first_unanswered(waiting, len(workload.sent))
        return waiting == len(workload.sent)

    async def outbox_empty() -> bool:
        return await observer.outbox_pending() == 0

    async def no_lag() -> bool:
        return not any((await observer.lag()).values())

    async def collector_caught_up() -> bool:
        return not await _collector_behind(workload.results, observer)

    await done("outcomes", answered)
    await done("outbox", outbox_empty)
    await done("lag", no_lag)
    await done("results_read", collector_caught_up)
    return took


async def _collector_behind(results: ResultCollector, observer: Observer) -> int:
    have: Counter[tuple[str, int]] = Counter(
        (observer.prefix + str(e["type"]), int(e["_partition"])) for e in results.events
    )
    behind = 0
    for flow in FLOWS:
        for topic in (flow.completed_topic, flow.rejected_topic):
            ends = await observer.end_offsets(observer.prefix + topic, RESULT_PARTITIONS)
            behind += sum(
                max(0, end - have[(observer.prefix + topic, p)]) for p, end in ends.items()
            )
    return behind


async def read_topic(
    bootstrap: str, topic: str, ends: dict[int, int], timeout_s: float = READ_LOG_TIMEOUT_S
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to the given end offsets, in offset order per partition."""
    wanted = {TopicPartition(topic, p): end for p, end in ends.items() if end > 0}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        deadline = time.monotonic() + timeout_s
        remaining = dict(wanted)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {remaining} not reached")
            batches = await consumer.getmany(timeout_ms=200)
            for tp, recs in batches.items():
                records.extend(r for r in recs if r.offset < wanted[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
    finally:
        await consumer.stop()
    return records


async def dead_letters(observer: Observer) -> list[ConsumerRecord[bytes, bytes]]:
    letters: list[ConsumerRecord[bytes, bytes]] = []
    for flow in FLOWS:
        topic = observer.prefix + flow.dlq_topic
        ends = await observer.end_offsets(topic, DLQ_PARTITIONS)
        letters += await read_topic(observer.bootstrap, topic, ends)
    return letters


def _command_key(flow: Flow, value: bytes | None) -> str | None:
    try:
        data = orjson.loads(value or b"{}").get("data") or {}
    except orjson.JSONDecodeError:
        return None
    key = data.get(flow.id_field)
    return str(key) if key is not None else None


def _wallet_effects(event: dict[str, Any]) -> list[tuple[str, int]]:
    """(wallet, signed amount) of one completed result event."""
    data = event["data"]
    kind = event["type"]
    if kind == CASHIN.completed_topic:
        return [(data["wallet_account_id"], data["amount"])]
    if kind == CASHOUT.completed_topic:
        return [(data["wallet_account_id"], -(data["amount"] + data.get("fee", 0)))]
    if kind == TRANSFER.completed_topic:
        return [(data["from_account_id"], -data["amount"]), (data["to_account_id"], data["amount"])]
    return []


async def verify(workload: Workload, observer: Observer, report: Report) -> Report:
    """Every check of issue 6 on a drained system; problems are listed in `report.problems`."""
    problems = report.problems
    results = workload.results
    report.commands = len(workload.sent)
    report.publishes = workload.publishes
    if workload.resends:
        report.notes["producer_resends"] = workload.resends

    # 1. Exactly one outcome per command (repeats share one CloudEvents id); poison: none.
    first_event: dict[str, dict[str, Any]] = {}
    for entry in workload.sent:
        events = results.by_command_key.get(entry.key, [])
        ids = {e["id"] for e in events}
        if entry.poison:
            if events:
                problems.append(f"poison command {entry.key} got an outcome")
            continue
        if not events:
            report.lost += 1
        elif len(ids) > 1:
            problems.append(f"{entry.flow.name} {entry.key}: {len(ids)} different outcomes")
        else:
            first_event[entry.key] = events[0]
            outcome = events[0]["type"].rsplit(".", 1)[1]
            report.outcomes[outcome] += 1
            if outcome == "rejected":
                report.rejected_by[events[0]["data"]["reason"]] += 1
    if report.lost:
        problems.append(f"{report.lost} commands lost (no outcome, not dead-lettered)")
    by_id: Counter[str] = Counter(str(e["id"]) for e in results.events)
    report.dup_delivered = sum(n - 1 for n in by_id.values())

    # 2. The database agrees: one record per key, holding the outcome that was published.
    records = {
        (r["flow"], r["key"]): r["event_id"]
        for r in await observer.query(
            "SELECT flow, key::text AS key, result_event_id::text AS event_id"
            " FROM idempotency_records"
        )
    }
    for entry in workload.sent:
        event = first_event.get(entry.key)
        recorded = records.get((entry.flow.name, entry.key))
        if entry.poison and recorded is not None:
            problems.append(f"poison command {entry.key} was recorded")
        if event is not None and recorded != event["id"]:
            problems.append(f"{entry.key}: published {event['id']} but recorded {recorded}")
    expected = {(s.flow.name, s.key) for s in workload.sent if not s.poison}
    if set(records) - expected:
        problems.append(f"{len(set(records) - expected)} records for commands never sent")

    # 3. Nothing applied twice; one journal entry per completed money command.
    report.dup_applied = int(
        await observer.value(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM journal_entries"
            " GROUP BY flow, idempotency_key) t"
        )
    )
    if report.dup_applied:
        problems.append(f"{report.dup_applied} commands applied twice")
    entries = int(await observer.value("SELECT count(*) FROM journal_entries"))
    money_completed = sum(
        1
        for e in first_event.values()
        if e["type"] != ONBOARDING.completed_topic and e["type"].endswith(".completed")
    )
    if entries != money_completed:
        problems.append(f"{entries} journal entries for {money_completed} completed commands")
    log = await command_log(observer)
    poison = {s.key for s in workload.sent if s.poison}
    consumed = sum(1 for flow, record in log if _command_key(flow, record.value) not in poison)
    report.redelivered = int(await observer.value("SELECT count(*) FROM outbox")) - consumed

    # 4. Money: conserved per currency, no negative wallet, balances as the events imply.
    implied: Counter[str] = Counter()
    for event in first_event.values():
        for wallet, amount in _wallet_effects(event):
            implied[wallet] += amount
    rows = await observer.query(
        "SELECT b.account_id::text AS id, b.kind, a.currency, sum(b.balance) AS balance"
        " FROM balances b JOIN accounts a ON a.id = b.account_id"
        " GROUP BY b.account_id, b.kind, a.currency"
    )
    totals: Counter[str] = Counter()
    for row in rows:
        totals[row["currency"]] += row["balance"]
        if row["kind"] != "wallet":
            continue
        if row["balance"] < 0:
            problems.append(f"wallet {row['id']} is negative: {row['balance']}")
        if row["balance"] != implied.get(row["id"], 0):
            problems.append(
                f"wallet {row['id']}: balance {row['balance']}, events imply "
                f"{implied.get(row['id'], 0)}"
            )
    for currency, total in totals.items():
        if total != 0:
            problems.append(f"{currency} is not conserved: accounts sum to {total}")
    wallets_seen = {row["id"] for row in rows if row["kind"] == "wallet"}
    if set(implied) - wallets_seen:
        problems.append(f"events move money of unknown wallets: {set(implied) - wallets_seen}")

    # 5. Per-key order: for each result topic and key, results arrive (first occurrences) in
    #    the order their commands sit in the command topic.
    _check_order(workload, log, first_event, problems)

    # 6. Drained: outbox empty, no lag. 7. Nothing dead-lettered but the poison commands.
    pending = await observer.outbox_pending()
    if pending:
        problems.append(f"outbox not drained: {pending} rows pending")
    lag = await observer.lag()
    if any(lag.values()):
        problems.append(f"consumer lag remains: {lag}")
    letters = await dead_letters(observer)
    report.dead_lettered = len(letters)
    lettered: Counter[str] = Counter()
    for letter in letters:
        flow = flow_by_topic(letter.topic, topic_prefix=observer.prefix)
        key = _command_key(flow, letter.value)
        headers = dict(letter.headers)
        if key not in poison:
            problems.append(f"dead-lettered a command that is not poison: {key} {headers}")
        elif not headers.get("x-error", b"").startswith(b"processing failed"):
            problems.append(f"dead letter {key} lacks the error: {headers}")
        lettered[str(key)] += 1
    for key in poison:
        if not lettered[key]:
            problems.append(f"poison command {key} was not dead-lettered")
    # At least once, like every Kafka write: a worker that dies between writing a dead letter
    # and committing the offset writes it again (the x-original-* headers name the record).
    repeated = sum(n - 1 for n in lettered.values())
    if repeated:
        report.notes["dead_letters_repeated"] = repeated

    # 8. The ledger's own audit.
    conn = await observer.db()
    for check in await run_audit(conn):
        if not check.ok:
            problems.append(f"audit {check.name}: {check.violations} violations {check.examples}")
    report.elapsed_s = time.monotonic() - report.started
    return report


async def command_log(observer: Observer) -> list[tuple[Flow, ConsumerRecord[bytes, bytes]]]:
    """Every command record as the broker holds it (client retries and resends included), in
    offset order per partition."""
    log: list[tuple[Flow, ConsumerRecord[bytes, bytes]]] = []
    for flow in FLOWS:
        topic = observer.prefix + flow.command_topic
        ends = await observer.end_offsets(topic, COMMAND_PARTITIONS)
        records = await read_topic(observer.bootstrap, topic, ends)
        records.sort(key=lambda r: (r.partition, r.offset))
        log += [(flow, record) for record in records]
    return log


def _check_order(
    workload: Workload,
    log: list[tuple[Flow, ConsumerRecord[bytes, bytes]]],
    first_event: dict[str, dict[str, Any]],
    problems: list[str],
) -> None:
    expected: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    placed: set[str] = set()
    for flow, record in log:
        key = _command_key(flow, record.value)
        if key is None or key in placed or key not in first_event:
            continue
        placed.add(key)
        event = first_event[key]
        expected[(str(event["type"]), record.key or b"")].append(str(event["id"]))
    got: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    seen: set[str] = set()
    for event in workload.results.events:
        event_id = str(event["id"])
        if event_id in seen:
            continue
        seen.add(event_id)
        got[(str(event["type"]), event["_key"] or b"")].append(event_id)
    broken = [k for k, ids in expected.items() if got.get(k) != ids]
    if broken:
        topic, record_key = broken[0]
        problems.append(
            f"per-key order broken for {len(broken)} keys, e.g. {topic} {record_key!r}: "
            f"expected {expected[broken[0]]} got {got.get(broken[0])}"
        )
