"""The stall watch: lag rounds in which work waited and the flow's consumer delivered nothing."""

from __future__ import annotations

from ledgerflow.workers.lag import Lag, Watched
from ledgerflow.workers.stall import FlowActivity, StallWatch

FLOW = Watched("transfer", "ledgerflow.transfer", "transfer.initiated")


def lags(*committed_and_end: tuple[int, int]) -> list[Lag]:
    return [Lag(FLOW, p, committed, end, 0) for p, (committed, end) in enumerate(committed_and_end)]


def idle(deliveries: int = 0) -> FlowActivity:
    return FlowActivity(deliveries=deliveries, busy=False, excused=False)


def rounds_until_stall(watch: StallWatch, rounds: list[tuple[list[Lag], FlowActivity]]) -> int:
    """The 1-based round that reported a stall; 0: none did."""
    for n, (round_lags, activity) in enumerate(rounds, start=1):
        if watch.observe("transfer", round_lags, activity):
            return n
    return 0


def test_work_waiting_and_nothing_delivered_is_a_stall_after_the_rounds() -> None:
    watch = StallWatch(rounds_max=3)
    # The first round only sets the baseline; three more without movement make the stall.
    stuck = [(lags((10, 50), (7, 7)), idle(5))] * 5
    assert rounds_until_stall(watch, stuck) == 4
    # Reported once, then counted afresh.
    assert rounds_until_stall(watch, stuck) == 3


def test_a_partition_never_committed_with_records_waiting_counts() -> None:
    watch = StallWatch(rounds_max=2)
    assert rounds_until_stall(watch, [(lags((-1, 40)), idle())] * 3) == 3


def test_no_lag_is_never_a_stall() -> None:
    watch = StallWatch(rounds_max=2)
    assert rounds_until_stall(watch, [(lags((50, 50), (0, 0)), idle())] * 10) == 0


def test_committed_offsets_moving_is_progress_even_without_deliveries_here() -> None:
    """Another worker owns the lagging partitions and is working through them."""
    watch = StallWatch(rounds_max=2)
    rounds = [(lags((10 + n, 50)), idle()) for n in range(10)]
    assert rounds_until_stall(watch, rounds) == 0


def test_one_partition_standing_still_among_moving_ones_counts() -> None:
    watch = StallWatch(rounds_max=2)
    rounds = [(lags((10 + n, 50), (3, 9)), idle()) for n in range(4)]
    assert rounds_until_stall(watch, rounds) == 3


def test_a_delivery_resets_the_count() -> None:
    watch = StallWatch(rounds_max=3)
    waiting = lags((10, 50))
    deliveries = [0, 0, 0, 1, 1, 1, 1]  # a batch arrived before the fourth round
    rounds = [(waiting, idle(d)) for d in deliveries]
    assert rounds_until_stall(watch, rounds) == 7
    assert watch.rounds("transfer") == 0


def test_a_batch_being_handled_or_failing_or_held_is_not_a_stall() -> None:
    waiting = lags((10, 50))
    for activity in (
        FlowActivity(deliveries=1, busy=True, excused=False),  # a long batch: its own bounds
        FlowActivity(deliveries=1, busy=False, excused=True),  # retrying after a failure
    ):
        watch = StallWatch(rounds_max=2)
        assert rounds_until_stall(watch, [(waiting, activity)] * 10) == 0


def test_flows_are_counted_apart() -> None:
    watch = StallWatch(rounds_max=2)
    other = Watched("cashin", "ledgerflow.cashin", "cashin.confirmed")
    moving = [Lag(other, 0, n, 100, 0) for n in range(5)]
    for n in range(3):
        assert not watch.observe("cashin", [moving[n]], idle())
        stalled = watch.observe("transfer", lags((10, 50)), idle())
    assert stalled
    assert watch.rounds("cashin") == 0
