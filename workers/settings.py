"""Runtime configuration from `LEDGERFLOW_*` environment variables.

Defaults point at the embedded stack (`ledgerflow stack up`), so a fresh clone runs without any
configuration. Secrets are `SecretStr`: they never appear in `repr`, logs or `stack env`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.auth import AuthMode

# Embedded-stack defaults; deliberately not 5432/9092 so a machine's own services don't collide.
DEFAULT_POSTGRES_PORT = 55432
DEFAULT_KAFKA_PORT = 59092


class Settings(BaseSettings):
    """Every bound the processes run with has a name, a unit and a default here."""

    model_config = SettingsConfigDict(env_prefix="LEDGERFLOW_", extra="ignore")

    # Connections. The app role owns no table (see ledger_db migrations); the owner role migrates.
    database_url: SecretStr = SecretStr(
        f"postgresql://ledgerflow_app:ledgerflow_app@127.0.0.1:{DEFAULT_POSTGRES_PORT}/ledgerflow"
    )
    migration_database_url: SecretStr = SecretStr(
        f"postgresql://ledgerflow_owner:ledgerflow_owner@127.0.0.1:{DEFAULT_POSTGRES_PORT}/ledgerflow"
    )
    kafka_bootstrap_servers: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    topic_prefix: str = ""

    # Topics.
    command_partitions: int = Field(default=6, ge=1, le=1024)
    result_partitions: int = Field(default=6, ge=1, le=1024)
    dlq_partitions: int = Field(default=1, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=7)

    # Input bounds.
    message_bytes_max: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)

    # Consumption and the database.
    batch_records_max: int = Field(default=500, ge=1, le=5000)
    batch_wait_ms: int = Field(default=10, ge=0, le=1000)
    fetch_min_bytes: int = Field(default=32 * 1024, ge=1, le=8 * 1024 * 1024)
    db_pool_size_max: int = Field(default=4, ge=1, le=32)
    statement_timeout_ms: int = Field(default=30_000, ge=100, le=120_000)
    lock_timeout_ms: int = Field(default=5_000, ge=10, le=60_000)
    db_retries_max: int = Field(default=8, ge=0, le=100)
    relay_batch_rows_max: int = Field(default=1000, ge=1, le=5000)

    # Basic-tier limits, in minor units of the wallet's currency.
    basic_single_amount_max: int = Field(default=1_000_000, ge=1, le=10**15)
    basic_balance_max: int = Field(default=5_000_000, ge=1, le=10**15)

    # Who asked (docs/security.md). `required` in every deployment; `off` only where a test
    # or benchmark says so.
    auth_mode: AuthMode = AuthMode.OFF
    auth_jwks_file: str | None = None
    auth_jwks_url: str | None = None
    auth_issuer: str = "https://identity.ledgerflow.local"
    auth_audience: str = "ledgerflow"
    auth_leeway_s: int = Field(default=300, ge=0, le=3_600)  # consumer lag allowed past exp
    auth_max_token_age_s: int = Field(default=3_600, ge=60, le=86_400)

    # Test hook for fault-injection tests: commands containing this text fail like a bug would.
    # Empty (off) in every real deployment.
    fault_poison_marker: str = Field(default="", max_length=64)

    # Observability (docs/metrics.md). Traces are off unless an OTLP/HTTP endpoint is set: the
    # collector's base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://otel-collector:4318);
    # spans go to <endpoint>/v1/traces. Headers ("k=v,k2=v2") may carry a token: a secret.
    otlp_endpoint: str = ""
    otlp_headers: SecretStr = SecretStr("")
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One line per decided command (ids and outcome, never content), at INFO; off leaves them
    # at DEBUG.
    log_commands: bool = True
    # How often consumer lag is measured (committed offsets and high watermarks from Kafka).
    lag_interval_ms: int = Field(default=5_000, ge=100, le=300_000)

    # HTTP (/metrics, /healthz, /readyz).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
