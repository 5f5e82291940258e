"""A single-node Apache Kafka (KRaft, combined broker+controller) run from the official jars.

The jars come from Maven Central once (`stack/kafka/pom.xml` pins the version) into a user cache
folder, never into the repository; later starts reuse them without calling Maven. We run the real
broker rather than a Kafka-protocol look-alike because idempotent producers, group rebalances and
the exact error codes are what the workers depend on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import ssl
import string
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient

from ledgerflow.stack import kafka_acls, tls
from ledgerflow.stack.process import (
    StackError,
    file_lock,
    live_pid,
    pid_alive,
    port_in_use,
    port_taken,
    remove_file,
    run_checked,
    spawn_detached,
    stop_process,
    tail,
    write_pid,
)

if TYPE_CHECKING:
    from ledgerflow.stack.settings import StackSettings

TEMPLATES = Path(__file__).resolve().parent / "kafka"
POM = TEMPLATES / "pom.xml"
SERVER_TEMPLATE = TEMPLATES / "server.properties"
SECURE_TEMPLATE = TEMPLATES / "secure.properties"  # appended in secure mode
LOG4J2_CONFIG = TEMPLATES / "log4j2.xml"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
COMPLETE_MARKER = ".complete"
FORMAT_TIMEOUT_S = 120.0
PROBE_TIMEOUT_MS = 3000  # one readiness probe; the overall bound is settings.start_timeout_s


@dataclass(frozen=True)
class KafkaPaths:
    root: Path  # .stack/kafka: rendered config, broker logs
    data: Path  # log.dirs
    config: Path
    stdout: Path
    server_log: Path
    cluster_id: Path
    formatted_for: Path  # the controller endpoint the storage was formatted with
    secure_marker: Path  # present when the storage was formatted in secure mode
    pid_file: Path


def paths(settings: StackSettings) -> KafkaPaths:
    root = settings.stack_dir / "kafka"
    return KafkaPaths(
        root=root,
        data=root / "data",
        config=root / "server.properties",
        stdout=root / "kafka.out",
        server_log=root / "server.log",
        cluster_id=root / "cluster.id",
        formatted_for=root / "formatted-for",
        secure_marker=root / "secure-mode",
        pid_file=settings.stack_dir / "kafka.pid",
    )


def _fingerprint(settings: StackSettings) -> str:
    """Identifies a complete jar set: the pom's content and the requested version."""
    digest = hashlib.sha256(POM.read_bytes())
    digest.update(settings.kafka_version.encode())
    return digest.hexdigest()


def _jars_complete(libs: Path, fingerprint: str) -> bool:
    marker = libs / COMPLETE_MARKER
    try:
        return marker.read_text(encoding="ascii").strip() == fingerprint
    except FileNotFoundError:
        return False


def ensure_kafka_jars(settings: StackSettings) -> Path:
    """Return the folder with the broker's jars, fetching them with Maven only the first time.

    A marker file is written after a successful copy, so an interrupted download is redone
    rather than half-used, and a cached start costs one file read.
    """
    cache = settings.kafka_cache_dir
    libs = cache / "libs"
    fingerprint = _fingerprint(settings)
    if _jars_complete(libs, fingerprint):
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / ".lock", timeout_s=settings.jar_fetch_timeout_s):
        if _jars_complete(libs, fingerprint):  # another process fetched them while we waited
            return libs
        mvn = shutil.which(settings.mvn)
        if mvn is None:
            raise StackError(
                "Maven (mvn) is needed once to fetch the Apache Kafka jars from Maven Central: "
                "`apt-get install maven` (Debian/Ubuntu), or set LEDGERFLOW_STACK_MVN"
            )
        staging = cache / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        # Maven may write next to the pom; the installed package can be read-only, so copy it.
        pom = cache / "pom.xml"
        shutil.copyfile(POM, pom)
        try:
            run_checked(
                [
                    mvn, "-q", "-B", "-f", str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={settings.kafka_version}",
                ],
                timeout_s=settings.jar_fetch_timeout_s,
                what=f"mvn dependency:copy-dependencies (Apache Kafka {settings.kafka_version})",
                cwd=cache,
            )  # fmt: skip
            broker_jar = staging / f"kafka_2.13-{settings.kafka_version}.jar"
            if not broker_jar.is_file():
                raise StackError(f"Maven finished but {broker_jar.name} is missing in {staging}")
            (staging / COMPLETE_MARKER).write_text(fingerprint + "\n", encoding="ascii")
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def _java(settings: StackSettings) -> str:
    java = shutil.which(settings.java)
    if java is None:
        raise StackError(
            "Java 17+ is needed to run Apache Kafka: `apt-get install openjdk-17-jre-headless`, "
            "or set LEDGERFLOW_STACK_JAVA"
        )
    return java


