"""Pytest fixtures for tests against the real PostgreSQL and Apache Kafka.

Registered through the `pytest11` entry point, so installing `ledgerflow` is enough. Fixtures:

- `postgres` (session): a server with a superuser URL. `kafka` (session): bootstrap servers.
  Each is found in this order: (a) `LEDGERFLOW_TEST_DATABASE_URL` (a superuser URL) /
  `LEDGERFLOW_TEST_KAFKA_BOOTSTRAP_SERVERS`; (b) testcontainers, when a Docker engine answers
  (set `LEDGERFLOW_TEST_DOCKER=0` to skip the probe); (c) the embedded stack (`stack.up`).
  The embedded services are started when needed and LEFT RUNNING at the end of the session: other
  sessions (a second terminal, a colleague's run in the same tree) may be using them, and the next
  run starts in a second instead of ten. `ledgerflow stack down` stops them; set
  `LEDGERFLOW_TEST_STACK_STOP=1` to stop, at session end, the services this session started.
- `database` (function): a fresh database per test, cloned from a template that is built once
  (roles, `CREATE DATABASE`, then `ledger_db.migrate.migrate(owner_dsn)` when that exists). The
  template's name carries a hash of the migrations, so changing one rebuilds it. The roles
  `ledgerflow_owner`/`ledgerflow_app` are created on the server, or their passwords reset to the
  documented local ones (stack/settings.py) — point the override only at a throwaway server.
- `kafka_topic_prefix` (function): a unique topic prefix (`t<hex8>.`); topics under it are deleted
  after the test. Use `unique_group(name)` for consumer groups and `create_topics(...)` for topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ledgerflow.ledger_db import migrate as migrate_module
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.migrate import MIGRATIONS_DIR
from ledgerflow.stack import StackSettings
from ledgerflow.stack import postgres as stack_postgres
from ledgerflow.stack.lifecycle import run_sync, start_services, stop_services
from ledgerflow.stack.settings import (
    APP_PASSWORD,
    APP_ROLE,
    OWNER_PASSWORD,
    OWNER_ROLE,
    READER_PASSWORD,
    READER_ROLE,
    SUPERUSER,
)
from ledgerflow.testkit.containers import (
    kafka_container,
    postgres_container,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping

Source = Literal["env", "testcontainers", "embedded"]

DATABASE_URL_ENV = "LEDGERFLOW_TEST_DATABASE_URL"
KAFKA_BOOTSTRAP_ENV = "LEDGERFLOW_TEST_KAFKA_BOOTSTRAP_SERVERS"
DOCKER_ENV = "LEDGERFLOW_TEST_DOCKER"
STOP_ENV = "LEDGERFLOW_TEST_STACK_STOP"

DOCKER_PING_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 10.0
ADMIN_TIMEOUT_MS = 15_000
TOPIC_READY_TIMEOUT_S = 30.0
# Bumped when the way a template is built changes, so old templates are not reused.
TEMPLATE_FORMAT = "1"
TEMPLATE_LOCK_KEY = 0x4C46_5450  # "LFTP": one session builds a template, the others wait
TEST_DATABASE_PREFIX = "lf_test_"
STALE_TEMPLATE_LOCK_TIMEOUT_MS = 2000
TEMPLATE_BUILD_TIMEOUT_S = 240.0  # waiting for another session's build; under pytest-timeout
CREATE_DATABASE_TIMEOUT_S = 60.0  # a clone copies a few MB; a minute means something is stuck
TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server the tests may use as superuser."""

    admin_url: str = field(repr=False)
    source: Source

    def url(self, user: str, password: str, database: str) -> str:
        return with_credentials(self.admin_url, user, password, database)


@dataclass(frozen=True)
class KafkaServer:
    bootstrap_servers: str
    source: Source


@dataclass(frozen=True)
class IsolatedDatabase:
    """One test's own database; the URLs are plain asyncpg DSNs."""

    name: str
    admin_url: str = field(repr=False)  # superuser, connected to this database
    owner_url: str = field(repr=False)  # ledgerflow_owner: owns the schema (migrations)
    app_url: str = field(repr=False)  # ledgerflow_app: what workers use
    reader_url: str = field(repr=False)  # ledgerflow_reader: what the read API uses


