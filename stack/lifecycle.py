"""Start, stop and inspect the whole embedded stack: the API behind `ledgerflow stack` and the
test fixtures.

The core is async (readiness is proven with asyncpg and aiokafka); the plain functions `up`,
`down` and `status` wrap it for callers without an event loop, and still work when one is
running (they then run the coroutine on a helper thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ledgerflow.stack import kafka_acls, kafka_broker, postgres, tls
from ledgerflow.stack.process import StackError, file_lock, free_port, port_taken
from ledgerflow.stack.settings import PORT_FIELDS, StackSettings, recorded_ports

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Coroutine
    from pathlib import Path

Service = Literal["postgres", "kafka"]
SERVICES: tuple[Service, ...] = ("postgres", "kafka")
MASK = "****"
_T = TypeVar("_T")


@dataclass(frozen=True)
class StackEndpoints:
    """Where the stack answers. URLs carry local passwords, so they are left out of repr()."""

    admin_database_url: str = field(repr=False)  # superuser `postgres`, database `postgres`
    owner_database_url: str = field(repr=False)  # `ledgerflow_owner`: migrations
    app_database_url: str = field(repr=False)  # `ledgerflow_app`: workers, owns nothing
    reader_database_url: str = field(repr=False)  # `ledgerflow_reader`: the read API, SELECT only
    kafka_bootstrap_servers: str


@dataclass(frozen=True)
class ServiceChange:
    name: Service
    pid: int | None
    changed: bool  # started (by up) or stopped (by down) by this call
    # Said to whoever started it: a default port was taken, and which one it listens on instead.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceStatus:
    name: Service
    pid: int | None
    host: str
    port: int
    healthy: bool
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


def _settings(settings: StackSettings | None) -> StackSettings:
    return settings if settings is not None else StackSettings()


def _lock_path(settings: StackSettings) -> Path:
    return settings.stack_dir / "stack.lock"


def endpoints(settings: StackSettings | None = None) -> StackEndpoints:
    """The endpoints of a stack with these settings (whether or not it runs)."""
    s = _settings(settings)
    return StackEndpoints(
        admin_database_url=postgres.admin_url(s),
        owner_database_url=postgres.owner_url(s),
        app_database_url=postgres.app_url(s),
        reader_database_url=postgres.reader_url(s),
        kafka_bootstrap_servers=s.kafka_bootstrap_servers,
    )


def mask_url(url: str) -> str:
    """Replace the password of a URL with ****, for anything a human or a log will see."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username}:{MASK}" if parts.username else MASK
    host = parts.hostname or ""
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def start_services(
    settings: StackSettings | None = None, services: Collection[Service] = SERVICES
) -> dict[Service, ServiceChange]:
    """Start what is not running (both services concurrently) and wait until each answers.

    Serialised per stack folder by a file lock, so two `up`s (a CLI and a test run) cannot
    start two brokers on one data folder.
    """
    s = _settings(settings)
    s.stack_dir.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in SERVICES if name in services]
    starters = {"postgres": postgres.start, "kafka": kafka_broker.start}
    with file_lock(_lock_path(s), timeout_s=s.jar_fetch_timeout_s + s.start_timeout_s):
        notes = claim_free_ports(s, wanted)
        if s.secure:  # before both starts: they must not race to create one CA
            await asyncio.to_thread(kafka_broker.prepare_secure, s)
        # return_exceptions: one failing service must not cancel the other half-way through.
        results = await asyncio.gather(
            *(starters[name](s) for name in wanted), return_exceptions=True
        )
    failures = [r for r in results if isinstance(r, BaseException)]
    unexpected = [f for f in failures if not isinstance(f, StackError)]
    if unexpected:
        raise unexpected[0]
    if failures:  # report every failing service, not just the first
        raise StackError("\n\n".join(str(f) for f in failures))
    changes: dict[Service, ServiceChange] = {}
    for name, result in zip(wanted, results, strict=True):
        assert not isinstance(result, BaseException)
        pid, started = result
        changes[name] = ServiceChange(name, pid, started, tuple(notes.get(name, ())))
    return changes


_SERVICE_PORTS: dict[Service, tuple[str, ...]] = {
    "postgres": ("postgres_port",),
    "kafka": ("kafka_port", "kafka_controller_port"),
}


def claim_free_ports(s: StackSettings, wanted: Collection[Service]) -> dict[Service, list[str]]:
    """For each service about to start, move a port it was not told to use, when another
    process holds it, to a free one: recorded in the stack folder (so the rest of the
    checkout finds it) and said. A port set explicitly stays, and its start fails clearly."""
    running = {"postgres": postgres.running_pid, "kafka": kafka_broker.running_pid}
    recorded = recorded_ports(s.stack_dir)
    notes: dict[Service, list[str]] = {}
    for service in wanted:
        if running[service](s) is not None:
            continue
        names = _SERVICE_PORTS[service] + (
            ("kafka_mtls_port",) if service == "kafka" and s.secure else ()
        )
        for name in names:
            port = getattr(s, name)
            if s.port_is_explicit(name) or not port_taken(s.host, port):
                continue
            taken = {getattr(s, other) for other in PORT_FIELDS}
            chosen = free_port(s.host, avoid=taken)
            setattr(s, name, chosen)
            recorded[name] = chosen
            variable = "LEDGERFLOW_STACK_" + name.upper()
            notes.setdefault(service, []).append(
                f"{s.host}:{port} is taken by another process: {service} listens on "
                f"{s.host}:{chosen} instead (recorded in {s.ports_file}; {variable} chooses)"
            )
    if notes:
        s.ports_file.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return notes