def _java_env() -> dict[str, str]:
    """A clean environment: the caller's KAFKA_* or JAVA_TOOL_OPTIONS must not change the broker."""
    keep = ("PATH", "JAVA_HOME", "HOME", "LANG", "TMPDIR")
    return {key: os.environ[key] for key in keep if key in os.environ}


def _jvm_args(settings: StackSettings, libs: Path, p: KafkaPaths, heap_mb: int) -> list[str]:
    return [
        _java(settings),
        f"-Xmx{heap_mb}m",
        f"-Xms{min(256, heap_mb)}m",
        "-XX:+UseG1GC",
        *(["-XX:TieredStopAtLevel=1"] if settings.kafka_jit == "c1" else []),
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={p.root}",
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
        "-cp",
        f"{libs}/*",
    ]


def render_config(settings: StackSettings, p: KafkaPaths) -> None:
    template = string.Template(SERVER_TEMPLATE.read_text(encoding="utf-8"))
    text = template.substitute(
        host=settings.host,
        kafka_port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        data_dir=p.data,
    )
    if settings.secure:
        files = tls.tls_files(settings.stack_dir)
        text += string.Template(SECURE_TEMPLATE.read_text(encoding="utf-8")).substitute(
            host=settings.host,
            kafka_port=settings.kafka_port,
            mtls_port=settings.kafka_mtls_port,
            controller_port=settings.kafka_controller_port,
            keystore=files.identity(tls.BROKER_NAME).bundle,
            truststore=files.ca_cert,
            super_users=f"User:{tls.BROKER_NAME};User:{kafka_acls.ADMIN}",
        )
    p.config.write_text(text, encoding="utf-8")


def check_mode(settings: StackSettings, p: KafkaPaths) -> None:
    """A folder formatted in one mode never starts in the other: switching would either drop
    the SCRAM users and ACLs or lock every existing client out. Use another stack folder."""
    if not (p.data / "meta.properties").is_file():
        return
    formatted_secure = p.secure_marker.is_file()
    if formatted_secure != settings.secure:
        mode = "secure" if formatted_secure else "insecure"
        raise StackError(
            f"{p.root} holds a Kafka formatted in {mode} mode; set LEDGERFLOW_STACK_DIR (and "
            "free ports) for a separate stack, or stop it and delete that folder"
        )


def prepare_secure(settings: StackSettings) -> None:
    """Certificates and SCRAM passwords for secure mode (kept across restarts)."""
    tls.ensure_tls(settings.stack_dir, settings.host, kafka_acls.PRINCIPALS)
    kafka_acls.ensure_passwords(settings.stack_dir)


def client_options(settings: StackSettings, principal: str = kafka_acls.ADMIN) -> dict[str, Any]:
    """aiokafka keyword arguments for `principal` on the SASL_SSL listener ({} when insecure)."""
    if not settings.secure:
        return {}
    context = ssl.create_default_context(cafile=tls.tls_files(settings.stack_dir).ca_cert)
    password = kafka_acls.read_password(kafka_acls.password_file(settings.stack_dir, principal))
    return {
        "security_protocol": "SASL_SSL",
        "ssl_context": context,
        "sasl_mechanism": kafka_acls.SCRAM_MECHANISM,
        "sasl_plain_username": principal,
        "sasl_plain_password": password,
    }


