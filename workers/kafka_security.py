"""How every Kafka client of Ledgerflow authenticates and encrypts: built from `Settings` once.

- PLAINTEXT (default): the loopback embedded stack only.
- SASL_SSL + SCRAM-SHA-512: TLS to the broker, then a username and password that never cross the
  wire (SCRAM proves knowledge of the password). What the secure stack and most clusters use.
- SSL with a client certificate (`kafka_ssl_certfile`/`keyfile`): mutual TLS; the broker maps the
  certificate's subject to the principal.
- SASL_PLAINTEXT: SCRAM without encryption, for a broker behind its own encrypted network.

`kafka_client_options` gives aiokafka keyword arguments (producers, consumers, admin clients);
`faststream_security` gives the same as a FastStream security object for `KafkaBroker`.
The password is unwrapped from its `SecretStr` only here, into the client, never into a log.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

if TYPE_CHECKING:
    from ledgerflow.workers.settings import Settings

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def check_kafka_security(settings: Settings) -> None:
    """Refuse combinations that would fail at the first connection, or silently not protect."""
    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise ValueError(
                f"kafka_security_protocol={protocol} needs kafka_sasl_username and "
                "kafka_sasl_password (or LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE)"
            )
        if protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism == "PLAIN":
            raise ValueError("SASL PLAIN without TLS sends the password in clear: use SASL_SSL")
    tls_files = (
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
    )
    if protocol not in TLS_PROTOCOLS and any(path is not None for path in tls_files):
        raise ValueError(
            f"kafka_ssl_* files are set but kafka_security_protocol={protocol} does not use TLS"
        )
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        raise ValueError("kafka_ssl_keyfile needs kafka_ssl_certfile")


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker (certificate chain and host name); presents a client certificate
    when one is configured (mutual TLS)."""
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.kafka_ssl_certfile is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile,
            password=password.get_secret_value() if password is not None else None,
        )
    return context


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments: `AIOKafkaProducer(bootstrap_servers=..., **options)`."""
    check_kafka_security(settings)
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = kafka_ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        assert settings.kafka_sasl_password is not None  # checked above
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def faststream_security(settings: Settings) -> BaseSecurity | None:
    """The same choice as `kafka_client_options`, as FastStream's `KafkaBroker(security=...)`."""
    check_kafka_security(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings) if protocol in TLS_PROTOCOLS else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    assert settings.kafka_sasl_password is not None  # checked above
    kinds: dict[str, type[SASLScram512 | SASLScram256 | SASLPlaintext]] = {
        "SCRAM-SHA-512": SASLScram512,
        "SCRAM-SHA-256": SASLScram256,
        "PLAIN": SASLPlaintext,
    }
    return kinds[settings.kafka_sasl_mechanism](
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=protocol == "SASL_SSL",
    )
