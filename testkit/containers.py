"""Ledgerflow in Docker for other teams' tests: the image they deploy, against containerised
PostgreSQL and Apache Kafka (testcontainers). The `postgres`/`kafka` fixtures use the same two
service containers when a Docker engine answers.

    with LedgerflowContainer("ledgerflow:0.2.0") as ledgerflow:
        ledgerflow.kafka_bootstrap_servers  # publish commands, read result events
        ledgerflow.app_database_url         # read the ledger

testcontainers is imported only when a container starts, so the test kit works without it.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Self

from ledgerflow.stack.settings import (
    APP_PASSWORD,
    APP_ROLE,
    OWNER_PASSWORD,
    OWNER_ROLE,
    READER_PASSWORD,
    READER_ROLE,
    SUPERUSER,
    SUPERUSER_PASSWORD,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

POSTGRES_IMAGE = "postgres:15"
KAFKA_IMAGE = "apache/kafka:4.1.1"
DEFAULT_IMAGE = "ledgerflow:latest"
CONTAINER_START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 180
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.5
# Inside the Docker network: the service containers' aliases and ports.
POSTGRES_ALIAS, KAFKA_ALIAS, KAFKA_INTERNAL_PORT = "postgres", "kafka", 19092
WORKER_HTTP_PORT, RELAY_HTTP_PORT = 8080, 8081


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_container() -> Any:
    """PostgreSQL 15 with the documented local superuser (the roles are created afterwards)."""
    try:
        from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415
    except ImportError:  # testcontainers < 4.15 kept the module at the top level
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    return PostgresContainer(
        POSTGRES_IMAGE,
        username=SUPERUSER,
        password=SUPERUSER_PASSWORD.get_secret_value(),
        dbname="postgres",
        driver=None,
    )


def kafka_container(network: Any = None) -> tuple[Any, str]:
    """Apache Kafka's own image in KRaft mode, not started; returns it and the host's bootstrap.

    testcontainers' KafkaContainer drives Confluent's image through Confluent's scripts and does
    not start `apache/kafka`; the broker must also advertise the host-side port, which Docker
    assigns only at start. So the host port is chosen first and bound explicitly. With a
    network, a second listener serves the other containers at `kafka:19092`.
    """
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy  # noqa: PLC0415

    host_port = free_port()
    container = DockerContainer(KAFKA_IMAGE)
    host = container.get_docker_client().host()
    container.with_bind_ports(9092, host_port)
    listeners = "PLAINTEXT://:9092,CONTROLLER://:9093"
    advertised = f"PLAINTEXT://{host}:{host_port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if network is not None:
        container.with_network(network).with_network_aliases(KAFKA_ALIAS)
        listeners += f",INTERNAL://:{KAFKA_INTERNAL_PORT}"
        advertised += f",INTERNAL://{KAFKA_ALIAS}:{KAFKA_INTERNAL_PORT}"
        protocols += ",INTERNAL:PLAINTEXT"
    for key, value in {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": listeners,
        "KAFKA_ADVERTISED_LISTENERS": advertised,
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": protocols,
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_NUM_PARTITIONS": "6",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }.items():
        container.with_env(key, value)
    container.waiting_for(
        LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(
            CONTAINER_START_TIMEOUT_S
        )
    )
    return container, f"{host}:{host_port}"


def _create_roles(admin_url: str) -> None:
    """The three roles and the database `ledgerflow migrate` expects (as the compose initdb)."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def create() -> None:
        conn = await asyncpg.connect(admin_url, timeout=30)
        try:
            for role, password in (
                (OWNER_ROLE, OWNER_PASSWORD),
                (APP_ROLE, APP_PASSWORD),
                (READER_ROLE, READER_PASSWORD),
            ):
                secret = password.get_secret_value().replace("'", "''")
                await conn.execute(
                    f"CREATE ROLE {role} LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER "
                    f"PASSWORD '{secret}'"
                )
            await conn.execute(f"CREATE DATABASE ledgerflow OWNER {OWNER_ROLE}")
        finally:
            await conn.close()

    asyncio.run(create())


def _url(role: str, password: str, host: str, port: int) -> str:
    return f"postgresql://{role}:{password}@{host}:{port}/ledgerflow"


