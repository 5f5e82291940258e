"""A flow's consumer that stopped delivering records while its group has work: noticed, restarted.

aiokafka's consumer can end up alive and connected but never fetching again after a broker restart
or a rebalance (aio-libs/aiokafka#1154: the group rejoin it waits for never happens). Nothing is
raised, so FastStream's consume loop waits forever, the flow's commands pile up, and the process
looks healthy. The only trustworthy view is from outside the client: the lag monitor's committed
offsets and watermarks, measured every `lag_interval_ms` with clients of its own.

A round counts toward a stall when all of these hold:
- some partition of the flow's group has lag and its committed offset did not move since the
  round before (work waiting that nobody does);
- this process' consumer delivered no batch since the round before, and none is being handled
  (a long batch is bounded by its own statement timeouts);
- the flow is neither retrying failed batches nor holding partitions on purpose (those have
  their own signals and must not be restarted away).

`rounds_max` such rounds in a row make a stall. A frozen process measures nothing, so a clock
that jumped (SIGSTOP, a paused VM) counts no rounds. A stall that is another process' (it owns the
lagging partitions and stopped) restarts this consumer too: the group rebalances, which takes the
partitions from a member that no longer polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ledgerflow.workers.lag import Lag


@dataclass(frozen=True, slots=True)
class FlowActivity:
    """What the worker knows of one flow's consumer when a lag round lands."""

    deliveries: int  # batches handed to the handler so far (a counter)
    busy: bool  # a batch is being handled now
    excused: bool  # failing batches being retried, or partitions held on purpose


@dataclass(slots=True)
class StallWatch:
    """Counts, per flow, lag rounds in a row in which work waited and nothing was delivered."""

    rounds_max: int
    _committed: dict[str, dict[int, int]] = field(default_factory=dict)
    _deliveries: dict[str, int] = field(default_factory=dict)
    _rounds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.rounds_max >= 1, "a stall takes at least one round"

    def observe(self, flow: str, lags: Iterable[Lag], activity: FlowActivity) -> bool:
        """One lag round of one flow; True when its consumer is stalled (then counted afresh)."""
        committed = {lag.partition: lag.committed for lag in lags}
        before = self._committed.get(flow)
        waiting = before is not None and any(
            lag.messages > 0 and before.get(lag.partition) == lag.committed for lag in lags
        )
        delivered = activity.deliveries != self._deliveries.get(flow)
        self._committed[flow] = committed
        self._deliveries[flow] = activity.deliveries
        if waiting and not delivered and not activity.busy and not activity.excused:
            self._rounds[flow] = self._rounds.get(flow, 0) + 1
        else:
            self._rounds[flow] = 0
        if self._rounds[flow] >= self.rounds_max:
            self._rounds[flow] = 0
            return True
        return False

    def rounds(self, flow: str) -> int:
        return self._rounds.get(flow, 0)
