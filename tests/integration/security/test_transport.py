"""Transport security against a real secure-mode stack (its own folder and ports).

Kafka: SASL_SSL with SCRAM-SHA-512 and mutual TLS, the standard authorizer denying by default,
ACLs per service principal (stack/kafka_acls.py). PostgreSQL: TLS only, verified against the
stack's CA. The shared default stack is never touched.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from pydantic import SecretStr

from ledgerflow import stack
from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.topics import CASHIN, ONBOARDING, TRANSFER
from ledgerflow.harness.processes import ledgerflow_env, start_process
from ledgerflow.harness.results import ResultCollector, event_id_of, publish
from ledgerflow.ledger_db.migrate import migrate
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.stack import StackError, StackSettings, kafka_acls, kafka_broker, tls
from ledgerflow.stack import postgres as stack_postgres
from ledgerflow.stack.settings import APP_PASSWORD, OWNER_PASSWORD
from ledgerflow.testkit.commands import cashin, onboarding, record, transfer, wallet_of
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.workers.kafka_security import kafka_client_options
from ledgerflow.workers.settings import Settings
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration

PARTITIONS = 2  # few: every worker group must hold its partitions before /readyz says ready
CLIENT_TIMEOUT_MS = 5_000
RESULT_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SecureStack:
    settings: StackSettings
    endpoints: stack.StackEndpoints

    @property
    def ca(self) -> Path:
        return tls.tls_files(self.settings.stack_dir).ca_cert

    @property
    def bootstrap(self) -> str:
        return self.endpoints.kafka_bootstrap_servers

    def password(self, principal: str) -> str:
        path = kafka_acls.password_file(self.settings.stack_dir, principal)
        return kafka_acls.read_password(path)

    def sasl(self, principal: str, **overrides: Any) -> Settings:
        """A process's settings for `principal` on the SASL_SSL listener."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_username": principal,
            "kafka_sasl_password": SecretStr(self.password(principal)),
            "kafka_ssl_cafile": self.ca,
        }
        return Settings(**(values | overrides))

    def mtls(self, principal: str) -> Settings:
        """Settings for `principal` on the mutual-TLS listener (its client certificate)."""
        pem = tls.tls_files(self.settings.stack_dir).identity(principal)
        return Settings(
            kafka_bootstrap_servers=self.settings.kafka_mtls_bootstrap_servers,
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=self.ca,
            kafka_ssl_certfile=pem.cert,
            kafka_ssl_keyfile=pem.key,
        )


@pytest_asyncio.fixture(scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureStack]:
    stack_dir = tmp_path_factory.mktemp("secure-stack") / ".stack"
    settings = StackSettings(
        dir=stack_dir,
        secure=True,
        postgres_port=_free_port(),
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        kafka_mtls_port=_free_port(),
        kafka_heap_mb=512,
    )
    try:
        endpoints = await stack.up_async(settings)
        await migrate(endpoints.owner_database_url)
        secure = SecureStack(settings, endpoints)
        admin = kafka_client_options(secure.sasl(kafka_acls.ADMIN))
        specs = topic_specs("", PARTITIONS, PARTITIONS, 1)
        await ensure_topics(secure.bootstrap, specs, 1, admin)
        yield secure
    finally:
        await stack.down_async(settings)
        pg_root = stack_postgres.paths(settings, stack_postgres.os_user(settings, create=False))
        if not pg_root.root.is_relative_to(stack_dir):  # the /var/tmp fallback
            shutil.rmtree(pg_root.root, ignore_errors=True)


async def _send(settings: Settings, topic: str, *, idempotent: bool = False) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        enable_idempotence=idempotent,
        **kafka_client_options(settings),
    )
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"{}", key=b"k")
    finally:
        await producer.stop()


