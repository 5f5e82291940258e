"""The event loop a worker process runs on: uvloop's where it is installed (Linux, macOS).

A worker at moderate load is a loop of short waits: a fetch, eight PostgreSQL round trips and
an offset commit per batch of a few commands, each a socket read and write through the loop.
uvloop does that work in C (libuv) where asyncio's selector loop does it in Python: measured at
1,000/s offered, alternated, three runs each, 571-604 against 594-632 µs of worker CPU per
command and p50 25-27 against 27-30 ms (docs/benchmarks.md, the sixth round). The relay and
the read API get it from uvicorn, whose default loop is uvloop's when installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or None (asyncio's own) where uvloop is not installed (Windows)."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop  # noqa: PLC0415 (only where installed)

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop's loop where installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
