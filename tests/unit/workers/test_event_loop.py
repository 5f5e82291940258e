"""The worker's event loop: uvloop's where installed, and `run` returns what `main` returns."""

from __future__ import annotations

import asyncio
import sys

import pytest

from ledgerflow.workers import event_loop


async def running_loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_a_worker_runs_on_uvloop_where_it_is_installed() -> None:
    assert event_loop.run(running_loop_module()).startswith("uvloop")


def test_without_uvloop_it_is_asyncio_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_loop.importlib.util, "find_spec", lambda _name: None)
    assert event_loop.loop_factory() is None
    assert event_loop.run(running_loop_module()).startswith("asyncio")
