"""The collector set for batches: a batch's live objects are not scanned while it runs, and
cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING, Any

import pytest

from ledgerflow.workers import gc_policy

if TYPE_CHECKING:
    from collections.abc import Iterator

# About what a batch of 500 commands holds at once (parsed models, rows, outcomes, events).
BATCH_OBJECTS = 30_000


@pytest.fixture
def restored() -> Iterator[None]:
    with gc_policy.restored():
        yield


def _collections() -> int:
    return sum(int(generation["collections"]) for generation in gc.get_stats())


def _collections_while_a_batch_is_held() -> int:
    before = _collections()
    batch = [{"n": n} for n in range(BATCH_OBJECTS)]
    after = _collections()
    del batch
    return after - before


def test_a_batch_is_scanned_by_no_young_collection(restored: None) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's default
    assert _collections_while_a_batch_is_held() >= BATCH_OBJECTS // 700 - 1
    gc_policy.tune_for_batches()
    assert _collections_while_a_batch_is_held() == 0
    assert gc.get_freeze_count() > 0  # startup's objects are out of every later collection


class _Node:
    other: Any = None


def test_cycles_are_still_collected(restored: None) -> None:
    gc_policy.tune_for_batches()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    for _ in range(3):  # allocations alone reach the young threshold
        [{"n": n} for n in range(gc_policy.YOUNG_ALLOCATIONS)]
        if gone() is None:
            break
    assert gone() is None


def test_a_tuned_stretch_gives_the_collector_settings_back() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with gc_policy.restored():
        gc_policy.tune_for_batches()
        assert gc.get_threshold() == (gc_policy.YOUNG_ALLOCATIONS, 10, 10)
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