def with_credentials(url: str, user: str, password: str, database: str) -> str:
    """The same server as `url`, as another user and database (scheme normalised for asyncpg)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(("postgresql", netloc, "/" + quote(database, safe=""), parts.query, ""))


# --------------------------------------------------------------------------------------------
# Resolution: env override, then Docker, then the embedded stack.


@functools.lru_cache(maxsize=1)
def docker_available() -> bool:
    """True when a Docker engine answers a ping within a short bound; never raises."""
    if os.environ.get(DOCKER_ENV, "").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if importlib.util.find_spec("testcontainers") is None:  # Docker alone is not enough
        return False
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - optional, probed lazily

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def choose_source(
    override_var: str, env: Mapping[str, str], docker_probe: Callable[[], bool]
) -> Source:
    """The resolution order of the `postgres` and `kafka` fixtures, as a pure function."""
    if env.get(override_var, "").strip():
        return "env"
    if docker_probe():
        return "testcontainers"
    return "embedded"


def _stop_requested(env: Mapping[str, str]) -> bool:
    return env.get(STOP_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def provide_postgres(
    env: Mapping[str, str] | None = None,
    docker_probe: Callable[[], bool] = docker_available,
    stack_settings: StackSettings | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[PostgresServer]:
    """Yield a PostgreSQL server following the resolution order; clean up what was started."""
    env = os.environ if env is None else env
    source = choose_source(DATABASE_URL_ENV, env, docker_probe)
    if source == "env":
        yield PostgresServer(admin_url=env[DATABASE_URL_ENV].strip(), source="env")
    elif source == "testcontainers":
        container = postgres_container()
        container.start()
        try:
            yield PostgresServer(admin_url=container.get_connection_url(), source=source)
        finally:
            container.stop()
    else:
        settings = stack_settings or StackSettings()
        changes = run_sync(
            lambda: start_services(settings, ["postgres"]),
            settings.jar_fetch_timeout_s + settings.start_timeout_s,
        )
        for note in changes["postgres"].notes:
            (say or _to_stderr)(note)
        try:
            yield PostgresServer(admin_url=stack_postgres.admin_url(settings), source=source)
        finally:
            if changes["postgres"].changed and _stop_requested(env):
                stop_services(settings, ["postgres"])


@contextlib.contextmanager
def provide_kafka(
    env: Mapping[str, str] | None = None,
    docker_probe: Callable[[], bool] = docker_available,
    stack_settings: StackSettings | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[KafkaServer]:
    """Yield a Kafka cluster following the resolution order; clean up what was started."""
    env = os.environ if env is None else env
    source = choose_source(KAFKA_BOOTSTRAP_ENV, env, docker_probe)
    if source == "env":
        yield KafkaServer(bootstrap_servers=env[KAFKA_BOOTSTRAP_ENV].strip(), source="env")
    elif source == "testcontainers":
        container, bootstrap = kafka_container()
        container.start()
        try:
            yield KafkaServer(bootstrap_servers=bootstrap, source=source)
        finally:
            container.stop()
    else:
        settings = stack_settings or StackSettings()
        changes = run_sync(
            lambda: start_services(settings, ["kafka"]),
            settings.jar_fetch_timeout_s + settings.start_timeout_s,
        )
        for note in changes["kafka"].notes:
            (say or _to_stderr)(note)
        try:
            yield KafkaServer(bootstrap_servers=settings.kafka_bootstrap_servers, source=source)
        finally:
            if changes["kafka"].changed and _stop_requested(env):
                stop_services(settings, ["kafka"])


# --------------------------------------------------------------------------------------------
# Databases: one template per migration set, one clone per test.


def _migration_fingerprint() -> str:
    """Hash of everything that decides a template's content: the SQL files and the migrator."""
    digest = hashlib.sha256(TEMPLATE_FORMAT.encode())
    for sql in sorted(MIGRATIONS_DIR.glob("*.sql")):
        digest.update(sql.name.encode() + b"\0" + sql.read_bytes() + b"\0")
    digest.update(b"migrate.py\0" + Path(migrate_module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def template_name() -> str:
    return f"lf_tpl_{_migration_fingerprint()}"


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)


async def build_template(server: PostgresServer) -> str:
    """Create (once per migration set) the database every test database is cloned from.

    Concurrent sessions serialise on an advisory lock; a template counts as finished only once it
    is marked IS_TEMPLATE, so one left half-built by a crashed run is dropped and rebuilt.
    """
    name = template_name()
    admin = await _connect(server.admin_url)
    try:
        # Another session may be migrating a template right now: wait for it, but not forever.
        await admin.execute(
            "SELECT pg_advisory_lock($1)", TEMPLATE_LOCK_KEY, timeout=TEMPLATE_BUILD_TIMEOUT_S
        )
        try:
            await stack_postgres.ensure_roles(admin)
            done = await admin.fetchval(
                "SELECT datistemplate FROM pg_database WHERE datname = $1", name
            )
            if done:
                return name
            if done is not None:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}" OWNER "{OWNER_ROLE}"')
            await migrate_module.migrate(
                server.url(OWNER_ROLE, OWNER_PASSWORD.get_secret_value(), name)
            )
            # Nobody may stay connected: CREATE DATABASE … TEMPLATE needs the template idle.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await admin.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE true')
            await _drop_stale_templates(admin, keep=name)
            return name
        finally:
            await admin.execute("SELECT pg_advisory_unlock($1)", TEMPLATE_LOCK_KEY)
    finally:
        await admin.close(timeout=CONNECT_TIMEOUT_S)


