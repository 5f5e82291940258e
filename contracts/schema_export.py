"""The published contract, rendered from the models and the registry (no I/O here).

`ledgerflow contracts export` writes what `render_all()` returns under contracts/; a test renders
it again and fails when the committed files are stale.
"""

import json
import re
from typing import Any, Final

from pydantic import BaseModel

from ledgerflow.contracts.envelope import CONTENT_TYPE, typed_envelope
from ledgerflow.contracts.parsing import MAX_BYTES_DEFAULT, ErrorClass
from ledgerflow.contracts.topics import FLOWS, MESSAGE_TYPES, Flow, message_model

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION: Final = "3.0.0"
# 1.1: the cash-out lifecycle of DESIGN.md §5.1, additive (new types, optional fields).
# 1.2: merchants, payments with a fee split and refunds (DESIGN.md §5.2), additive as well.
CONTRACT_VERSION: Final = "1.2.0"
KAFKA_BINDING_VERSION: Final = "0.5.0"
SCHEMAS_DIR: Final = "schemas"
ASYNCAPI_FILE: Final = "asyncapi.yaml"

# W3C trace context, version 00: version-traceid-parentid-flags.
TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def schema_path(message_type: str) -> str:
    """Path of a message type's JSON Schema, relative to the contracts package."""
    return f"{SCHEMAS_DIR}/{message_type}.v1.json"


def message_schema(message_type: str) -> dict[str, Any]:
    """JSON Schema (2020-12) of a whole message of `message_type`: the envelope with its data."""
    model = typed_envelope(message_type, message_model(message_type))
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"urn:ledgerflow:contracts:{message_type}:v1",
    } | schema


def render_schemas() -> dict[str, str]:
    """Path -> text of the JSON Schemas, one per message type."""
    return {schema_path(t): _json_text(message_schema(t)) for t in MESSAGE_TYPES}


def render_asyncapi() -> str:
    """The AsyncAPI 3 document of every channel, as YAML."""
    return to_yaml(asyncapi_document())


def render_all() -> dict[str, str]:
    """Path (relative to the contracts package) -> text of every generated file."""
    return {**render_schemas(), ASYNCAPI_FILE: render_asyncapi()}


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _camel(*parts: str) -> str:
    words = [w for part in parts for w in re.split(r"[._-]", part) if w]
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _flows_by_result() -> dict[str, tuple[Flow, ...]]:
    """Result topic -> the flows that publish to it, in registry order.

    A result topic may be shared (`cashout.completed` answers both `cashout.approved` and
    `cashout.settled`): it is one channel, so its flows must agree on its model and its key.
    """
    found: dict[str, list[Flow]] = {}
    for flow in FLOWS:
        for topic in flow.result_topics:
            found.setdefault(topic, []).append(flow)
    for topic, flows in found.items():
        models = {flow.model_of(topic) for flow in flows}
        keys = {flow.key_field for flow in flows}
        if len(models) > 1 or len(keys) > 1:
            names = ", ".join(flow.name for flow in flows)
            raise ValueError(f"flows {names} share {topic} with different models or keys")
    return {topic: tuple(flows) for topic, flows in found.items()}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3 document as a dict, generated from the registry.

    Every topic is one channel, with one operation and one message, however many flows use it.
    """
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    parts = {"channels": channels, "operations": operations, "messages": messages}
    by_result = _flows_by_result()
    for flow in FLOWS:
        _add_message_channel((flow,), flow.command_topic, "receive", **parts)
        for result in flow.result_topics:
            if result not in channels:  # a shared result topic, added with its first flow
                _add_message_channel(by_result[result], result, "send", **parts)
        _add_dead_letter_channel(flow, **parts)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Ledgerflow wire contract",
            "version": CONTRACT_VERSION,
            "description": (
                "Commands from the wallet's API layer to the ledger and the ledger's result "
                "events. Every message value is a CloudEvents 1.0 event in structured JSON mode "
                "whose `type` is the unprefixed topic name; a deployment may prefix the topic "
                "names. Operations are described from the ledger's side. A command's id field "
                "is its idempotency key; see docs/contracts.md."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "correlationIds": {
                "correlationid": {
                    "description": "Copied from the command, or the command's `id`.",
                    "location": "$message.payload#/correlationid",
                }
            },
        },
    }


def _headers_schema(*, command: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "content-type": {"type": "string", "const": CONTENT_TYPE},
        "traceparent": {
            "type": "string",
            "pattern": TRACEPARENT_PATTERN,
            "description": "W3C trace context; a result event continues the command's trace.",
        },
    }
    if command:
        properties["authorization"] = {
            "type": "string",
            "pattern": "^Bearer .+$",
            "description": "Bearer <JWT>: the end user's identity from the identity provider.",
        }
    return {"type": "object", "properties": properties, "required": ["content-type"]}


def _put(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Add a channel, operation or message; two of one id would be a wrong document."""
    if key in mapping:
        raise ValueError(f"duplicate AsyncAPI id {key!r}")
    mapping[key] = value


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _add_message_channel(
    flows: tuple[Flow, ...],
    topic: str,
    action: str,
    *,
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
) -> None:
    """The channel of a command topic (one flow) or of a result topic (every flow using it)."""
    flow = flows[0]
    model = flow.model_of(topic)
    message_id = _camel(topic)
    command = topic == flow.command_topic
    _put(
        messages,
        message_id,
        {
            "name": topic,
            "title": topic,
            "summary": _doc(model),
            "contentType": CONTENT_TYPE,
            "headers": _headers_schema(command=command),
            "payload": {"$ref": f"./{schema_path(topic)}"},
            "correlationId": {"$ref": "#/components/correlationIds/correlationid"},
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "format": "uuid",
                        "description": f"data.{flow.key_field} of the command",
                    },
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        },
    )
    if command:
        # Command types that share an id field (the cash-out phases share cashout_id) each keep
        # their own records: the key is the pair.
        shared_id = any(f.id_field == flow.id_field for f in FLOWS if f is not flow)
        key = f"(type, data.{flow.id_field})" if shared_id else f"data.{flow.id_field}"
        description = (
            f"Commands of the {flow.name} flow. Idempotency key: {key}; "
            f"Kafka key: data.{flow.key_field}. Values over the size limit "
            f"({MAX_BYTES_DEFAULT // 1024} KiB by default) and values that name no command go "
            f"to {flow.dlq_topic}."
        )
    else:
        description = (
            f"Results of {_and([f.command_topic for f in flows])}, keyed like the command."
        )
    _put(
        channels,
        topic,
        {
            "address": topic,
            "description": description,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        },
    )
    _put(
        operations,
        _camel("receive" if command else "send", topic),
        {
            "action": action,
            "channel": {"$ref": f"#/channels/{topic}"},
            "summary": ("The ledger consumes " if command else "The ledger publishes ") + topic,
            "messages": [{"$ref": f"#/channels/{topic}/messages/{message_id}"}],
        },
    )


