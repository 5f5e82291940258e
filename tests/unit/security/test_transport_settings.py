"""Transport settings: secrets from `*_FILE` paths, Kafka client security, database TLS."""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

import pytest
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLScram512
from pydantic import SecretStr, ValidationError
from pydantic_settings.exceptions import SettingsError

from ledgerflow.stack import tls
from ledgerflow.workers.kafka_security import faststream_security, kafka_client_options
from ledgerflow.workers.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LEDGERFLOW_"):
            monkeypatch.delenv(key)


def test_secret_read_from_file_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "url").write_text("postgresql://u:p@db:5432/ledger\n", encoding="utf-8")
    (tmp_path / "pw").write_text(SECRET, encoding="utf-8")
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("ledgerflow_kafka_sasl_password_file", str(tmp_path / "pw"))
    settings = Settings()
    assert settings.database_url.get_secret_value() == "postgresql://u:p@db:5432/ledger"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


def test_every_secret_field_has_a_file_variant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "headers").write_text("authorization=Bearer x", encoding="utf-8")
    monkeypatch.setenv("LEDGERFLOW_OTLP_HEADERS_FILE", str(tmp_path / "headers"))
    monkeypatch.setenv("LEDGERFLOW_TOPIC_PREFIX_FILE", str(tmp_path / "headers"))  # not a secret
    settings = Settings()
    assert settings.otlp_headers.get_secret_value() == "authorization=Bearer x"
    assert settings.topic_prefix == ""


def test_value_and_file_together_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "url").write_text("postgresql://a@b/c", encoding="utf-8")
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", "postgresql://x@y/z")
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL_FILE", str(tmp_path / "url"))
    with pytest.raises(SettingsError, match="not both"):
        Settings()


@pytest.mark.parametrize("content", [None, b"", b"\xff\xfe"])
def test_unreadable_secret_file_names_the_path_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE", str(path))
    with pytest.raises(SettingsError, match="LEDGERFLOW_KAFKA_SASL_PASSWORD_FILE") as error:
        Settings()
    assert str(path) in str(error.value)


def test_sasl_needs_credentials_and_tls_files_need_tls() -> None:
    with pytest.raises(ValidationError, match="needs kafka_sasl_username"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    with pytest.raises(ValidationError, match="does not use TLS"):
        Settings(kafka_ssl_cafile="/etc/ssl/ca.pem")
    with pytest.raises(ValidationError, match="password in clear"):
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="svc",
            kafka_sasl_password=SecretStr(SECRET),
        )
    with pytest.raises(ValidationError, match="needs kafka_ssl_certfile"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_keyfile="/k.pem")


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings()
    assert kafka_client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faststream_security(settings) is None


def test_sasl_ssl_gives_the_same_options_to_aiokafka_and_faststream(tmp_path: Path) -> None:
    files = tls.ensure_tls(tmp_path, "127.0.0.1", ())
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="ledgerflow-worker",
        kafka_sasl_password=SecretStr(SECRET),
        kafka_ssl_cafile=files.ca_cert,
    )
    options = kafka_client_options(settings)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ledgerflow-worker",
        "sasl_plain_password": SECRET,
    }
    security = faststream_security(settings)
    assert isinstance(security, SASLScram512)
    parsed = parse_security(security)
    assert isinstance(parsed.pop("ssl_context"), ssl.SSLContext)
    assert parsed == options


def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    files = tls.ensure_tls(tmp_path, "127.0.0.1", ["ledgerflow-relay"])
    pem = files.identity("ledgerflow-relay")
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=files.ca_cert,
        kafka_ssl_certfile=pem.cert,
        kafka_ssl_keyfile=pem.key,
    )
    context = kafka_client_options(settings)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    security = faststream_security(settings)
    assert type(security) is BaseSecurity
    assert security.use_ssl
    assert parse_security(security)["security_protocol"] == "SSL"


def test_database_tls_settings_go_into_both_urls(tmp_path: Path) -> None:
    settings = Settings(
        database_url=SecretStr("postgresql://app:pw@db:5432/ledger?sslmode=disable&x=1"),
        database_sslmode="verify-full",
        database_ssl_root_cert=tmp_path / "ca.crt",
    )
    url = settings.database_url.get_secret_value()
    assert "sslmode=verify-full" in url
    assert "sslmode=disable" not in url
    assert "x=1" in url
    assert "sslrootcert=" in url
    assert "sslmode=verify-full" in settings.migration_database_url.get_secret_value()
    untouched = "postgresql://app:pw@db:5432/ledger"
    assert Settings(database_url=SecretStr(untouched)).database_url.get_secret_value() == untouched