def _new_cluster_id() -> str:
    """Kafka's cluster-id format: a UUID in URL-safe base64 without padding (22 characters).

    Never starting with '-', as Kafka's own Uuid.randomUuid ensures: the storage tool's argument
    parser would take such an id for an option (a 1-in-64 failure of `stack up`).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def format_storage(settings: StackSettings, libs: Path, p: KafkaPaths) -> bool:
    """Format the KRaft storage once; again only when the controller endpoint changed.

    `--standalone` records the controller's endpoint in the metadata log, so a broker whose
    controller port was changed afterwards could not find its own quorum: start it afresh.
    """
    endpoint = json.dumps({"host": settings.host, "port": settings.kafka_controller_port})
    formatted = (p.data / "meta.properties").is_file()
    if formatted and p.formatted_for.is_file():
        if p.formatted_for.read_text(encoding="utf-8") == endpoint:
            return False
        shutil.rmtree(p.data)
    elif formatted:
        return False
    if not p.cluster_id.is_file() or p.cluster_id.read_text(encoding="ascii").startswith("-"):
        p.cluster_id.write_text(_new_cluster_id(), encoding="ascii")
    cluster_id = p.cluster_id.read_text(encoding="ascii").strip()
    scram: list[str] = []
    if settings.secure:  # SCRAM users must exist before the broker can authenticate anyone
        for principal in kafka_acls.PRINCIPALS:
            password_path = kafka_acls.password_file(settings.stack_dir, principal)
            password = kafka_acls.read_password(password_path)
            scram += ["--add-scram", kafka_acls.scram_argument(principal, password)]
    run_checked(
        [
            *_jvm_args(settings, libs, p, heap_mb=256),
            STORAGE_TOOL, "format", "--standalone", "-t", cluster_id, "-c", str(p.config),
            *scram,
        ],
        timeout_s=FORMAT_TIMEOUT_S,
        what="kafka-storage format",
        cwd=p.root,
        env=_java_env(),
    )  # fmt: skip
    p.formatted_for.write_text(endpoint, encoding="utf-8")
    if settings.secure:
        p.secure_marker.write_text("SASL_SSL SCRAM-SHA-512, mTLS, ACLs\n", encoding="utf-8")
    else:
        remove_file(p.secure_marker)
    return True


def running_pid(settings: StackSettings) -> int | None:
    p = paths(settings)
    return live_pid(p.pid_file, str(p.config))


async def describe_cluster(
    bootstrap_servers: str,
    timeout_ms: int = PROBE_TIMEOUT_MS,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One bounded metadata round trip through the admin API (`options`: client security)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        retry_backoff_ms=100,
        client_id="ledgerflow-stack-probe",
        **(options or {}),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_ms / 1000)
        result: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout_ms / 1000)
    finally:
        await admin.close()
    return result


async def healthy(bootstrap_servers: str, options: dict[str, Any] | None = None) -> bool:
    """A registered broker answers metadata. A TCP probe first keeps aiokafka from logging a
    connection error for every poll while the JVM is still starting."""
    host, _, port = bootstrap_servers.split(",", maxsplit=1)[0].rpartition(":")
    if not port_in_use(host, int(port)):
        return False
    try:
        cluster = await describe_cluster(bootstrap_servers, options=options)
    except Exception:
        return False
    return bool(cluster.get("brokers"))


async def wait_ready(settings: StackSettings, pid: int, p: KafkaPaths, deadline: float) -> None:
    """Poll the admin API until a broker is registered; fail early if the JVM dies."""
    options = client_options(settings)
    while True:
        if not pid_alive(pid):
            raise StackError(
                f"Apache Kafka exited during start-up. Last lines of {p.server_log}:\n"
                f"{tail(p.server_log)}\nLast lines of {p.stdout}:\n{tail(p.stdout)}"
            )
        if await healthy(settings.kafka_bootstrap_servers, options):
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"Apache Kafka did not answer on {settings.kafka_bootstrap_servers} in time. "
                f"Last lines of {p.server_log}:\n{tail(p.server_log)}"
            )
        await asyncio.sleep(0.25)


async def start(settings: StackSettings) -> tuple[int, bool]:
    """Start the broker unless it runs; return (pid, started_now). Waits until it answers."""
    p = paths(settings)
    check_mode(settings, p)
    existing = running_pid(settings)
    if existing is not None:
        return existing, False
    ports = [settings.kafka_port, settings.kafka_controller_port]
    if settings.secure:
        ports.append(settings.kafka_mtls_port)
    for port in ports:
        if port_taken(settings.host, port):
            raise StackError(
                f"{settings.host}:{port} is taken by another process; set "
                "LEDGERFLOW_STACK_KAFKA_PORT / LEDGERFLOW_STACK_KAFKA_CONTROLLER_PORT "
                "(/ LEDGERFLOW_STACK_KAFKA_MTLS_PORT) to free ports"
            )
    libs = await asyncio.to_thread(ensure_kafka_jars, settings)  # bounded by its own timeout
    p.root.mkdir(parents=True, exist_ok=True)
    if settings.secure:
        await asyncio.to_thread(prepare_secure, settings)
    render_config(settings, p)
    await asyncio.to_thread(format_storage, settings, libs, p)
    deadline = time.monotonic() + settings.start_timeout_s
    pid = spawn_detached(
        [*_jvm_args(settings, libs, p, settings.kafka_heap_mb), MAIN_CLASS, str(p.config)],
        log_path=p.stdout,
        cwd=p.root,
        env=_java_env(),
    )
    write_pid(p.pid_file, pid)
    await wait_ready(settings, pid, p, deadline)
    if settings.secure:  # idempotent: an ACL that exists already is left as it is
        await kafka_acls.create_acls(
            settings.kafka_bootstrap_servers, kafka_acls.service_acls(), client_options(settings)
        )
    return pid, True


def stop(settings: StackSettings) -> int | None:
    """SIGTERM lets the broker flush and close its logs; SIGKILL after the bound."""
    p = paths(settings)
    pid = running_pid(settings)
    if pid is not None:
        stop_process(pid, first_signal=signal.SIGTERM, timeout_s=settings.stop_timeout_s)
    remove_file(p.pid_file)
    return pid
