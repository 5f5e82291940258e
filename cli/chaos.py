"""`ledgerflow chaos`: the fault-injection soak run (docs/reliability.md).

Runs on a PostgreSQL and Kafka of its own (free ports, a temporary folder), never on the stack of
`ledgerflow stack up`. Needs the development extras (the test kit), so they are imported when
the command runs, not when the CLI starts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ledgerflow.testkit.workload import Report

SEED_MAX = 10**6


def chaos(
    minutes: Annotated[float, typer.Option(min=0.5, help="How long to inject faults.")] = 10.0,
    seed: Annotated[
        int | None, typer.Option(help="Replays a run's workload and fault schedule.")
    ] = None,
    interval_s: Annotated[
        float, typer.Option(min=2.0, help="Seconds between faults (±30 %).")
    ] = 10.0,
    rate: Annotated[float, typer.Option(min=1.0, help="Commands published per second.")] = 100.0,
    workers: Annotated[int, typer.Option(min=1, max=6, help="Worker processes.")] = 2,
) -> None:
    """Soak test: combined faults every ~10 s under load, then every invariant is checked."""
    from ledgerflow.testkit.chaos import soak  # noqa: PLC0415 - development extras, see module doc

    # The clients retry through every injected outage; their warnings would bury the report.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    chosen = seed if seed is not None else random.SystemRandom().randrange(1, SEED_MAX)

    async def run() -> Report:
        # SIGTERM cancels the run like Ctrl-C does, so its own stack is still taken down.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        return await soak(  # on a stack of its own
            None, minutes, chosen, interval_s=interval_s, rate_per_s=rate, workers=workers
        )

    report = asyncio.run(run())
    print(report.line())
    for problem in report.problems[:50]:
        print(f"  problem: {problem}")
    if not report.ok:
        print(f"replay with: ledgerflow chaos --minutes {minutes:g} --seed {chosen}")
        raise typer.Exit(1)