class LedgerflowContainer:
    """The Ledgerflow image as deployed: `ledgerflow migrate` and `ledgerflow topics ensure` as
    one-off jobs, then `ledgerflow worker all` and `ledgerflow relay`, on a Docker network with
    PostgreSQL and Kafka. Started when entered, every container removed when left."""

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        *,
        topic_prefix: str = "",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.image = image
        self.topic_prefix = topic_prefix
        # LEDGERFLOW_* settings for the worker and relay (auth is off unless set here).
        self.settings = {"LEDGERFLOW_AUTH_MODE": "off", **(settings or {})}
        self._started: list[Any] = []
        self._network: Any = None
        self.kafka_bootstrap_servers = ""
        self.app_database_url = ""
        self.owner_database_url = ""
        self.worker_url = ""
        self.relay_url = ""

    def _environment(self) -> dict[str, str]:
        secret_app, secret_owner = APP_PASSWORD, OWNER_PASSWORD
        return {
            "LEDGERFLOW_DATABASE_URL": _url(
                APP_ROLE, secret_app.get_secret_value(), POSTGRES_ALIAS, 5432
            ),
            "LEDGERFLOW_MIGRATION_DATABASE_URL": _url(
                OWNER_ROLE, secret_owner.get_secret_value(), POSTGRES_ALIAS, 5432
            ),
            "LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS": f"{KAFKA_ALIAS}:{KAFKA_INTERNAL_PORT}",
            "LEDGERFLOW_TOPIC_PREFIX": self.topic_prefix,
            "LEDGERFLOW_REPLICATION_FACTOR": "1",
            "LEDGERFLOW_HTTP_HOST": "0.0.0.0",  # noqa: S104 - inside its container
            **self.settings,
        }

    def _ledgerflow(self, *command: str) -> Any:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        container = DockerContainer(self.image).with_network(self._network)
        for key, value in self._environment().items():
            container.with_env(key, value)
        return container.with_command(list(command))

    def _job(self, *command: str) -> None:
        """Run a one-off `ledgerflow ...` to completion; fail with its output if it fails."""
        container = self._ledgerflow(*command)
        container.start()
        try:
            wrapped = container.get_wrapped_container()
            status = wrapped.wait(timeout=JOB_TIMEOUT_S)
            if status.get("StatusCode") != 0:
                logs = wrapped.logs().decode(errors="replace")[-3000:]
                raise RuntimeError(f"ledgerflow {' '.join(command)} failed:\n{logs}")
        finally:
            container.stop()

    def _service(self, *command: str, port: int) -> str:
        container = self._ledgerflow(*command).with_exposed_ports(port)
        container.with_env("LEDGERFLOW_HTTP_PORT", str(port))
        container.start()
        self._started.append(container)
        host = container.get_container_host_ip()
        url = f"http://{host}:{container.get_exposed_port(port)}"
        _wait_ready(url, container)
        return url

    def start(self) -> Self:
        from testcontainers.core.network import Network  # noqa: PLC0415

        try:
            self._network = Network().create()
            postgres = postgres_container()
            postgres.with_network(self._network).with_network_aliases(POSTGRES_ALIAS)
            postgres.start()
            self._started.append(postgres)
            kafka, self.kafka_bootstrap_servers = kafka_container(self._network)
            kafka.start()
            self._started.append(kafka)
            host = postgres.get_container_host_ip()
            port = int(postgres.get_exposed_port(5432))
            _create_roles(postgres.get_connection_url())
            self.app_database_url = _url(APP_ROLE, APP_PASSWORD.get_secret_value(), host, port)
            self.owner_database_url = _url(
                OWNER_ROLE, OWNER_PASSWORD.get_secret_value(), host, port
            )
            self._job("migrate")
            self._job("topics", "ensure")
            self.worker_url = self._service("worker", "all", port=WORKER_HTTP_PORT)
            self.relay_url = self._service("relay", port=RELAY_HTTP_PORT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for container in reversed(self._started):
            try:
                container.stop()
            except Exception:  # noqa: S112 - remove every other container regardless
                continue
        self._started.clear()
        if self._network is not None:
            try:
                self._network.remove()
            finally:
                self._network = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_ready(url: str, container: Any) -> None:
    """Until the process answers /readyz (database and broker reachable); its logs if not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=3) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(READY_POLL_S)
    logs = container.get_wrapped_container().logs().decode(errors="replace")[-3000:]
    raise TimeoutError(f"{url}/readyz did not answer within {READY_TIMEOUT_S} s:\n{logs}")
