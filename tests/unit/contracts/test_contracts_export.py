"""The committed JSON Schemas and AsyncAPI document are current, and well formed."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml
from typer.testing import CliRunner

from ledgerflow.cli.contracts_cmd import contracts_app, stale_files
from ledgerflow.contracts.schema_export import (
    asyncapi_document,
    message_schema,
    render_all,
    render_asyncapi,
    to_yaml,
)
from ledgerflow.contracts.topics import FLOWS, MESSAGE_TYPES, all_topics

PACKAGE = Path(__file__).resolve().parents[3] / "contracts"


def test_committed_files_are_current() -> None:
    stale = stale_files(PACKAGE)
    assert stale == [], f"run `ledgerflow contracts export` and commit: {stale}"


def test_twelve_schemas_and_one_asyncapi_document() -> None:
    files = render_all()
    schemas = sorted(p for p in files if p.startswith("schemas/"))
    assert schemas == sorted(f"schemas/{t}.v1.json" for t in MESSAGE_TYPES)
    assert len(schemas) == 12
    assert "asyncapi.yaml" in files


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