async def _drop_stale_templates(admin: asyncpg.Connection, keep: str) -> None:
    """Templates of older migration sets would pile up while migrations are being edited.

    Best effort: one still being cloned holds a lock, and we give up on it after a short wait.
    """
    stale = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE 'lf\\_tpl\\_%' AND datname <> $1",
        keep,
    )
    await admin.execute(f"SET lock_timeout = {STALE_TEMPLATE_LOCK_TIMEOUT_MS}")
    try:
        for row in stale:
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'ALTER DATABASE "{row["datname"]}" IS_TEMPLATE false')
                await admin.execute(f'DROP DATABASE "{row["datname"]}"')
    finally:
        await admin.execute("RESET lock_timeout")


async def create_test_database(server: PostgresServer, template: str) -> IsolatedDatabase:
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex}"
    statement = f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER "{OWNER_ROLE}"'
    admin = await _connect(server.admin_url)
    try:
        try:
            await admin.execute(statement, timeout=CREATE_DATABASE_TIMEOUT_S)
        except asyncpg.InvalidCatalogNameError:
            # A session with newer migrations replaced our template meanwhile: rebuild it.
            await build_template(server)
            await admin.execute(statement, timeout=CREATE_DATABASE_TIMEOUT_S)
    finally:
        await admin.close(timeout=CONNECT_TIMEOUT_S)
    admin_parts = urlsplit(server.admin_url)
    return IsolatedDatabase(
        name=name,
        admin_url=with_credentials(
            server.admin_url,
            unquote(admin_parts.username or SUPERUSER),
            unquote(admin_parts.password or ""),
            name,
        ),
        owner_url=server.url(OWNER_ROLE, OWNER_PASSWORD.get_secret_value(), name),
        app_url=server.url(APP_ROLE, APP_PASSWORD.get_secret_value(), name),
        reader_url=server.url(READER_ROLE, READER_PASSWORD.get_secret_value(), name),
    )


async def drop_test_database(server: PostgresServer, name: str) -> None:
    admin = await _connect(server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close(timeout=CONNECT_TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# Kafka helpers.


def unique_prefix() -> str:
    """A topic prefix no other test uses: `t<hex8>.`."""
    return f"t{uuid.uuid4().hex[:8]}."


def unique_group(name: str) -> str:
    """A consumer group id no other test uses, readable in broker logs."""
    return f"{name}.g{uuid.uuid4().hex[:8]}"


def _admin(bootstrap_servers: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=ADMIN_TIMEOUT_MS,
        client_id="ledgerflow-testkit",
    )


async def create_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int = 6,
    *,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = TOPIC_READY_TIMEOUT_S,
) -> None:
    """Create topics (existing ones are fine) and wait until every partition has a leader.

    Auto-creation is off on our brokers, and a producer that races a fresh topic's leader
    election gets errors; waiting here keeps tests free of retries and sleeps.
    """
    wanted = list(names)
    admin = _admin(bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(configs or {}),
                )
                for topic in wanted
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        failed = [
            (topic, code, message)
            for topic, code, message, *_ in _topic_errors(response)
            if code not in {0, TOPIC_ALREADY_EXISTS}
        ]
        if failed:
            raise RuntimeError(f"create_topics failed: {failed}")
        while True:
            described = await admin.describe_topics(wanted)
            if all(
                topic["error_code"] == 0
                and len(topic["partitions"]) == partitions
                and all(part["leader"] >= 0 for part in topic["partitions"])
                for topic in described
            ):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topics {wanted} had no leaders after {timeout_s} s")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def _topic_errors(response: Any) -> list[tuple[Any, ...]]:
    """(topic, error_code, error_message) rows; v0 responses carry no message."""
    rows: list[tuple[Any, ...]] = []
    for row in response.topic_errors:
        values = tuple(row)
        rows.append(values if len(values) >= 3 else (*values, None))
    return rows


async def delete_topics_with_prefix(
    bootstrap_servers: str, prefix: str, timeout_s: float = 10.0
) -> None:
    """Best-effort cleanup so the local broker does not collect thousands of test topics."""
    admin = _admin(bootstrap_servers)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics, timeout_ms=int(timeout_s * 1000))
    finally:
        await admin.close()


