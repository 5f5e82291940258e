"""Properties: round trips, and parse_command never raising whatever it is given."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from contracts_strategies import (
    COMMANDS,
    COMPLETED,
    OTHER_RESULTS,
    REJECTED,
    aware_times,
    event_ids,
    flows_with_commands,
    flows_with_results,
    json_values,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledgerflow.contracts.codec import decode_result, encode_command, encode_event
from ledgerflow.contracts.parsing import (
    ErrorClass,
    InvalidCommand,
    ParseResult,
    Unattributable,
    ValidCommand,
    _parse_carefully,
    content_hash,
    parse_command,
)
from ledgerflow.contracts.topics import FLOWS, TRANSFER, Flow, flow_by_name

if TYPE_CHECKING:
    from pydantic import BaseModel

ENVELOPE_ATTRIBUTES = {
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "causationid",
    "correlationid",
    "data",
}


def assert_one_of_three(result: ParseResult) -> None:
    assert isinstance(result, ValidCommand | InvalidCommand | Unattributable)
    if isinstance(result, Unattributable):
        # The safety net in parse_command is for bugs: no input may reach it.
        assert result.error_class != ErrorClass.INTERNAL, result.error
    if isinstance(result, InvalidCommand):
        assert result.errors
        result.rejection()  # always buildable, and the detail is bounded


@given(flows_with_commands(), event_ids, st.none() | aware_times, st.none() | event_ids)
def test_command_round_trips(
    flow_and_command: tuple[Flow, BaseModel], event_id: str, time: Any, correlation: str | None
) -> None:
    flow, command = flow_and_command
    record = encode_command(flow, command, event_id=event_id, time=time, correlation_id=correlation)
    result = parse_command(flow, record.value)
    assert isinstance(result, ValidCommand), result
    assert result.data == command
    assert result.idempotency_key == str(getattr(command, flow.id_field))
    assert result.message_key == str(getattr(command, flow.key_field))
    assert record.key == result.message_key.encode()
    assert result.meta.event_id == event_id
    assert result.meta.correlation_id == (correlation or event_id)
    assert result.content_hash == content_hash(command)
    # The careful decoder, used for escapes and duplicates, reaches the same result.
    assert _parse_carefully(flow, record.value) == result


@given(st.sampled_from(FLOWS).flatmap(lambda f: st.tuples(st.just(f), COMPLETED[f.name])))
def test_completed_round_trips(flow_and_event: tuple[Flow, BaseModel]) -> None:
    flow, event = flow_and_event
    value = encode_event(
        flow.completed_topic,
        event,
        event_id="r",
        source="/ledgerflow/ledger",
        causation_id="c",
        correlation_id="k",
        time=_now(),
    )
    assert decode_result(flow, value).data == event


@given(st.sampled_from(FLOWS).flatmap(lambda f: st.tuples(st.just(f), REJECTED[f.name])))
def test_rejected_round_trips(flow_and_event: tuple[Flow, BaseModel]) -> None:
    flow, event = flow_and_event
    value = encode_event(
        flow.rejected_topic,
        event,
        event_id="r",
        source="/ledgerflow/ledger",
        causation_id=None,
        correlation_id=None,
        time=_now(),
    )
    assert decode_result(flow, value).data == event


@given(flows_with_results())
def test_every_result_round_trips(flow_topic_event: tuple[Flow, str, BaseModel]) -> None:
    """Each result topic of each flow, the lifecycle's held, voided and reversed included."""
    flow, topic, event = flow_topic_event
    value = encode_event(
        topic,
        event,
        event_id="r",
        source="/ledgerflow/ledger",
        causation_id="c",
        correlation_id="k",
        time=_now(),
    )
    envelope = decode_result(flow, value)
    assert envelope.type == topic
    assert type(envelope.data) is flow.model_of(topic)
    assert envelope.data == event


def test_every_flow_and_result_has_a_strategy() -> None:
    assert set(COMMANDS) == set(COMPLETED) == set(REJECTED) == set(OTHER_RESULTS)
    assert set(COMMANDS) == {flow.name for flow in FLOWS}
    for flow in FLOWS:
        assert set(OTHER_RESULTS[flow.name]) == {topic for topic, _ in flow.other_results}


def _now() -> datetime:
    return datetime(2026, 11, 29, tzinfo=UTC)


@settings(max_examples=300)
@given(st.sampled_from(FLOWS), st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(flow: Flow, value: bytes) -> None:
    assert_one_of_three(parse_command(flow, value))


@settings(max_examples=300)
@given(st.sampled_from(FLOWS), json_values, st.booleans())
def test_arbitrary_json_never_raises(flow: Flow, document: Any, allow_nan: bool) -> None:
    value = json.dumps(document, allow_nan=allow_nan).encode()
    assert_one_of_three(parse_command(flow, value))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(flows_with_commands(), st.data())
def test_corrupted_fields_keep_the_command_attributable(
    flow_and_command: tuple[Flow, BaseModel], data: st.DataObject
) -> None:
    """Whatever replaces other fields, a readable id is always answered, never dead-lettered."""
    flow, command = flow_and_command
    document = orjson.loads(encode_command(flow, command).value)
    target = data.draw(st.sampled_from(["envelope", "data"]))
    obj = document if target == "envelope" else document["data"]
    key = data.draw(st.sampled_from(sorted(obj)) | st.text(max_size=8))
    assume(key not in {"data", flow.id_field})
    obj[key] = data.draw(json_values)
    result = parse_command(flow, json.dumps(document).encode())
    assert_one_of_three(result)
    assert isinstance(result, ValidCommand | InvalidCommand)
    assert result.idempotency_key == str(getattr(command, flow.id_field))


@given(flows_with_commands(), st.text(min_size=1, max_size=20), json_values, json_values)
def test_unknown_attributes_are_ignored(
    flow_and_command: tuple[Flow, BaseModel], name: str, outer: Any, inner: Any
) -> None:
    flow, command = flow_and_command
    record = encode_command(flow, command)
    document = orjson.loads(record.value)
    assume(name not in ENVELOPE_ATTRIBUTES)
    assume(name not in type(command).model_fields)
    document[name] = outer
    document["data"][name] = inner
    del document["time"]
    result = parse_command(flow, json.dumps(document, indent=1).encode())
    assert isinstance(result, ValidCommand), result
    assert result.data == command
    assert result.meta.time is None
    assert result.content_hash == content_hash(command)


@given(
    st.sampled_from(FLOWS), st.lists(st.sampled_from([b"{", b"[", b'"a":', b"1", b",", b"]", b"}"]))
)
def test_json_fragments_never_raise(flow: Flow, parts: list[bytes]) -> None:
    assert_one_of_three(parse_command(flow, b"".join(parts)))


@given(st.integers(min_value=2, max_value=30))
def test_duplicate_keys_never_validate(copies: int) -> None:
    value = encode_command(TRANSFER, _a_transfer()).value
    doubled = value.replace(b'"currency":"EUR"', b",".join([b'"currency":"EUR"'] * copies))
    assert not isinstance(parse_command(TRANSFER, doubled), ValidCommand)


def _a_transfer() -> BaseModel:
    return flow_by_name("transfer").command_model.model_validate(
        {
            "transfer_id": str(uuid.uuid4()),
            "from_account_id": str(uuid.uuid4()),
            "to_account_id": str(uuid.uuid4()),
            "amount": 1,
            "currency": "EUR",
        }
    )
