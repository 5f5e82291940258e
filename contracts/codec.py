"""Producer helpers: commands for the upstream API layer, result events for the ledger.

The output is plain bytes and headers, ready for any Kafka client; nothing here does I/O.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID, uuid4

import orjson
from pydantic import BaseModel

from ledgerflow.contracts.envelope import (
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    SPECVERSION,
    Envelope,
    typed_envelope,
)
from ledgerflow.contracts.topics import Flow

CONTENT_TYPE_HEADER: Final = "content-type"
TRACEPARENT_HEADER: Final = "traceparent"
AUTHORIZATION_HEADER: Final = "authorization"
DEFAULT_SOURCE: Final = "/ledgerflow/client"

# OPT_UTC_Z writes UTC as "Z"; naive datetimes are refused before encoding (no guessing zones).
_DUMPS_OPTIONS: Final = orjson.OPT_UTC_Z


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One message ready to send: topic, key, value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def encode_command(
    flow: Flow,
    data: BaseModel,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    correlation_id: str | None = None,
    time: datetime | None = None,
    traceparent: str | None = None,
    authorization: str | None = None,
    topic_prefix: str = "",
) -> KafkaRecord:
    """A command of `flow` as a Kafka record: CloudEvents JSON keyed by the flow's key field.

    `event_id` defaults to a new UUID4, `time` to now (UTC). `authorization` is the whole header
    value ("Bearer <JWT>").
    """
    if not isinstance(data, flow.command_model):
        raise TypeError(
            f"{flow.command_topic} carries {flow.command_model.__name__}, not {type(data).__name__}"
        )
    value = _envelope_bytes(
        flow.command_topic,
        data,
        event_id=event_id or str(uuid4()),
        source=source,
        causation_id=None,
        correlation_id=correlation_id,
        time=time or datetime.now(UTC),
    )
    headers = [(CONTENT_TYPE_HEADER, CONTENT_TYPE.encode())]
    if traceparent is not None:
        headers.append((TRACEPARENT_HEADER, traceparent.encode()))
    if authorization is not None:
        headers.append((AUTHORIZATION_HEADER, authorization.encode()))
    return KafkaRecord(
        topic=f"{topic_prefix}{flow.command_topic}",
        key=str(getattr(data, flow.key_field)).encode(),
        value=value,
        headers=tuple(headers),
    )


def encode_event(
    event_type: str,
    data: BaseModel | Mapping[str, Any],
    *,
    event_id: str,
    source: str,
    causation_id: str | None,
    correlation_id: str | None,
    time: datetime,
) -> bytes:
    """The CloudEvents JSON value of a result event (or any message) of type `event_type`.

    `data` is a model, or its fields already as the model would dump them (the ledger's hot
    path: no model to build and dump again per result); a mapping's values are what orjson
    writes as pydantic does (str, int, UUID, str enums, aware datetimes) and none is None.
    """
    return _envelope_bytes(
        event_type,
        data,
        event_id=event_id,
        source=source,
        causation_id=causation_id,
        correlation_id=correlation_id,
        time=time,
    )


def _envelope_bytes(
    event_type: str,
    data: BaseModel | Mapping[str, Any],
    *,
    event_id: str,
    source: str,
    causation_id: str | None,
    correlation_id: str | None,
    time: datetime,
) -> bytes:
    if time.tzinfo is None or time.utcoffset() is None:
        raise ValueError("time must be timezone-aware")
    envelope: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": source,
        "type": event_type,
        "time": time,
        "datacontenttype": DATA_CONTENT_TYPE,
    }
    # CloudEvents attributes are absent rather than null.
    if causation_id is not None:
        envelope["causationid"] = causation_id
    if correlation_id is not None:
        envelope["correlationid"] = correlation_id
    # Absent optionals are omitted, as in the content hash; amounts are ints, never floats.
    envelope["data"] = (
        data.model_dump(mode="json", exclude_none=True) if isinstance(data, BaseModel) else data
    )
    return orjson.dumps(envelope, default=_uuid_subclass, option=_DUMPS_OPTIONS)


def _uuid_subclass(value: object) -> str:
    """orjson writes uuid.UUID itself, not its subclasses: asyncpg's UUID, as rows carry it."""
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def decode_event(value: bytes) -> Envelope[dict[str, Any]]:
    """Any message value as an envelope with untyped `data`; raises ValueError when invalid."""
    return Envelope[dict[str, Any]].model_validate(orjson.loads(value))


def decode_result(flow: Flow, value: bytes) -> Envelope[Any]:
    """A result event of `flow` as an envelope whose `data` is the typed model of its type
    (check with isinstance, or `envelope.type`); raises ValueError when it is not a result.
    """
    root = orjson.loads(value)
    message_type = root.get("type") if isinstance(root, dict) else None
    if message_type not in flow.result_topics:
        raise ValueError(
            f"not a result of {flow.name}: type {message_type!r}, expected one of "
            f"{', '.join(flow.result_topics)}"
        )
    model = typed_envelope(message_type, flow.model_of(message_type))
    return model.model_validate(root)
