"""What `LedgerflowContainer` hands the image, checked without Docker."""

from __future__ import annotations

from ledgerflow.testkit.containers import LedgerflowContainer


def test_the_image_is_pointed_at_the_network_services_with_the_documented_roles() -> None:
    env = LedgerflowContainer("ledgerflow:test", topic_prefix="it.")._environment()
    assert env["LEDGERFLOW_DATABASE_URL"].startswith("postgresql://ledgerflow_app:")
    assert env["LEDGERFLOW_DATABASE_URL"].endswith("@postgres:5432/ledgerflow")
    assert env["LEDGERFLOW_MIGRATION_DATABASE_URL"].startswith("postgresql://ledgerflow_owner:")
    assert env["LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert env["LEDGERFLOW_TOPIC_PREFIX"] == "it."
    assert env["LEDGERFLOW_AUTH_MODE"] == "off"


def test_settings_of_the_caller_win() -> None:
    container = LedgerflowContainer(settings={"LEDGERFLOW_AUTH_MODE": "required"})
    assert container._environment()["LEDGERFLOW_AUTH_MODE"] == "required"
