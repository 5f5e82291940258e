"""Decode + validate rate of `transfer.initiated`: the number docs/benchmarks.md reports.

Single core, in process: encode `n` distinct valid commands, then time `parse_command` over them.
Rates are per second of this process's CPU time, so other load on the machine does not lower
them much; the wall-clock rate is reported beside it.
"""

from __future__ import annotations

import gc
import time
import uuid

from contracts.codec import encode_command
from contracts.commands import InitiateTransfer
from contracts.parsing import ValidCommand, parse_command
from contracts.topics import TRANSFER

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


def bench_parse(n: int) -> dict[str, float]:
    """Parse `n` transfer.initiated messages `_ROUNDS` times; the best round counts.

    Returns messages/s (CPU time, best round), the wall-clock messages/s of that round,
    microseconds per message, the message count and the mean message size in bytes.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    values = _messages(n)
    # Warm up caches (typed envelope models, validators) outside the timed rounds.
    for value in values[:1000]:
        parse_command(TRANSFER, value)
    best_cpu = best_wall = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a round measures the collector, not parsing
    try:
        for _ in range(_ROUNDS):
            wall_start = time.perf_counter()
            cpu_start = time.process_time()
            for value in values:
                result = parse_command(TRANSFER, value)
            cpu = time.process_time() - cpu_start
            wall = time.perf_counter() - wall_start
            assert isinstance(result, ValidCommand)
            if cpu < best_cpu:
                best_cpu, best_wall = cpu, wall
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        "messages_per_s": n / best_cpu,
        "wall_messages_per_s": n / best_wall,
        "us_per_message": best_cpu / n * 1e6,
        "messages": float(n),
        "mean_bytes": sum(len(v) for v in values) / n,
    }


if __name__ == "__main__":
    for key, number in bench_parse(100_000).items():
        print(f"{key}: {number:,.1f}")