async def assert_audit_passes(target: str | asyncpg.Pool) -> None:
    """`ledgerflow audit` on a database (a URL or a pool) passes; when it does not, every
    failing check is named with its examples."""
    if isinstance(target, str):
        conn = await asyncpg.connect(target)
        try:
            results = await run_audit(conn)
        finally:
            await conn.close()
    else:
        async with target.acquire() as pooled:
            results = await run_audit(pooled)  # type: ignore[arg-type]  # a pooled Connection
    failed = [(r.name, r.examples) for r in results if not r.ok]
    assert failed == [], failed


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    message: str = "condition",
) -> None:
    """Poll `condition` until it holds; fail with `message` after `timeout_s` (never hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} did not hold within {timeout_s} s")
        await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------------------------
# Fixtures.


def pytest_configure(config: pytest.Config) -> None:
    """Declare our markers for projects that use this plugin with --strict-markers."""
    config.addinivalue_line("markers", "integration: needs the real PostgreSQL and Kafka")


PIPELINE_FIXTURE = "ledgerflow_pipeline"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """An `async def` test that takes `ledgerflow_pipeline` runs under pytest-asyncio in any
    mode: in strict mode (its default) it is marked here, so another team's project needs no
    asyncio configuration of its own for it. Collection itself is left to pytest."""
    del collector, name
    if not inspect.iscoroutinefunction(obj):
        return
    if PIPELINE_FIXTURE not in inspect.signature(obj).parameters:
        return
    marks = getattr(obj, "pytestmark", [])
    if not any(getattr(mark, "name", None) == "asyncio" for mark in marks):
        pytest.mark.asyncio(obj)


SKIP_BANNER = "#" * 78


def skip_loudly(reason: str) -> NoReturn:
    """Skip, and say so on stderr too (pytest -ra repeats the reason in the summary): a test
    that cannot run here must not pass unnoticed."""
    sys.stderr.write(f"\n{SKIP_BANNER}\n# SKIPPED: {reason}\n{SKIP_BANNER}\n")
    pytest.skip(reason)


def _to_stderr(line: str) -> None:
    sys.stderr.write(f"ledgerflow: {line}\n")


def _teller(config: pytest.Config) -> Callable[[str], None]:
    """Says a line on the terminal, past output capturing (a port moved is worth knowing)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if reporter is None:
            _to_stderr(line)
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"ledgerflow: {line}", yellow=True)

    return say


@pytest.fixture(scope="session")
def postgres(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """A PostgreSQL server with a superuser URL (env override, testcontainers or embedded)."""
    with provide_postgres(say=_teller(pytestconfig)) as server:
        yield server


@pytest.fixture(scope="session")
def kafka(pytestconfig: pytest.Config) -> Iterator[KafkaServer]:
    """A Kafka cluster (env override, testcontainers or the embedded Apache Kafka)."""
    with provide_kafka(say=_teller(pytestconfig)) as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ledgerflow_db_template(postgres: PostgresServer) -> str:
    """The template database's name, built once per session (and reused across sessions)."""
    return await build_template(postgres)


@pytest_asyncio.fixture(loop_scope="session")
async def database(
    postgres: PostgresServer, ledgerflow_db_template: str
) -> AsyncIterator[IsolatedDatabase]:
    """A database of this test's own, migrated, dropped (WITH FORCE) afterwards."""
    db = await create_test_database(postgres, ledgerflow_db_template)
    try:
        yield db
    finally:
        await drop_test_database(postgres, db.name)


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_topic_prefix(kafka: KafkaServer) -> AsyncIterator[str]:
    """A unique topic prefix; topics named with it are deleted after the test."""
    prefix = unique_prefix()
    yield prefix
    with contextlib.suppress(Exception):
        await delete_topics_with_prefix(kafka.bootstrap_servers, prefix)


@pytest_asyncio.fixture
async def ledgerflow_pipeline(
    postgres: PostgresServer, kafka: KafkaServer, ledgerflow_db_template: str, tmp_path: Path
) -> AsyncIterator[Any]:
    """A running Ledgerflow of the test's own: a database and topics, a worker for every flow,
    the relay, the read API, and authentication on with an identity provider of its own that
    signs every command. `await p.send(command)` returns the result event, `await p.get(path)`
    asks the read API (a `testkit.pipeline.Pipeline`)."""
    # Imported here: the pipeline module builds on this one's helpers.
    from ledgerflow.testkit.pipeline import running_pipeline  # noqa: PLC0415

    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, tmp_path / "ledgerflow", signed=True, api=True
    ) as pipeline:
        yield pipeline
