"""The committed JSON Schemas and AsyncAPI document are current, and well formed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from ledgerflow.cli.contracts_cmd import contracts_app, rendered, stale_files
from ledgerflow.contracts import schema_export
from ledgerflow.contracts.events import TransferCompleted
from ledgerflow.contracts.schema_export import (
    asyncapi_document,
    message_schema,
    render_asyncapi,
    to_yaml,
)
from ledgerflow.contracts.topics import (
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    FLOWS,
    MESSAGE_TYPES,
    TRANSFER,
    Flow,
    all_topics,
)

PACKAGE = Path(__file__).resolve().parents[3] / "contracts"


def test_committed_files_are_current() -> None:
    stale = stale_files(PACKAGE)
    assert stale == [], f"run `ledgerflow contracts export` and commit: {stale}"


def test_one_schema_per_message_type_and_one_asyncapi_document() -> None:
    files = rendered()
    schemas = sorted(p for p in files if p.startswith("schemas/"))
    assert schemas == sorted(f"schemas/{t}.v1.json" for t in MESSAGE_TYPES)
    # v1's 12, §5.1's held, voided, settled, returned, reversed and §5.2's payment and refund
    # command, completed and rejected.
    assert len(schemas) == 23
    assert "asyncapi.yaml" in files
    assert set(files) == {*schemas, "asyncapi.yaml", "openapi.json"}


def test_schemas_are_valid_json_schema() -> None:
    for message_type in MESSAGE_TYPES:
        schema = message_schema(message_type)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["type"]["const"] == message_type
        assert "data" in schema["required"]


def test_asyncapi_yaml_round_trips_and_covers_every_channel() -> None:
    document = asyncapi_document()
    assert yaml.safe_load(render_asyncapi()) == document
    assert document["asyncapi"] == "3.0.0"
    assert sorted(document["channels"]) == sorted(all_topics())
    for channel_id, channel in document["channels"].items():
        assert channel["address"] == channel_id
    operations = document["operations"]
    receives = {op["channel"]["$ref"] for op in operations.values() if op["action"] == "receive"}
    assert receives == {f"#/channels/{flow.command_topic}" for flow in FLOWS}
    for operation in operations.values():
        for message in operation["messages"]:
            _, _, channel, _, message_id = message["$ref"].split("/")
            assert message_id in document["channels"][channel]["messages"]
    for message in document["components"]["messages"].values():
        payload = message["payload"].get("$ref")
        if payload:
            assert (PACKAGE / payload).is_file()


def test_asyncapi_has_one_channel_operation_and_message_per_topic() -> None:
    document = asyncapi_document()
    channels, operations = document["channels"], document["operations"]
    messages = document["components"]["messages"]
    assert len(channels) == len(operations) == len(messages) == len(all_topics()) == 31
    by_channel = {
        op["channel"]["$ref"].removeprefix("#/channels/"): op for op in operations.values()
    }
    assert set(by_channel) == set(channels)  # exactly one operation per channel
    commands = {f.command_topic for f in FLOWS}
    for topic, operation in by_channel.items():
        assert operation["action"] == ("receive" if topic in commands else "send"), topic
        ((message_id, ref),) = channels[topic]["messages"].items()
        assert ref == {"$ref": f"#/components/messages/{message_id}"}
        assert messages[message_id]["name"] == topic
    # The operation ids name their topic: shared results are published once.
    assert "sendCashoutCompleted" in operations
    assert "receiveCashoutSettled" in operations
    assert "receiveCashoutReturned" in operations
    assert "sendCashoutReversedDlq" not in operations
    for operation in (
        "receivePaymentInitiated",
        "sendPaymentCompleted",
        "sendPaymentRejected",
        "sendPaymentInitiatedDlq",
        "receiveRefundRequested",
        "sendRefundCompleted",
        "sendRefundRejected",
        "sendRefundRequestedDlq",
    ):
        assert operation in operations


def test_asyncapi_shared_result_channels_name_every_command() -> None:
    channels = asyncapi_document()["channels"]
    expected = {
        "cashout.completed": "Results of cashout.approved and cashout.settled",
        "cashout.rejected": "Results of cashout.approved, cashout.settled and cashout.returned",
        "cashout.voided": "Results of cashout.approved and cashout.returned",
        "cashout.held": "Results of cashout.approved,",
        "cashout.reversed": "Results of cashout.returned,",
        "transfer.completed": "Results of transfer.initiated,",
        "payment.completed": "Results of payment.initiated,",
        "payment.rejected": "Results of payment.initiated,",
        "refund.completed": "Results of refund.requested,",
        "refund.rejected": "Results of refund.requested,",
    }
    for topic, start in expected.items():
        assert channels[topic]["description"].startswith(start), channels[topic]["description"]
    # The cash-out phases share cashout_id: each command type keeps its own idempotency records.
    for topic in ("cashout.approved", "cashout.settled", "cashout.returned"):
        assert "Idempotency key: (type, data.cashout_id)" in channels[topic]["description"]
    assert "Idempotency key: data.transfer_id;" in channels["transfer.initiated"]["description"]
    # A refund names its payment's payment_id, but only its own refund_id is its key.
    assert "Idempotency key: data.payment_id;" in channels["payment.initiated"]["description"]
    assert "Idempotency key: data.refund_id;" in channels["refund.requested"]["description"]
    assert "Kafka key: data.merchant_account_id." in channels["refund.requested"]["description"]


def test_asyncapi_keys_of_the_lifecycle_messages() -> None:
    messages = asyncapi_document()["components"]["messages"]
    for topic in (
        "cashout.settled",
        "cashout.returned",
        "cashout.held",
        "cashout.voided",
        "cashout.reversed",
        "cashout.completed",
        "cashout.rejected",
    ):
        message = next(m for m in messages.values() if m["name"] == topic)
        key = message["bindings"]["kafka"]["key"]
        assert key["description"] == "data.wallet_account_id of the command", topic
        assert message["payload"] == {"$ref": f"./schemas/{topic}.v1.json"}
    command_headers = next(m for m in messages.values() if m["name"] == "cashout.settled")
    assert "authorization" in command_headers["headers"]["properties"]


def test_asyncapi_keys_of_the_merchant_messages() -> None:
    messages = asyncapi_document()["components"]["messages"]
    for topics, key in (
        (("payment.initiated", "payment.completed", "payment.rejected"), "from_account_id"),
        (("refund.requested", "refund.completed", "refund.rejected"), "merchant_account_id"),
    ):
        for topic in topics:
            message = next(m for m in messages.values() if m["name"] == topic)
            assert message["bindings"]["kafka"]["key"]["description"] == (
                f"data.{key} of the command"
            ), topic
            assert message["payload"] == {"$ref": f"./schemas/{topic}.v1.json"}
            # Only a command carries the end user's token.
            has_token = "authorization" in message["headers"]["properties"]
            assert has_token is topic.endswith((".initiated", ".requested")), topic


def test_onboarding_kind_is_optional_in_both_schemas() -> None:
    for message_type in ("onboarding.requested", "onboarding.completed"):
        schema = message_schema(message_type)
        data = schema["$defs"][schema["properties"]["data"]["$ref"].rsplit("/", 1)[-1]]
        assert "kind" in data["properties"]
        assert "kind" not in data["required"]  # a v1 message without it stays valid
        assert schema["$defs"]["CustomerKind"]["enum"] == ["consumer", "merchant"]


def test_asyncapi_refuses_a_registry_it_cannot_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conflict is an error, never a channel silently overwritten by the last flow."""
    wrong_model = dataclasses.replace(CASHOUT_SETTLE, completed_model=TransferCompleted)
    monkeypatch.setattr(schema_export, "FLOWS", _replaced(CASHOUT_SETTLE, wrong_model))
    with pytest.raises(ValueError, match=r"share cashout\.completed with different"):
        asyncapi_document()
    wrong_key = dataclasses.replace(CASHOUT_RETURN, key_field="cashout_id")
    monkeypatch.setattr(schema_export, "FLOWS", _replaced(CASHOUT_RETURN, wrong_key))
    with pytest.raises(ValueError, match=r"share cashout\.rejected with different"):
        asyncapi_document()
    twice = dataclasses.replace(TRANSFER, name="transfer_again")
    monkeypatch.setattr(schema_export, "FLOWS", (*FLOWS, twice))
    with pytest.raises(ValueError, match="duplicate AsyncAPI id"):
        asyncapi_document()


