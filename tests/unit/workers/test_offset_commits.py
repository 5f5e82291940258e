"""A flow's offset commits: sent in order, at most one in flight, all awaited once draining."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from ledgerflow.testkit.plugin import wait_until
from ledgerflow.workers.kafka_io import OffsetCommits


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


class SlowConsumer:
    """Each commit waits until the test lets it land; records what was in flight."""

    def __init__(self) -> None:
        self.landed: list[dict[TopicPartition, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gates: list[asyncio.Event] = []
        self.fail_with: BaseException | None = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        gate = asyncio.Event()
        self.gates.append(gate)
        try:
            await gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            self.landed.append(offsets)
        finally:
            self.in_flight -= 1

    def release(self) -> None:
        for gate in self.gates:
            gate.set()


async def until(condition: Any) -> None:
    await wait_until(condition, timeout_s=5, interval_s=0.001)


def tp(partition: int) -> TopicPartition:
    return TopicPartition("transfer.initiated", partition)


async def test_a_commit_overlaps_the_next_batch_and_commits_land_in_order() -> None:
    consumer = SlowConsumer()
    failures: list[None] = []
    commits = OffsetCommits(lambda: failures.append(None))
    await commits.send(consumer, [Rec("transfer.initiated", 0, 4)])  # type: ignore[arg-type]
    await until(lambda: consumer.in_flight == 1)
    assert consumer.landed == [], "send returned with its commit still in flight"
    # The next batch's commit waits for the one in flight before it is sent.
    second = asyncio.create_task(
        commits.send(consumer, [Rec("transfer.initiated", 0, 9), Rec("transfer.initiated", 1, 2)])  # type: ignore[arg-type]
    )
    await until(lambda: len(consumer.gates) == 1 and not second.done())
    consumer.release()
    await second
    await until(lambda: len(consumer.gates) == 2)
    consumer.release()
    await commits.settle()
    assert consumer.landed == [{tp(0): 5}, {tp(0): 10, tp(1): 3}]
    assert consumer.most_in_flight == 1
    assert failures == []


async def test_draining_lands_the_commit_in_flight_and_awaits_every_later_one() -> None:
    consumer = SlowConsumer()
    commits = OffsetCommits(lambda: None)
    await commits.send(consumer, [Rec("transfer.initiated", 0, 0)])  # type: ignore[arg-type]
    drained = asyncio.create_task(commits.drain())
    await until(lambda: len(consumer.gates) == 1)
    assert not drained.done()
    consumer.release()
    await drained
    assert consumer.landed == [{tp(0): 1}]
    # Once draining, send returns only when its commit landed.
    last = asyncio.create_task(commits.send(consumer, [Rec("transfer.initiated", 2, 7)]))  # type: ignore[arg-type]
    await until(lambda: len(consumer.gates) == 2)
    assert not last.done()
    consumer.release()
    await last
    assert consumer.landed == [{tp(0): 1}, {tp(2): 8}]


async def test_a_failed_commit_is_counted_and_the_next_goes_on() -> None:
    consumer = SlowConsumer()
    failures: list[None] = []
    commits = OffsetCommits(lambda: failures.append(None))

    async def commit(offset: int) -> None:
        await commits.send(consumer, [Rec("transfer.initiated", 0, offset)])  # type: ignore[arg-type]
        await until(lambda: consumer.in_flight == 1)
        consumer.release()
        await commits.settle()

    for offset, error in enumerate((CommitFailedError("rebalanced"), RuntimeError("stopped"))):
        consumer.fail_with = error
        await commit(offset)
    assert len(failures) == 2
    consumer.fail_with = None
    await commit(2)
    assert consumer.landed == [{tp(0): 3}]
    assert len(failures) == 2


async def test_a_commit_that_never_lands_is_given_up_and_the_next_is_sent() -> None:
    """A commit stuck in the client (no coordinator found, ever) must not stop the flow: the
    next batch waits for it, and a consumer that stops polling leaves its group."""
    consumer = SlowConsumer()
    failures: list[None] = []
    commits = OffsetCommits(lambda: failures.append(None), timeout_s=0.05)
    await commits.send(consumer, [Rec("transfer.initiated", 0, 4)])  # type: ignore[arg-type]
    second = asyncio.create_task(
        commits.send(consumer, [Rec("transfer.initiated", 0, 9)])  # type: ignore[arg-type]
    )
    await asyncio.wait_for(second, timeout=5)  # the first was given up, never released
    assert failures == [None]
    await until(lambda: len(consumer.gates) == 2 and consumer.in_flight == 1)
    consumer.release()
    await commits.settle()
    assert consumer.landed == [{tp(0): 10}]
    assert failures == [None]
