"""Decode + validate rate of `transfer.initiated`: the number docs/benchmarks.md reports.

Single core, in process: encode `n` distinct valid commands, then time `parse_command` over them.
Rates are per second of this process's CPU time, so other load on the machine does not lower
them much; the wall-clock rate is reported beside it.
"""

from __future__ import annotations

import gc
import time
import uuid
from typing import TYPE_CHECKING

import orjson

from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.commands import InitiateTransfer
from ledgerflow.contracts.envelope import typed_envelope
from ledgerflow.contracts.parsing import ValidCommand, parse_command
from ledgerflow.contracts.topics import TRANSFER

if TYPE_CHECKING:
    from collections.abc import Callable

_ROUNDS = 5


def _messages(n: int) -> list[bytes]:
    values = []
    for i in range(n):
        command = InitiateTransfer(
            transfer_id=uuid.uuid4(),
            from_account_id=uuid.uuid4(),
            to_account_id=uuid.uuid4(),
            amount=1 + i % 1_000_000,
            currency="EUR",
            note="lunch" if i % 2 else None,
        )
        values.append(encode_command(TRANSFER, command, source="/api/p2p").value)
    return values


def _best_cpu_seconds(values: list[bytes], parse: Callable[[bytes], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the fastest of `_ROUNDS` passes of `parse` over `values`."""
    best_cpu = best_wall = float("inf")
    for _ in range(_ROUNDS):
        wall_start = time.perf_counter()
        cpu_start = time.process_time()
        for value in values:
            parse(value)
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        if cpu < best_cpu:
            best_cpu, best_wall = cpu, wall
    return best_cpu, best_wall


def bench_parse(n: int) -> dict[str, float]:
    """Parse `n` distinct transfer.initiated messages `_ROUNDS` times; the fastest round counts.

    Keys: messages_per_s (per CPU second), wall_messages_per_s, us_per_message, messages,
    mean_bytes, and baseline_messages_per_s: orjson.loads + model_validate alone (no duplicate-key
    proof, no content hash, no result objects), the floor this machine allows, for context.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    values = _messages(n)
    for value in values[:1000]:  # warm up caches (typed envelope model, validators)
        assert isinstance(parse_command(TRANSFER, value), ValidCommand)
    envelope_model = typed_envelope(TRANSFER.command_topic, TRANSFER.command_model)

    def parse(value: bytes) -> object:
        return parse_command(TRANSFER, value)

    def baseline(value: bytes) -> object:
        return envelope_model.model_validate(orjson.loads(value))

    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a round measures the collector, not parsing
    try:
        cpu, wall = _best_cpu_seconds(values, parse)
        baseline_cpu, _ = _best_cpu_seconds(values, baseline)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        "messages_per_s": n / cpu,
        "wall_messages_per_s": n / wall,
        "us_per_message": cpu / n * 1e6,
        "messages": float(n),
        "mean_bytes": sum(len(v) for v in values) / n,
        "baseline_messages_per_s": n / baseline_cpu,
    }


if __name__ == "__main__":
    for key, number in bench_parse(100_000).items():
        print(f"{key}: {number:,.1f}")