async def test_services_connect_with_their_own_credentials(
    secure: SecureStack, tmp_path: Path
) -> None:
    """API → worker → relay → API on the secure stack, each with its own principal: every ACL a
    service needs is there, and the worker reads its database URL from a file, over TLS."""
    e = secure.endpoints
    url_file = tmp_path / "database-url"
    url_file.write_text(e.app_database_url.split("?", 1)[0] + "\n", encoding="utf-8")
    worker_env = ledgerflow_env(e.app_database_url, secure.bootstrap, "", auth_mode="off")
    worker_env.pop("LEDGERFLOW_DATABASE_URL")
    worker_env |= {
        **stack.env_vars(secure.settings, kafka_principal=kafka_acls.WORKER),
        "LEDGERFLOW_DATABASE_URL_FILE": str(url_file),
        "LEDGERFLOW_DATABASE_SSLMODE": "verify-full",
        "LEDGERFLOW_DATABASE_SSL_ROOT_CERT": str(secure.ca),
    }
    for masked in ("LEDGERFLOW_DATABASE_URL", "LEDGERFLOW_MIGRATION_DATABASE_URL"):
        worker_env.pop(masked)  # env_vars masks them without --show-secrets
    relay_env = ledgerflow_env(e.app_database_url, secure.bootstrap, "", auth_mode="off") | (
        stack.env_vars(secure.settings, show_secrets=True, kafka_principal=kafka_acls.RELAY)
    )
    worker = start_process(["worker", "all"], worker_env, tmp_path)  # waits for /readyz
    relay = start_process(["relay"], relay_env, tmp_path)
    api = secure.sasl(kafka_acls.API)
    results = ResultCollector(secure.bootstrap, security=kafka_client_options(api))
    producer = AIOKafkaProducer(
        bootstrap_servers=secure.bootstrap,
        enable_idempotence=True,
        **kafka_client_options(api),
    )
    try:
        await results.start(from_end=True)
        await producer.start()
        rec = await publish(producer, onboarding(), ONBOARDING)
        [event] = await results.wait_for(event_id_of(rec), timeout_s=RESULT_TIMEOUT_S)
        assert event["type"] == "onboarding.completed", event
    finally:
        await producer.stop()
        await results.stop()
        worker.stop()
        relay.stop()
    logs = worker.log_path.read_text() + relay.log_path.read_text()
    for secret in (
        secure.password(kafka_acls.WORKER),
        secure.password(kafka_acls.RELAY),
        APP_PASSWORD.get_secret_value(),
    ):
        assert secret not in logs


async def test_unauthenticated_clients_are_refused(secure: SecureStack) -> None:
    plaintext = Settings(kafka_bootstrap_servers=secure.bootstrap)
    tls_only = Settings(
        kafka_bootstrap_servers=secure.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=secure.ca,
    )
    wrong_password = secure.sasl(kafka_acls.WORKER, kafka_sasl_password=SecretStr("guess"))
    unknown_user = secure.sasl(kafka_acls.WORKER, kafka_sasl_username="mallory")
    no_client_cert = Settings(
        kafka_bootstrap_servers=secure.settings.kafka_mtls_bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=secure.ca,
    )
    for attempt in (plaintext, tls_only, wrong_password, unknown_user, no_client_cert):
        with pytest.raises(KafkaConnectionError):
            await _send(attempt, "transfer.initiated")
    server_log = kafka_broker.paths(secure.settings).server_log.read_text(errors="replace")
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in server_log


async def test_a_principal_without_write_acl_cannot_publish_commands(secure: SecureStack) -> None:
    # The worker may read transfer.initiated, the relay may describe it: neither may write it.
    for principal in (kafka_acls.WORKER, kafka_acls.RELAY):
        with pytest.raises(TopicAuthorizationFailedError):
            await _send(secure.sasl(principal), "transfer.initiated", idempotent=True)
    # Mutual TLS maps the certificate to the same principal and the same ACLs.
    with pytest.raises(TopicAuthorizationFailedError):
        await _send(secure.mtls(kafka_acls.RELAY), "transfer.initiated")
    await _send(secure.mtls(kafka_acls.RELAY), "transfer.completed")  # its own topic: allowed
    await _send(secure.sasl(kafka_acls.API), "transfer.initiated")  # the API layer: allowed


async def test_postgres_accepts_only_verified_tls(secure: SecureStack, tmp_path: Path) -> None:
    e = secure.endpoints
    conn = await asyncpg.connect(e.app_database_url)  # sslmode=verify-full, the stack's CA
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()

    plain = e.app_database_url.split("?", 1)[0]
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(plain + "?sslmode=disable")

    settings = Settings(
        database_url=SecretStr(plain),
        database_sslmode="verify-full",
        database_ssl_root_cert=secure.ca,
    )
    pool = await create_pool(settings.database_url.get_secret_value(), size_max=1)
    try:
        assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()

    other_ca = tls.ensure_tls(tmp_path, "127.0.0.1", ()).ca_cert  # a CA the server is not from
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(plain + f"?sslmode=verify-full&sslrootcert={other_ca}")


def test_stack_env_shows_no_secret_without_show_secrets(secure: SecureStack) -> None:
    masked = "\n".join(stack.env_lines(secure.settings))
    shown = "\n".join(stack.env_lines(secure.settings, show_secrets=True))
    for principal in kafka_acls.PRINCIPALS:
        password = secure.password(principal)
        assert password not in masked
        assert password not in shown  # Kafka passwords are only ever given as _FILE paths
    for role_password in (APP_PASSWORD, OWNER_PASSWORD):
        assert f":{role_password.get_secret_value()}@" not in masked
        assert f":{role_password.get_secret_value()}@" in shown
    assert "LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE=" in masked
    assert "sslmode=verify-full" in masked
    with pytest.raises(StackError, match="unknown Kafka principal"):
        stack.env_lines(secure.settings, kafka_principal="mallory")