def _add_dead_letter_channel(
    flow: Flow,
    *,
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
) -> None:
    topic = flow.dlq_topic
    message_id = _camel(topic)
    known = ", ".join(c.value for c in ErrorClass)
    _put(
        messages,
        message_id,
        {
            "name": topic,
            "title": topic,
            "summary": (
                f"A {flow.command_topic} message that names no command, copied unchanged "
                "(key, value and headers) with the reason in headers."
            ),
            "headers": {
                "type": "object",
                "properties": {
                    "x-error": {"type": "string", "description": "Human-readable reason."},
                    "x-error-class": {"type": "string", "description": f"One of: {known}."},
                    "x-original-topic": {"type": "string"},
                    "x-original-partition": {"type": "string", "pattern": "^[0-9]+$"},
                    "x-original-offset": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "required": [
                    "x-error",
                    "x-error-class",
                    "x-original-topic",
                    "x-original-partition",
                    "x-original-offset",
                ],
            },
            "payload": {"description": "The original value, any bytes."},
        },
    )
    _put(
        channels,
        topic,
        {
            "address": topic,
            "description": f"Dead letters of {flow.command_topic}.",
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        },
    )
    _put(
        operations,
        _camel("send", topic),
        {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic}"},
            "summary": f"The ledger dead-letters unattributable {flow.command_topic} messages",
            "messages": [{"$ref": f"#/channels/{topic}/messages/{message_id}"}],
        },
    )


# --- A small YAML emitter: block style, strings quoted JSON-style unless plainly safe. ---
# The runtime has no YAML library (PyYAML is a dev dependency only); JSON's double-quoted
# strings are valid YAML double-quoted scalars, so this subset round-trips exactly (tested).

_PLAIN = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$/+-]*$")
_RESERVED = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _is_collection(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _empty(value: Any) -> str | None:
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, list) and not value:
        return "[]"
    return None


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if _is_collection(item):
                lines.append(head)
                lines.extend(_yaml_lines(item, indent + 2))
            else:
                lines.append(f"{head} {_empty(item) or _scalar(item)}")
    else:
        for item in value:
            if _is_collection(item):
                nested = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_empty(item) or _scalar(item)}")
    return lines


def to_yaml(document: dict[str, Any]) -> str:
    """`document` (dicts, lists, str, int, bool, None) as block-style YAML."""
    return "\n".join(_yaml_lines(document, 0)) + "\n"
