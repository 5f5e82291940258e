"""Ledgerflow's own processes as children: started on a free HTTP port, ready-checked, stopped.

Used by `ledgerflow demo`, the benchmarks and the test kit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when its parent dies, so a killed test run leaves no workers."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ledgerflow_env(
    database_url: str, bootstrap_servers: str, topic_prefix: str, **extra: str
) -> dict[str, str]:
    """The environment of a worker or relay pointed at a test database, broker and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env |= {
        "LEDGERFLOW_DATABASE_URL": database_url,
        "LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "LEDGERFLOW_TOPIC_PREFIX": topic_prefix,
    }
    env |= {f"LEDGERFLOW_{k.upper()}": v for k, v in extra.items()}
    return env


@dataclass(slots=True)
class ManagedProcess:
    """A `ledgerflow …` child process with its HTTP port; stop() is SIGTERM, then SIGKILL."""

    args: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited {self.process.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.args} not ready in {timeout_s}s: {self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return int(self.process.returncode)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    args: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    wait: bool = True,
    default_port: int | None = None,
) -> ManagedProcess:
    """Start `ledgerflow ARGS` (e.g. ["worker", "all"] or ["relay"]) on a free HTTP port, or,
    given `default_port`, with no LEDGERFLOW_HTTP_PORT: on its kind's default, that port."""
    port = default_port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{'-'.join(args)}-{port}.log"
    full_env = {k: v for k, v in env.items() if k != "LEDGERFLOW_HTTP_PORT"}
    if not default_port:
        full_env["LEDGERFLOW_HTTP_PORT"] = str(port)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledgerflow.cli", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    managed = ManagedProcess(list(args), port, process, log_path)
    if wait:
        managed.wait_ready()
    return managed


CLI_TIMEOUT_S = 120.0


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    check: bool = True,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """One `ledgerflow ARGS` command to completion (an operator's or a script's), output kept."""
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow.cli", *args],
        env=dict(env),
        capture_output=True,
        check=check,
        timeout=timeout_s,
    )