def test_a_folder_formatted_insecure_refuses_secure_mode(tmp_path: Path) -> None:
    settings = StackSettings(dir=tmp_path / ".stack", secure=True)
    p = kafka_broker.paths(settings)
    p.data.mkdir(parents=True)
    (p.data / "meta.properties").write_text("version=1\n", encoding="utf-8")
    with pytest.raises(StackError, match="formatted in insecure mode"):
        kafka_broker.check_mode(settings, p)
    kafka_broker.check_mode(settings.model_copy(update={"secure": False}), p)


def test_scram_argument_carries_no_password() -> None:
    argument = kafka_acls.scram_argument("svc", "hunter2-" + uuid.uuid4().hex, salt=b"s" * 32)
    assert argument.startswith('SCRAM-SHA-512=[name=svc,salt="')
    assert "hunter2" not in argument
    assert f"iterations={kafka_acls.SCRAM_ITERATIONS}]" in argument


async def test_a_dead_letter_refused_by_acl_holds_back_only_its_partition(
    secure: SecureStack, tmp_path: Path
) -> None:
    """The worker may not write the transfer dead-letter topic (its ACL is missing). An
    unparseable transfer's letter is refused even truncated: its partition is paused at that
    record (metric, not ready, the alert's series), the other partition keeps flowing, and once
    the ACL exists the letter is written and the held partition goes on."""
    prefix = f"acl{uuid.uuid4().hex[:8]}."
    dlq = prefix + TRANSFER.dlq_topic
    admin = kafka_client_options(secure.sasl(kafka_acls.ADMIN))
    acls = kafka_acls.service_acls(prefix)
    denied = [a for a in acls if a.resource_name == dlq and a.principal == kafka_acls.WORKER]
    assert denied
    await kafka_acls.create_acls(secure.bootstrap, [a for a in acls if a not in denied], admin)
    await ensure_topics(secure.bootstrap, topic_specs(prefix, PARTITIONS, PARTITIONS, 1), 1, admin)
    e = secure.endpoints
    env = ledgerflow_env(
        e.app_database_url, secure.bootstrap, prefix, auth_mode="off", held_partition_retry_s="1"
    ) | stack.env_vars(secure.settings, show_secrets=True, kafka_principal=kafka_acls.WORKER)
    relay_env = env | stack.env_vars(
        secure.settings, show_secrets=True, kafka_principal=kafka_acls.RELAY
    )
    worker = start_process(["worker", "all"], env, tmp_path)
    relay = start_process(["relay"], relay_env, tmp_path)
    api = kafka_client_options(secure.sasl(kafka_acls.API))
    results = ResultCollector(secure.bootstrap, prefix, security=api)
    producer = AIOKafkaProducer(bootstrap_servers=secure.bootstrap, enable_idempotence=True, **api)
    try:
        await results.start(from_end=True)
        await producer.start()
        alice, bob = onboarding(), onboarding()
        for command, flow in ((alice, ONBOARDING), (bob, ONBOARDING)):
            rec = await publish(producer, command, flow, prefix)
            await results.wait_for(event_id_of(rec), timeout_s=RESULT_TIMEOUT_S)
        a, b = wallet_of(alice), wallet_of(bob)
        rec = await publish(producer, cashin(a, 10_000), CASHIN, prefix)
        await results.wait_for(event_id_of(rec), timeout_s=RESULT_TIMEOUT_S)

        topic = prefix + TRANSFER.command_topic
        await producer.send_and_wait(topic, b"not json at all", key=b"k", partition=0)
        held_back = transfer(a, b, 11)
        await producer.send_and_wait(topic, record(held_back).value, key=b"k", partition=0)
        flowing = [transfer(a, b, 5) for _ in range(5)]
        for command in flowing:
            await producer.send_and_wait(topic, record(command).value, key=b"k", partition=1)
        for command in flowing:
            [event] = await results.wait_for_key(
                str(command.transfer_id), timeout_s=RESULT_TIMEOUT_S
            )
            assert event["type"] == "transfer.completed", event

        def refused() -> bool:
            _, text = worker.get("/metrics")
            return "ledgerflow_dead_letters_refused_total{" in text and (
                'ledgerflow_partitions_held{flow="transfer"} 1.0' in text
            )

        await wait_until(refused, timeout_s=RESULT_TIMEOUT_S, message="partition held")
        status, body = worker.get("/readyz")
        assert status == 503, body
        assert "dead letters refused" in body, body
        assert str(held_back.transfer_id) not in results.by_command_key
        assert worker.process.poll() is None

        await kafka_acls.create_acls(secure.bootstrap, denied, admin)
        [event] = await results.wait_for_key(str(held_back.transfer_id), timeout_s=RESULT_TIMEOUT_S)
        assert event["type"] == "transfer.completed", event
        [letter] = await read_dead_letters(secure.bootstrap, [dlq], limit=5, security=admin)
        assert letter.value == b"not json at all"
        await wait_until(lambda: worker.get("/readyz")[0] == 200, timeout_s=RESULT_TIMEOUT_S)
    finally:
        await producer.stop()
        await results.stop()
        worker.stop()
        relay.stop()