def _replaced(old: Flow, new: Flow) -> tuple[Flow, ...]:
    """The registry with one flow swapped for another, in its place."""
    assert old in FLOWS
    return tuple(new if flow is old else flow for flow in FLOWS)


def test_yaml_emitter_quotes_what_yaml_would_misread() -> None:
    tricky = {
        "plain": "application/cloudevents+json",
        "number-like": "3.0.0",
        "bool-like": "yes",
        "null-like": "null",
        "comment": "#/components/x",
        "colon": "a: b",
        "unicode": "café ✓",
        "quote": 'say "hi"\n',
        "empty": "",
        "ints": [1, -2, 0],
        "flags": [True, False, None],
        "nested": [{"a": {"b": []}, "c": {}}, ["x", ["y"]]],
    }
    assert yaml.safe_load(to_yaml(tricky)) == tricky


def test_export_command_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(contracts_app, ["export", "--out-dir", str(tmp_path), "--check"])
    assert result.exit_code == 1
    result = runner.invoke(contracts_app, ["export", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "schemas/transfer.initiated.v1.json").is_file()
    assert (tmp_path / "asyncapi.yaml").is_file()
    result = runner.invoke(contracts_app, ["export", "--out-dir", str(tmp_path), "--check"])
    assert result.exit_code == 0, result.output
    assert stale_files(tmp_path) == []
