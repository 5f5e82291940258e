"""Where the embedded stack lives and how it listens, from `LEDGERFLOW_STACK_*` variables.

Defaults avoid 5432 and 9092 on purpose: a developer's own PostgreSQL or Kafka keeps running
beside the stack. The passwords are local, fixed and documented (the stack listens on loopback
only), but they are still `SecretStr` so that nothing prints them by accident.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "4.1.1"  # keep in step with <kafka.version> in stack/kafka/pom.xml

DATABASE_NAME = "ledgerflow"
SUPERUSER = "postgres"
OWNER_ROLE = "ledgerflow_owner"
APP_ROLE = "ledgerflow_app"
READER_ROLE = "ledgerflow_reader"  # the read API: SELECT only, no personal data
# Fixed local passwords: the roles exist only on a loopback-only cluster that this tool creates.
SUPERUSER_PASSWORD = SecretStr("postgres")
OWNER_PASSWORD = SecretStr("ledgerflow_owner")
APP_PASSWORD = SecretStr("ledgerflow_app")
READER_PASSWORD = SecretStr("ledgerflow_reader")


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding a pyproject.toml (else `start` itself).

    The stack belongs to a checkout, not to the installed package: `.stack` sits next to
    pyproject.toml whichever subfolder the command runs from.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def _default_stack_dir() -> Path:
    return find_repo_root() / ".stack"


# The ports a stack folder's services were started on when a default was taken (stack up picks
# free ones and records them here, so every later command of the checkout finds them).
PORTS_FILE = "ports.json"
PORT_FIELDS = ("postgres_port", "kafka_port", "kafka_controller_port", "kafka_mtls_port")


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


class StackSettings(BaseSettings):
    """Paths, ports and bounds of the embedded stack; every field has a `LEDGERFLOW_STACK_` env."""

    model_config = SettingsConfigDict(env_prefix="LEDGERFLOW_STACK_", extra="ignore")

    dir: Path = Field(default_factory=_default_stack_dir)
    host: str = "127.0.0.1"
    postgres_port: int = Field(default=55432, ge=1024, le=65535)
    kafka_port: int = Field(default=59092, ge=1024, le=65535)
    kafka_controller_port: int = Field(default=59093, ge=1024, le=65535)
    # Secure mode (docs/security.md): SASL_SSL with SCRAM-SHA-512 on kafka_port, mutual TLS on
    # kafka_mtls_port, deny-by-default ACLs per service principal, PostgreSQL over TLS only.
    # Run it as a separate stack (its own LEDGERFLOW_STACK_DIR and ports): a folder formatted
    # in one mode refuses to start in the other.
    secure: bool = False
    kafka_mtls_port: int = Field(default=59094, ge=1024, le=65535)  # used in secure mode only

    kafka_version: str = KAFKA_VERSION
    # The machine has 2 cores and other work; 768 MiB is plenty for test traffic.
    kafka_heap_mb: int = Field(default=768, ge=256, le=8192)
    # The JIT compilers the broker runs. "c1" compiles quickly to less optimised code: a broker
    # started for a test run, a demo or a benchmark was still compiling with C2 minutes after
    # its start (2.7 s of CPU over one benchmark run, more than all its request handling), on
    # the cores the workers and PostgreSQL share. "tiered" (the JVM's default, C1 then C2)
    # suits a broker that lives for days (docs/benchmarks.md, the eighth round).
    kafka_jit: Literal["c1", "tiered"] = "c1"
    cache_dir: Path | None = None  # default: ~/.cache/ledgerflow/kafka-<version>
    java: str = "java"
    mvn: str = "mvn"

    postgres_bin_dir: Path | None = None  # default: `pg_config --bindir`, then /usr/lib/postgresql
    # initdb refuses to run as root; when we are root the cluster runs as this system user.
    postgres_os_user: str = "ledgerflow"
    postgres_max_connections: int = Field(default=200, ge=20, le=2000)

    # Bounds: a start that takes longer is broken, not slow.
    start_timeout_s: float = Field(default=120.0, gt=0, le=1800)
    stop_timeout_s: float = Field(default=30.0, gt=0, le=600)
    jar_fetch_timeout_s: float = Field(default=900.0, gt=0, le=7200)

    _explicit_ports: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _recorded_ports(self) -> Self:
        """A port not set by the caller or the environment is the one this stack folder's
        services were last started on (`ports.json`), when a default was taken then."""
        self._explicit_ports = frozenset(self.model_fields_set) & frozenset(PORT_FIELDS)
        for name, port in recorded_ports(self.stack_dir).items():
            if name not in self._explicit_ports:
                setattr(self, name, port)
        return self

    def port_is_explicit(self, name: str) -> bool:
        """True when the caller or a LEDGERFLOW_STACK_* variable chose this port."""
        return name in self._explicit_ports

    @property
    def ports_file(self) -> Path:
        return self.stack_dir / PORTS_FILE

    @property
    def stack_dir(self) -> Path:
        return self.dir.expanduser().resolve()

    @property
    def kafka_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir.expanduser().resolve()
        return _cache_home() / "ledgerflow" / f"kafka-{self.kafka_version}"

    @property
    def kafka_bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def kafka_mtls_bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_mtls_port}"


def recorded_ports(stack_dir: Path) -> dict[str, int]:
    """The ports recorded for a stack folder (none when it never needed other than defaults)."""
    try:
        data = json.loads((stack_dir / PORTS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    return {
        name: port
        for name, port in data.items()
        if name in PORT_FIELDS and isinstance(port, int) and 1024 <= port <= 65535
    }
