"""`ledgerflow api` without its database: it starts, says it is not ready, and answers 503 with
Retry-After (the infrastructure's fault, never the request's); with its database back it serves."""

from __future__ import annotations

import signal
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from ledgerflow.harness.processes import ledgerflow_env, start_process

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

READY_WAIT_S = 30.0


def test_an_api_without_its_database_is_unready_and_answers_503(tmp_path: Path) -> None:
    env = ledgerflow_env(
        "postgresql://nobody@127.0.0.1:1/none",
        "127.0.0.1:1",
        "",
        auth_mode="off",
        read_database_url="postgresql://ledgerflow_reader:x@127.0.0.1:1/ledgerflow",
    )
    api = start_process(["api"], env, tmp_path, wait=False)
    try:
        deadline = time.monotonic() + READY_WAIT_S
        status, body = 0, ""
        while time.monotonic() < deadline and status == 0:
            assert api.process.poll() is None, api.log_tail()
            try:
                status, body = api.get("/readyz")
            except OSError:
                time.sleep(0.1)  # not listening yet: poll, bounded by the deadline
        assert status == 503, body
        assert "database unavailable" in body
        answer = httpx.get(f"http://127.0.0.1:{api.port}/v1/wallets/{uuid.uuid4()}", timeout=10)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("/unavailable")
        assert api.process.poll() is None, "still running, waiting for its database"
    finally:
        # uvicorn shuts down cleanly on SIGTERM, then re-raises it: the exit says why it ended.
        assert api.stop() == -signal.SIGTERM
