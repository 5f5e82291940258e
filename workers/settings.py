"""Runtime configuration from `LEDGERFLOW_*` environment variables.

Defaults point at the embedded stack (`ledgerflow stack up`), so a fresh clone runs without any
configuration. Secrets are `SecretStr`: they never appear in `repr`, logs or `stack env`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ledgerflow.ledger_db.content_hash import DEV_CONTENT_HASH_KEY_TEXT, ContentHashKey
from ledgerflow.ledger_db.cursor import DEV_CURSOR_KEY_TEXT
from ledgerflow.ledger_db.pii import DEV_INDEX_KEY, DEV_KEY_ID, DEV_KEYRING, PiiVault
from ledgerflow.workers.auth import JWKS_CACHE_S, JWKS_REFRESH_MIN_S, AuthMode
from ledgerflow.workers.kafka_security import check_kafka_security
from ledgerflow.workers.secret_files import SecretFileSource

if TYPE_CHECKING:
    from collections.abc import Mapping

# Embedded-stack defaults; deliberately not 5432/9092 so a machine's own services don't collide.
DEFAULT_POSTGRES_PORT = 55432
DEFAULT_KAFKA_PORT = 59092
# Each process kind has its own HTTP port, so `worker all`, `relay`, the API and one worker per
# flow run side by side on one host with no settings; LEDGERFLOW_HTTP_PORT, when set, wins.
DEFAULT_HTTP_PORTS: dict[str, int] = {
    "worker": 8080,  # `ledgerflow worker all`
    "relay": 8081,
    "api": 8082,  # the read API
    "worker-onboarding": 8083,
    "worker-cashin": 8084,
    "worker-transfer": 8085,
    "worker-cashout": 8086,
}


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
    # The read API's role: SELECT on the ledger, no personal data; may point to a hot standby.
    read_database_url: SecretStr = SecretStr(
        f"postgresql://ledgerflow_reader:ledgerflow_reader@127.0.0.1:{DEFAULT_POSTGRES_PORT}/ledgerflow"
    )

    # Transport security (docs/security.md, "Transport: Kafka and PostgreSQL"). The defaults
    # (PLAINTEXT, no TLS) suit only the loopback embedded stack. Every SecretStr may instead be
    # read from a file: LEDGERFLOW_<NAME>_FILE=/path (workers/secret_files.py).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # None: the system's trusted CAs
    kafka_ssl_certfile: Path | None = None  # a client certificate: mutual TLS
    kafka_ssl_keyfile: Path | None = None  # None: the key is in the certfile
    kafka_ssl_key_password: SecretStr | None = None
    # Merged into both database URLs (overriding their sslmode/sslrootcert/sslcert/sslkey).
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = None
    database_ssl_root_cert: Path | None = None
    database_ssl_cert: Path | None = None  # a client certificate, if the server asks for one
    database_ssl_key: Path | None = None

    # Topics.
    command_partitions: int = Field(default=6, ge=1, le=1024)
    result_partitions: int = Field(default=6, ge=1, le=1024)
    dlq_partitions: int = Field(default=1, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=7)

    # Input bounds.
    message_bytes_max: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)

    # Consumption and the database.
    batch_records_max: int = Field(default=500, ge=1, le=5000)
    # How long the broker may gather a batch; each flow's consumer also fetches this often
    # while idle. Longer costs latency at low load and saves CPU at moderate load (measured
    # for 10, 30 and 40 ms in docs/benchmarks.md, the fifth round).
    batch_wait_ms: int = Field(default=10, ge=0, le=1000)
    fetch_min_bytes: int = Field(default=32 * 1024, ge=1, le=8 * 1024 * 1024)
    # How long the broker holds a fetch while fewer than fetch_min_bytes are ready; None: as
    # long as batch_wait_ms.
    fetch_max_wait_ms: int | None = Field(default=None, ge=1, le=5_000)
    # How long the broker may hold the fetch of an idle flow's consumer, which waits there for
    # its first record instead of fetching every batch_wait_ms (workers/fetch_hold.py); 0: poll.
    idle_fetch_hold_ms: int = Field(default=500, ge=0, le=5_000)
    db_pool_size_max: int = Field(default=4, ge=1, le=32)
    statement_timeout_ms: int = Field(default=30_000, ge=100, le=120_000)
    lock_timeout_ms: int = Field(default=5_000, ge=10, le=60_000)
    # A worker silent inside a transaction this long (frozen, partitioned) loses its session and
    # its row locks; like the Kafka session timeout (10 s) after which its partitions move on.
    idle_in_transaction_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    db_retries_max: int = Field(default=8, ge=0, le=100)
    # A partition whose dead letter the broker refused even truncated (an ACL, say) is paused
    # this long before the letter is tried again; the other partitions go on meanwhile.
    held_partition_retry_s: float = Field(default=30.0, ge=0.1, le=3_600.0)
    relay_batch_rows_max: int = Field(default=1000, ge=1, le=5000)
    # An outbox row that fails this many publication attempts for a reason of its own (missing
    # topic, ACL, too large; never a broker outage) is quarantined, with every later row of its
    # key (docs/decisions/outbox-relay.md). Published rows are deleted after the retention.
    relay_quarantine_attempts: int = Field(default=6, ge=1, le=1_000)
    outbox_retention_s: int = Field(default=7 * 24 * 3_600, ge=1, le=366 * 24 * 3_600)

    # Basic-tier limits, in minor units of the wallet's currency.
    basic_single_amount_max: int = Field(default=1_000_000, ge=1, le=10**15)
    basic_balance_max: int = Field(default=5_000_000, ge=1, le=10**15)

    # Who asked (docs/security.md). `required` in every deployment; `off` only where a test
    # or benchmark says so.
    auth_mode: AuthMode = AuthMode.REQUIRED
    auth_jwks_file: str | None = None
    auth_jwks_url: str | None = None
    auth_issuer: str = "https://identity.ledgerflow.local"
    auth_audience: str = "ledgerflow"
    auth_leeway_s: int = Field(default=300, ge=0, le=3_600)  # consumer lag allowed past exp
    auth_max_token_age_s: int = Field(default=3_600, ge=60, le=86_400)
    # The JWKS is fetched again when older than this, and at most once per refresh interval
    # however many unknown key ids arrive (workers/auth.py).
    auth_jwks_cache_s: float = Field(default=JWKS_CACHE_S, ge=1.0, le=86_400.0)
    auth_jwks_refresh_min_s: float = Field(default=JWKS_REFRESH_MIN_S, ge=0.1, le=3_600.0)

    # Personal data at rest (ledger_db/pii.py): `id:base64key[,…]`, the id of the key new data is
    # encrypted with, and the HMAC key of the phone-number index. The defaults are public
    # development keys: every deployment sets its own (or the *_FILE variants).
    pii_keys: SecretStr = SecretStr(DEV_KEYRING)
    pii_active_key_id: str = DEV_KEY_ID
    pii_index_key: SecretStr = SecretStr(DEV_INDEX_KEY)
    # HMAC key of the content hashes at rest (ledger_db/content_hash.py), url-safe base64 of 32+
    # bytes; the workers and `ledgerflow migrate` need the same one. The default is public.
    content_hash_key: SecretStr = SecretStr(DEV_CONTENT_HASH_KEY_TEXT)

    # Test hook for fault-injection tests: commands containing this text fail like a bug would.
    # Empty (off) in every real deployment.
    fault_poison_marker: str = Field(default="", max_length=64)
    # Test hook: after a batch holding a command with this text, the flow's consumer stops
    # fetching without a word, as aiokafka's does when it never rejoins its group. Empty (off).
    fault_stall_marker: str = Field(default="", max_length=64)

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
    # A flow's consumer is restarted after this many lag rounds in a row in which its group had
    # work waiting and it delivered nothing (workers/stall.py): 12 rounds of 5 s, a minute.
    # 0: never.
    consumer_stall_rounds: int = Field(default=12, ge=0, le=1_000)
    # Holds (two-phase cash-outs): a hold's life when its command does not say, and the cash-out
    # worker's expiry sweep. The contract bounds hold_expires_in_s to 60 s … 30 days; the setting
    # may be shorter, for demos and tests.
    hold_expires_s: int = Field(default=259_200, ge=1, le=2_592_000)
    hold_expiry_interval_s: float = Field(default=1.0, gt=0, le=300)
    hold_expiry_round_max: int = Field(default=500, ge=1, le=500)
    # A merchant's fee when operations set none (`ledgerflow merchants set-fee`), DESIGN.md §5.2.
    merchant_fee_bps: int = Field(default=150, ge=0, le=10_000)
    merchant_fee_fixed: int = Field(default=0, ge=0, le=10**15)

    # The read API (`ledgerflow api`, DESIGN.md §6). Its cursors are signed with this key (url-safe
    # base64 of 32+ bytes; the default is public), so a client can neither forge nor alter one;
    # every replica needs the same key. Page and statement bounds are in ledger_db/reads.py.
    api_cursor_key: SecretStr = SecretStr(DEV_CURSOR_KEY_TEXT)
    api_db_pool_size_max: int = Field(default=8, ge=1, le=64)
    api_statement_timeout_ms: int = Field(default=5_000, ge=100, le=60_000)

    # HTTP (/metrics, /healthz, /readyz). No port: the process kind's own (DEFAULT_HTTP_PORTS).
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=None, ge=0, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`LEDGERFLOW_<SECRET>_FILE` ranks right after the environment variables."""
        return (
            init_settings,
            env_settings,
            SecretFileSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="after")
    def _transport_security(self) -> Settings:
        check_kafka_security(self)
        tls = {
            "sslmode": self.database_sslmode,
            "sslrootcert": self.database_ssl_root_cert,
            "sslcert": self.database_ssl_cert,
            "sslkey": self.database_ssl_key,
        }
        self.database_url = with_query(self.database_url, tls)
        self.migration_database_url = with_query(self.migration_database_url, tls)
        self.read_database_url = with_query(self.read_database_url, tls)
        return self


def with_query(url: SecretStr, params: Mapping[str, str | Path | None]) -> SecretStr:
    """`url` with the given query parameters set (None: left as the URL has it); asyncpg reads
    sslmode, sslrootcert, sslcert and sslkey from the URL, so every connection gets them."""
    given = {key: str(value) for key, value in params.items() if value is not None}
    if not given:
        return url
    parts = urlsplit(url.get_secret_value())
    query = dict(parse_qsl(parts.query, keep_blank_values=True)) | given
    return SecretStr(urlunsplit(parts._replace(query=urlencode(query))))


def http_port(settings: Settings, kind: str) -> int:
    """LEDGERFLOW_HTTP_PORT when set, else the default of the process kind (`worker`, `relay`,
    `api`, `worker-<flow>`)."""
    return settings.http_port if settings.http_port is not None else DEFAULT_HTTP_PORTS[kind]


def pii_vault(settings: Settings) -> PiiVault:
    return PiiVault.from_text(
        settings.pii_keys.get_secret_value(),
        settings.pii_active_key_id,
        settings.pii_index_key.get_secret_value(),
    )


def content_hash_key(settings: Settings) -> ContentHashKey:
    return ContentHashKey.from_text(settings.content_hash_key.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
