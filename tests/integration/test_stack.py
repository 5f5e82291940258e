"""`ledgerflow stack` lifecycle and fixture resolution.

The lifecycle tests run a SECOND stack (its own folder and free ports) through the real CLI, so
`stack down` here never stops the stack that the rest of the session uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ledgerflow.stack import StackSettings, ensure_kafka_jars
from ledgerflow.stack import postgres as stack_postgres
from ledgerflow.stack.kafka_broker import COMPLETE_MARKER
from ledgerflow.stack.lifecycle import claim_free_ports, run_sync, start_services, stop_services
from ledgerflow.stack.process import descendants, pid_alive, port_in_use, read_pid
from ledgerflow.stack.settings import PORT_FIELDS
from ledgerflow.testkit.plugin import (
    DATABASE_URL_ENV,
    KAFKA_BOOTSTRAP_ENV,
    KafkaServer,
    choose_source,
    provide_kafka,
    provide_postgres,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

LEDGERFLOW = str(Path(sys.executable).parent / "ledgerflow")
CLI_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AltStack:
    settings: StackSettings
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LEDGERFLOW, "stack", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )

    def pids(self) -> dict[str, int | None]:
        return {
            name: read_pid(self.settings.stack_dir / f"{name}.pid")
            for name in ("postgres", "kafka")
        }


def _alt_env(stack_dir: Path, pg_port: int, kafka_port: int, ctrl_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_STACK_")}
    env.update(
        LEDGERFLOW_STACK_DIR=str(stack_dir),
        LEDGERFLOW_STACK_POSTGRES_PORT=str(pg_port),
        LEDGERFLOW_STACK_KAFKA_PORT=str(kafka_port),
        LEDGERFLOW_STACK_KAFKA_CONTROLLER_PORT=str(ctrl_port),
        COLUMNS="200",  # rich wraps narrower output mid-word
    )
    return env


@pytest.fixture(scope="module")
def alt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AltStack]:
    stack_dir = tmp_path_factory.mktemp("alt-stack") / ".stack"
    ports = (_free_port(), _free_port(), _free_port())
    settings = StackSettings(
        dir=stack_dir,
        postgres_port=ports[0],
        kafka_port=ports[1],
        kafka_controller_port=ports[2],
    )
    alt = AltStack(settings=settings, env=_alt_env(stack_dir, *ports))
    try:
        yield alt
    finally:
        alt.run("down")
        # Under a 0700 /tmp/pytest-of-root the cluster lives in /var/tmp (see stack.postgres).
        pg_root = stack_postgres.paths(settings, stack_postgres.os_user(settings, create=False))
        if not pg_root.root.is_relative_to(stack_dir):
            shutil.rmtree(pg_root.root, ignore_errors=True)


def test_up_twice_is_a_noop(alt_stack: AltStack) -> None:
    first = alt_stack.run("up")
    assert first.returncode == 0, first.stdout + first.stderr
    pids = alt_stack.pids()
    assert all(pid is not None and pid_alive(pid) for pid in pids.values()), pids

    second = alt_stack.run("up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"postgres already running (pid {pids['postgres']})" in second.stdout
    assert f"kafka already running (pid {pids['kafka']})" in second.stdout
    assert alt_stack.pids() == pids

    status = alt_stack.run("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 2
    assert str(alt_stack.settings.postgres_port) in status.stdout


def test_env_masks_secrets_unless_asked(alt_stack: AltStack) -> None:
    port = alt_stack.settings.postgres_port
    masked = alt_stack.run("env")
    assert masked.returncode == 0
    assert f"LEDGERFLOW_DATABASE_URL='postgresql://ledgerflow_app:****@127.0.0.1:{port}" in (
        masked.stdout
    )
    assert "ledgerflow_app:ledgerflow_app" not in masked.stdout
    assert "ledgerflow_owner:ledgerflow_owner" not in masked.stdout
    assert (
        f"LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{alt_stack.settings.kafka_port}"
        in masked.stdout
    )

    shown = alt_stack.run("env", "--show-secrets")
    assert f"ledgerflow_app:ledgerflow_app@127.0.0.1:{port}/ledgerflow" in shown.stdout
    assert f"ledgerflow_owner:ledgerflow_owner@127.0.0.1:{port}/ledgerflow" in shown.stdout


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if pid_alive(pid)]


def test_down_leaves_no_process(alt_stack: AltStack) -> None:
    assert alt_stack.run("up").returncode == 0
    pids = alt_stack.pids()
    assert None not in pids.values()
    everything = [pid for pid in pids.values() if pid is not None]
    for pid in list(everything):
        everything.extend(descendants(pid))  # postgres backends, checkpointer, ...
    assert len(everything) > 2

    down = alt_stack.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped kafka" in down.stdout
    assert "stopped postgres" in down.stdout
    survivors = [pid for pid in everything if pid_alive(pid)]
    assert survivors == [], f"still running: {survivors}"
    assert _processes_mentioning(str(alt_stack.settings.stack_dir)) == []
    assert alt_stack.pids() == {"postgres": None, "kafka": None}
    s = alt_stack.settings
    for port in (s.postgres_port, s.kafka_port, s.kafka_controller_port):
        assert not port_in_use(s.host, port)

    again = alt_stack.run("down")
    assert again.returncode == 0
    assert "postgres was not running" in again.stdout
    assert "kafka was not running" in again.stdout


def test_failed_up_exits_nonzero_with_log_tail(tmp_path: Path) -> None:
    """A broker that dies at start-up: `up` exits 1 and shows the end of its log."""
    fake_java = tmp_path / "java"
    fake_java.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do last="$a"; case "$a" in kafka.tools.StorageTool) fmt=1;; esac; done\n'
        'if [ -n "$fmt" ]; then d="$(dirname "$last")/data"; mkdir -p "$d";'
        ' touch "$d/meta.properties"; exit 0; fi\n'
        'echo "simulated broker failure: cannot bind"; exit 1\n',
        encoding="utf-8",
    )
    fake_java.chmod(0o755)
    with socket.socket() as blocker:  # PostgreSQL's port is taken: that start fails too
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        env = _alt_env(tmp_path / ".stack", taken, _free_port(), _free_port())
        env["LEDGERFLOW_STACK_JAVA"] = str(fake_java)
        result = subprocess.run(
            [LEDGERFLOW, "stack", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "simulated broker failure: cannot bind" in output
    assert f"127.0.0.1:{taken} is taken" in output
    assert _processes_mentioning(str(tmp_path / ".stack")) == []


def test_env_override_beats_embedded_stack(tmp_path: Path) -> None:
    """An explicit endpoint wins: no Docker probe, no embedded stack started."""
    untouched = StackSettings(dir=tmp_path / "never-created")

    def no_docker() -> bool:
        raise AssertionError("Docker must not be probed when an endpoint is given")

    pg_env = {DATABASE_URL_ENV: "postgresql://postgres:secret@db.example:5433/postgres"}
    with provide_postgres(env=pg_env, docker_probe=no_docker, stack_settings=untouched) as pg:
        assert pg.source == "env"
        assert pg.admin_url == pg_env[DATABASE_URL_ENV]
        assert pg.url("a", "b", "c") == "postgresql://a:b@db.example:5433/c"
    kafka_env = {KAFKA_BOOTSTRAP_ENV: "broker.example:19092"}
    with provide_kafka(env=kafka_env, docker_probe=no_docker, stack_settings=untouched) as kafka:
        assert kafka == KafkaServer(bootstrap_servers="broker.example:19092", source="env")
    assert not untouched.dir.exists()


def test_resolution_order() -> None:
    assert choose_source(DATABASE_URL_ENV, {DATABASE_URL_ENV: "postgresql://x"}, lambda: True) == (
        "env"
    )
    assert choose_source(DATABASE_URL_ENV, {DATABASE_URL_ENV: "  "}, lambda: False) == "embedded"
    assert choose_source(KAFKA_BOOTSTRAP_ENV, {}, lambda: True) == "testcontainers"
    assert choose_source(KAFKA_BOOTSTRAP_ENV, {}, lambda: False) == "embedded"


def test_kafka_jars_are_fetched_once() -> None:
    settings = StackSettings()
    libs = ensure_kafka_jars(settings)  # fetches only if this machine never did
    started = time.monotonic()
    assert ensure_kafka_jars(settings) == libs
    assert time.monotonic() - started < 0.5  # cached: a marker read, no Maven
    assert (libs / COMPLETE_MARKER).is_file()
    assert (libs / f"kafka_2.13-{settings.kafka_version}.jar").is_file()


def test_cluster_ids_never_look_like_options() -> None:
    from ledgerflow.stack.kafka_broker import _new_cluster_id  # noqa: PLC0415 - private on purpose

    ids = [_new_cluster_id() for _ in range(2_000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def _hold_if_free(port: int, stack: contextlib.ExitStack) -> None:
    """Make sure `port` is taken (the session's stack usually listens there already); bound
    as the servers bind, with SO_REUSEADDR, so a port in TIME_WAIT is held too."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return
    sock.listen()
    stack.callback(sock.close)


def test_taken_default_ports_move_to_free_ones_and_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second checkout on the host: its stack starts on free ports, records them for the rest
    of the checkout, and says which; the Kafka controller port moves too."""
    for name in PORT_FIELDS:
        monkeypatch.delenv(f"LEDGERFLOW_STACK_{name.upper()}", raising=False)
    defaults = StackSettings(dir=tmp_path / "unused")
    stack_dir = tmp_path / ".stack"
    with contextlib.ExitStack() as held:
        for port in (defaults.postgres_port, defaults.kafka_port, defaults.kafka_controller_port):
            _hold_if_free(port, held)
        settings = StackSettings(dir=stack_dir)
        try:
            changes = run_sync(lambda: start_services(settings, ["postgres"]), CLI_TIMEOUT_S)
            moved = settings.postgres_port
            assert moved != defaults.postgres_port
            [note] = changes["postgres"].notes
            assert f"127.0.0.1:{defaults.postgres_port} is taken" in note
            assert f"127.0.0.1:{moved} instead" in note
            assert port_in_use("127.0.0.1", moved)
            # Every later command of the checkout finds the recorded port; an explicit one wins.
            assert StackSettings(dir=stack_dir).postgres_port == moved
            assert StackSettings(dir=stack_dir, postgres_port=5999).postgres_port == 5999
            kafka_notes = claim_free_ports(StackSettings(dir=stack_dir), ["kafka"])
            assert len(kafka_notes["kafka"]) == 2
            again = StackSettings(dir=stack_dir)
            assert again.kafka_port != defaults.kafka_port
            assert again.kafka_controller_port != defaults.kafka_controller_port
            assert again.kafka_port != again.kafka_controller_port
            assert again.postgres_port == moved
        finally:
            stop_services(settings, ["postgres"])
            pg_root = stack_postgres.paths(settings, stack_postgres.os_user(settings, create=False))
            if not pg_root.root.is_relative_to(stack_dir):
                shutil.rmtree(pg_root.root, ignore_errors=True)