async def up_async(
    settings: StackSettings | None = None,
    services: Collection[Service] = SERVICES,
    on_progress: Callable[[ServiceChange], None] | None = None,
) -> StackEndpoints:
    """Idempotent: running services are left alone (reported with changed=False)."""
    s = _settings(settings)
    changes = await start_services(s, services)
    if on_progress is not None:
        for change in changes.values():
            on_progress(change)
    return endpoints(s)


def stop_services(
    settings: StackSettings | None = None, services: Collection[Service] = SERVICES
) -> dict[Service, ServiceChange]:
    """Stop the given services (Kafka first: it holds no data PostgreSQL needs, and vice versa,
    but a broker shutting down while its host is loaded by a checkpoint is slower)."""
    s = _settings(settings)
    stoppers = {"kafka": kafka_broker.stop, "postgres": postgres.stop}
    changes: dict[Service, ServiceChange] = {}
    with file_lock(_lock_path(s), timeout_s=s.stop_timeout_s * 4):
        for name in ("kafka", "postgres"):
            if name in services:
                pid = stoppers[name](s)
                changes[name] = ServiceChange(name=name, pid=pid, changed=pid is not None)
    return changes


async def down_async(
    settings: StackSettings | None = None, services: Collection[Service] = SERVICES
) -> dict[Service, ServiceChange]:
    return await asyncio.to_thread(stop_services, settings, services)


async def status_async(settings: StackSettings | None = None) -> list[ServiceStatus]:
    """Pid from the pid file (checked against /proc) and health from a real round trip."""
    s = _settings(settings)
    pg_pid = postgres.running_pid(s)
    kafka_pid = kafka_broker.running_pid(s)

    async def pg_health() -> bool:
        return pg_pid is not None and await postgres.is_healthy(postgres.admin_url(s))

    async def kafka_health() -> bool:
        if kafka_pid is None:
            return False
        return await kafka_broker.healthy(s.kafka_bootstrap_servers, kafka_broker.client_options(s))

    pg_ok, kafka_ok = await asyncio.gather(pg_health(), kafka_health())
    return [
        ServiceStatus("postgres", pg_pid, s.host, s.postgres_port, pg_ok, postgres.log_path(s)),
        ServiceStatus(
            "kafka", kafka_pid, s.host, s.kafka_port, kafka_ok, kafka_broker.paths(s).server_log
        ),
    ]


def env_vars(
    settings: StackSettings | None = None,
    *,
    show_secrets: bool = False,
    kafka_principal: str = kafka_acls.WORKER,
) -> dict[str, str]:
    """The `LEDGERFLOW_…` variables that point the application at this stack.

    Passwords in database URLs are masked unless `show_secrets`. In secure mode the Kafka
    variables are those of `kafka_principal`, whose password is given as a `…_FILE` path: no
    Kafka password is printed even with `show_secrets`.
    """
    s = _settings(settings)
    e = endpoints(s)

    def shown(url: str) -> str:
        return url if show_secrets else mask_url(url)

    values = {
        "LEDGERFLOW_DATABASE_URL": shown(e.app_database_url),
        "LEDGERFLOW_MIGRATION_DATABASE_URL": shown(e.owner_database_url),
        "LEDGERFLOW_READ_DATABASE_URL": shown(e.reader_database_url),
        "LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS": e.kafka_bootstrap_servers,
    }
    if s.secure:
        if kafka_principal not in kafka_acls.PRINCIPALS:
            raise StackError(
                f"unknown Kafka principal {kafka_principal!r}; one of "
                + ", ".join(kafka_acls.PRINCIPALS)
            )
        values |= {
            "LEDGERFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LEDGERFLOW_KAFKA_SASL_MECHANISM": kafka_acls.SCRAM_MECHANISM,
            "LEDGERFLOW_KAFKA_SASL_USERNAME": kafka_principal,
            "LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE": str(
                kafka_acls.password_file(s.stack_dir, kafka_principal)
            ),
            "LEDGERFLOW_KAFKA_SSL_CAFILE": str(tls.tls_files(s.stack_dir).ca_cert),
        }
    return values


def env_lines(
    settings: StackSettings | None = None,
    *,
    show_secrets: bool = False,
    kafka_principal: str = kafka_acls.WORKER,
) -> list[str]:
    """`export LEDGERFLOW_…=…` lines (see `env_vars`)."""
    values = env_vars(settings, show_secrets=show_secrets, kafka_principal=kafka_principal)
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]


def run_sync(factory: Callable[[], Coroutine[object, object, _T]], timeout_s: float) -> _T:
    """Run a coroutine to completion from synchronous code, on a private loop in a helper thread.

    The thread keeps this safe inside a running event loop, and leaves the caller's current
    loop alone (asyncio.run in the main thread would unset it, e.g. under pytest-asyncio).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lf-stack")
    try:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False)  # on timeout, do not wait for the stuck work as well


def up(
    settings: StackSettings | None = None,
    services: Collection[Service] = SERVICES,
    on_progress: Callable[[ServiceChange], None] | None = None,
) -> StackEndpoints:
    s = _settings(settings)
    bound = s.jar_fetch_timeout_s + 2 * s.start_timeout_s
    return run_sync(lambda: up_async(s, services, on_progress), bound)


def down(
    settings: StackSettings | None = None, services: Collection[Service] = SERVICES
) -> dict[Service, ServiceChange]:
    return stop_services(settings, services)


def status(settings: StackSettings | None = None) -> list[ServiceStatus]:
    s = _settings(settings)
    return run_sync(lambda: status_async(s), s.start_timeout_s)
