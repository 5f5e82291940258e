"""`ledgerflow worker all`, `ledgerflow relay` and `ledgerflow api` side by side on one host with
no HTTP settings, as a user following the README in three terminals; a fourth process on a taken
port stops at once with one clear line and a non-zero exit (DESIGN §7)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from ledgerflow.harness.processes import ledgerflow_env, start_process
from ledgerflow.testkit.plugin import (
    create_test_database,
    delete_topics_with_prefix,
    drop_test_database,
    unique_prefix,
)
from ledgerflow.workers.settings import DEFAULT_HTTP_PORTS
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.harness.processes import ManagedProcess

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT_S = 30.0
# A process that finds its port taken stops before it connects to anything: well within this.
PORT_CHECK_S_MAX = 15.0


def taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_worker_relay_and_api_share_a_host_with_no_settings(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Path
) -> None:
    worker_port, relay_port = DEFAULT_HTTP_PORTS["worker"], DEFAULT_HTTP_PORTS["relay"]
    api_port = DEFAULT_HTTP_PORTS["api"]
    busy = [p for p in (worker_port, relay_port, api_port) if taken(p)]
    if busy:
        pytest.skip(f"default ports {busy} are in use on this host by something else")
    db = await create_test_database(postgres, ledgerflow_db_template)
    prefix = unique_prefix()
    processes: list[ManagedProcess] = []
    try:
        await ensure_topics(kafka.bootstrap_servers, topic_specs(prefix, 2, 2, 1), 1)
        env = ledgerflow_env(
            db.app_url,
            kafka.bootstrap_servers,
            prefix,
            auth_mode="off",
            read_database_url=db.reader_url,
        )
        assert not any(k.startswith("LEDGERFLOW_HTTP") for k in env)
        worker = start_process(["worker", "all"], env, tmp_path, default_port=worker_port)
        processes.append(worker)
        relay = start_process(["relay"], env, tmp_path, default_port=relay_port)
        processes.append(relay)
        api = start_process(["api"], env, tmp_path, default_port=api_port)
        processes.append(api)
        # All answer readiness (start_process waited for 200); each on its own default.
        assert worker.get("/readyz")[0] == 200
        assert relay.get("/readyz")[0] == 200
        assert api.get("/readyz")[0] == 200
        assert "ledgerflow_api_requests" in api.get("/metrics")[1]
        assert "ledgerflow_build_info" in worker.get("/metrics")[1]

        started = time.monotonic()
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ledgerflow.cli", "relay"],
            env=env,
            capture_output=True,
            timeout=EXIT_TIMEOUT_S,
            check=False,
        )
        took = time.monotonic() - started
        message = second.stderr.decode().strip().splitlines()
        print(
            f"second relay, port {relay_port} taken: exit {second.returncode} after "
            f"{took:.1f} s: {message[-1] if message else ''!r}"
        )
        assert second.returncode != 0
        assert len(message) == 1, message
        assert str(relay_port) in message[0]
        assert "LEDGERFLOW_HTTP_PORT" in message[0]
        assert "in use" in message[0]
        assert took < PORT_CHECK_S_MAX
        # The others were not disturbed.
        assert worker.get("/readyz")[0] == 200
        assert relay.get("/readyz")[0] == 200
        assert api.get("/readyz")[0] == 200
    finally:
        for process in processes:
            process.stop()
        await drop_test_database(postgres, db.name)
        await delete_topics_with_prefix(kafka.bootstrap_servers, prefix)


def test_a_taken_explicit_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    """Also with LEDGERFLOW_HTTP_PORT set, and for a worker: it stops before it joins a group."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        env = ledgerflow_env("postgresql://nobody@127.0.0.1:1/none", "127.0.0.1:1", "")
        env["LEDGERFLOW_HTTP_PORT"] = str(port)
        result = subprocess.run(
            [sys.executable, "-m", "ledgerflow.cli", "worker", "transfer"],
            env=env,
            capture_output=True,
            timeout=EXIT_TIMEOUT_S,
            check=False,
            cwd=tmp_path,
        )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0
    expected = (
        f"ledgerflow worker-transfer: cannot serve HTTP on 127.0.0.1:{port} (port in use); set "
        "LEDGERFLOW_HTTP_PORT to a free port (each process on a host needs its own)"
    )
    assert lines == [expected]
