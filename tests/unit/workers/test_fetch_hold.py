"""The idle hold: a consumer empty for IDLE_AFTER_S fetches with (1 byte, the idle hold), and
its first records give the batching settings back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ledgerflow.workers.fetch_hold import IDLE_AFTER_S, hold_when_idle

BUSY = (32 * 1024, 10)


@dataclass
class FakeFetcher:
    """aiokafka's Fetcher as far as the hold uses it: the two settings each request is built
    from, and the coroutine that sends one request (True: records were buffered)."""

    answers: list[bool]
    _fetch_min_bytes: int = BUSY[0]
    _fetch_max_wait_ms: int = BUSY[1]
    sent_with: list[tuple[int, int]] = field(default_factory=list)

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        self.sent_with.append((self._fetch_min_bytes, self._fetch_max_wait_ms))
        return self.answers.pop(0)


@dataclass
class FakeConsumer:
    _fetcher: Any


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


async def fetch(fetcher: Any, clock: Clock, step_s: float) -> bool:
    got: bool = await fetcher._proc_fetch_request(None, 1, None)
    clock.now += step_s
    return got


async def test_empty_fetches_turn_idle_and_the_first_records_turn_it_back() -> None:
    fetcher = FakeFetcher(answers=[False] * 30 + [True, False, True])
    clock = Clock()
    changes: list[bool] = []
    hold = hold_when_idle(FakeConsumer(fetcher), 500, changes.append, clock)  # type: ignore[arg-type]
    assert hold is not None
    # Empty fetches every 10 ms: busy settings until IDLE_AFTER_S has passed without records.
    steps = int(IDLE_AFTER_S / 0.01) + 1
    for _ in range(steps):
        assert not await fetch(fetcher, clock, 0.01)
    assert fetcher.sent_with == [BUSY] * steps
    assert hold.idle
    assert changes == [True]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 500)
    # Idle: the broker holds each fetch up to 500 ms and answers at the first byte.
    for _ in range(30 - steps):
        await fetch(fetcher, clock, 0.5)
    assert fetcher.sent_with[steps:] == [(1, 500)] * (30 - steps)
    assert changes == [True], "no switch while it stays idle"
    # A record lands: answered at once, batching again from the next fetch on.
    assert await fetch(fetcher, clock, 0.001)
    assert not hold.idle
    assert changes == [True, False]
    assert not await fetch(fetcher, clock, 0.01)
    assert await fetch(fetcher, clock, 0.01)
    assert fetcher.sent_with[-2:] == [BUSY, BUSY]
    assert changes == [True, False]


async def test_records_now_and_then_keep_it_batching() -> None:
    fetcher = FakeFetcher(answers=[True, False] * 50)
    clock = Clock()
    changes: list[bool] = []
    hold = hold_when_idle(FakeConsumer(fetcher), 500, changes.append, clock)  # type: ignore[arg-type]
    assert hold is not None
    for _ in range(100):
        await fetch(fetcher, clock, 0.05)  # a record every 100 ms: never IDLE_AFTER_S apart
    assert fetcher.sent_with == [BUSY] * 100
    assert changes == []


async def test_the_hold_is_never_shorter_than_the_batch_wait() -> None:
    fetcher = FakeFetcher(answers=[False] * 3, _fetch_max_wait_ms=800)
    clock = Clock()
    hold = hold_when_idle(FakeConsumer(fetcher), 500, lambda _idle: None, clock)  # type: ignore[arg-type]
    assert hold is not None
    await fetch(fetcher, clock, IDLE_AFTER_S)
    await fetch(fetcher, clock, 0.8)  # the one that finds it idle
    await fetch(fetcher, clock, 0.8)
    assert fetcher.sent_with == [(BUSY[0], 800)] * 2 + [(1, 800)]


def test_zero_turns_it_off_and_a_client_without_the_settings_polls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetcher = FakeFetcher(answers=[])
    assert hold_when_idle(FakeConsumer(fetcher), 0, lambda _idle: None) is None  # type: ignore[arg-type]
    assert fetcher._proc_fetch_request.__self__ is fetcher  # untouched
    assert hold_when_idle(FakeConsumer(object()), 500, lambda _idle: None) is None  # type: ignore[arg-type]
    assert "idle consumers poll" in caplog.text
