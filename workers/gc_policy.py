"""CPython's cyclic garbage collector, set for a process that works in batches.

A batch of 500 commands keeps tens of thousands of container objects alive until it is
answered. CPython's default runs a young collection every 700 net allocations, so it ran dozens
of young collections and a few full ones per batch. Each full collection walked every object
the process had loaded (~110,000: modules, models, schemas).

Measured in a 20,000-transfer `bench e2e`: 0.4-0.5 s of each worker's ~2.2 s of CPU, and full
collections of 40-150 ms, which went straight into the latency tail. Nearly every object here is
freed by reference counting, and the collector is only needed for reference cycles. So what
startup loaded is frozen out of every later collection, and a young collection waits for more
net allocations than a batch makes. Cycles are still collected, just less often; CPython's own
counts stay in `python_gc_*` on /metrics.
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

# Net allocations of container objects between young collections (CPython's default: 700).
# Above what one batch holds at once, so a batch is not scanned again and again while it runs.
YOUNG_ALLOCATIONS: Final = 50_000
# Young collections per middle one, and middle ones per full one: CPython's defaults.
OLDER_EVERY: Final = 10


def tune_for_batches() -> None:
    """Once a worker or relay process has built its app, before it runs: collect, freeze what
    exists, then collect young objects seldom. For the whole process (a test process that
    builds an app in-process keeps CPython's settings)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_ALLOCATIONS, OLDER_EVERY, OLDER_EVERY)


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """The collector's settings as they were, once the block ends (thresholds, nothing frozen):
    for a process that tunes a stretch of its life only, such as a benchmark's measured window,
    which also runs inside a test process."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
