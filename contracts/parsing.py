"""Turn the bytes of a command message into exactly one of three outcomes, never an exception.

- ValidCommand: the envelope and the command are valid.
- InvalidCommand: the command's id field is readable but something is wrong; the client is
  answered with `*.rejected` / `invalid_command` listing the errors.
- Unattributable: no command can be named (too large, not UTF-8, not a JSON object, no readable
  id): the message goes to the dead-letter topic unchanged.

Decoding has a fast path (orjson, ~1 µs) and a careful one (the standard library with hooks).
orjson keeps the last of duplicate keys silently and refuses NaN, huge numbers and lone surrogate
escapes outright; the careful decoder runs whenever the fast one fails or cannot prove that the
document has no duplicate key, and reports each of those as an error of an attributable command.
"""

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from ledgerflow.contracts.envelope import ID_MAX_CHARS, SOURCE_MAX_CHARS, Envelope, typed_envelope
from ledgerflow.contracts.events import RejectReason
from ledgerflow.contracts.fields import Timestamp
from ledgerflow.contracts.topics import Flow

# DESIGN.md §1: a value larger than 64 KiB is not parsed; the bound is configurable per call.
MAX_BYTES_DEFAULT: Final = 64 * 1024
# An invalid command's answer lists at most this many errors of at most this many characters,
# so a hostile message cannot inflate its own rejection.
ERRORS_MAX: Final = 20
ERROR_MAX_CHARS: Final = 200
# The longest textual UUID form is the URN (45 characters); anything longer is no id.
_ID_TEXT_MAX_CHARS: Final = 64
# orjson decodes integers in [-2**63, 2**64) to int and larger ones to float; the careful
# decoder does the same (as a marker), so both paths give the same errors for the same input.
_INT_MIN: Final = -(2**63)
_INT_LIMIT: Final = 2**64
_INT_MAX_DIGITS: Final = 21


class ErrorClass(StrEnum):
    """Why a message is unattributable: the `x-error-class` header of its dead letter."""

    EMPTY = "empty_value"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    NO_ID = "no_id"
    AMBIGUOUS_ID = "ambiguous_id"
    INTERNAL = "internal_error"


@dataclass(frozen=True, slots=True)
class CommandMeta:
    """Envelope attributes the result event needs (best effort for an invalid command)."""

    event_id: str | None
    source: str | None
    correlation_id: str | None
    """The command's `correlationid`, else the command's `id`."""
    time: datetime | None


@dataclass(frozen=True, slots=True)
class ValidCommand:
    flow: Flow
    meta: CommandMeta
    data: BaseModel
    """An instance of `flow.command_model`."""
    idempotency_key: str
    """str() of the id field: the canonical lower-case UUID."""
    message_key: str
    """str() of the key field: the Kafka key of the command and of its results."""
    content_hash: bytes
    """sha256 of the canonical JSON of `data` (see `content_hash`)."""


@dataclass(frozen=True, slots=True)
class InvalidCommand:
    flow: Flow
    meta: CommandMeta
    idempotency_key: str
    """The readable id field, as a canonical lower-case UUID."""
    errors: tuple[str, ...]
    """Readable errors, e.g. "data.amount: Input should be a valid integer"."""
    message_key: str | None = None
    """The key field when it is a readable UUID, else None (use the Kafka record's key)."""

    def rejection(self) -> BaseModel:
        """The flow's `*.rejected` data: `invalid_command`, with the errors as detail."""
        return self.flow.rejected(
            self.idempotency_key, RejectReason.INVALID_COMMAND, "; ".join(self.errors)
        )


@dataclass(frozen=True, slots=True)
class Unattributable:
    error: str
    """Human-readable: the `x-error` header of the dead letter."""
    error_class: str
    """One of ErrorClass: the `x-error-class` header of the dead letter."""


ParseResult = ValidCommand | InvalidCommand | Unattributable


def content_hash(data: BaseModel) -> bytes:
    """sha256 of the canonical JSON of a command: sorted keys, compact, absent optionals omitted.

    Only validated, normalised field values count, so envelope attributes, unknown fields, key
    order and whitespace never change it. Fields that are None are left out: a field added later
    as optional (the only way v1 may change) leaves the hash of an old command as it was, so a
    retry across a deployment is still recognised as the same command.
    """
    # Equal to orjson.dumps(data.model_dump(mode="json", exclude_none=True), OPT_SORT_KEYS) for
    # the field types of commands (UUID, int, str, nested models), at half the cost; a test
    # holds the two equal.
    present = {name: value for name, value in data.__dict__.items() if value is not None}
    return _sha256(_dumps(present, default=_present_fields, option=_CANONICAL)).digest()


_CANONICAL: Final = orjson.OPT_SORT_KEYS
_sha256 = hashlib.sha256
_dumps = orjson.dumps


def _present_fields(model: Any) -> dict[str, Any]:
    if not isinstance(model, BaseModel):
        raise TypeError(f"{type(model).__name__} has no canonical JSON form")
    return {name: value for name, value in model.__dict__.items() if value is not None}


def parse_command(
    flow: Flow, value: bytes | None, *, max_bytes: int = MAX_BYTES_DEFAULT
) -> ParseResult:
    """Parse one message value of `flow`'s command topic. Never raises."""
    if value is None:
        return Unattributable("message has no value", ErrorClass.EMPTY)
    if len(value) > max_bytes:
        return Unattributable(
            f"message of {len(value)} bytes exceeds the limit of {max_bytes} bytes",
            ErrorClass.TOO_LARGE,
        )
    try:
        return _parse(flow, value)
    except Exception as exc:
        # Unreachable by design (tests feed arbitrary bytes and JSON): if a bug is hit anyway,
        # the message is kept in the dead-letter topic rather than blocking its partition.
        return Unattributable(f"parser failed: {type(exc).__name__}", ErrorClass.INTERNAL)


class _Marker:
    """Stands in for a value JSON cannot carry; every field type rejects it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_OUT_OF_RANGE: Final = _Marker("<integer out of range>")
_NOT_A_NUMBER: Final = _Marker("<not a JSON number>")


@dataclass(frozen=True, slots=True)
class _Decoded:
    tree: Any
    problems: tuple[str, ...] = ()
    duplicates: frozenset[str] = frozenset()


def _parse(flow: Flow, value: bytes) -> ParseResult:
    # Fast path, taken by nearly every message: orjson decodes, the colon count proves there is
    # no duplicate key, the model validates. Anything else takes the careful path from scratch.
    try:
        root = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _parse_carefully(flow, value)
    if type(root) is not dict or b"\\" in value or not _no_duplicate_keys(value, root):
        return _parse_carefully(flow, value)
    try:
        envelope: Envelope[Any] = _command_validator(flow.command_topic, flow.command_model)(root)
    except ValidationError:
        return _parse_carefully(flow, value)
    data: BaseModel = envelope.data
    raw = root["data"]
    event_id = envelope.id
    return _new_valid_command(
        flow,
        _new_command_meta(
            event_id, envelope.source, envelope.correlationid or event_id, envelope.time
        ),
        data=data,
        # A valid id is 8-4-4-4-12 hexadecimal text: in lower case it is its canonical str(UUID).
        idempotency_key=raw[flow.id_field].lower(),
        message_key=raw[flow.key_field].lower(),
        content_hash=content_hash(data),
    )


@functools.cache
def _command_validator(
    command_topic: str, command_model: type[BaseModel]
) -> Callable[[object], Any]:
    # The model's own validator, called directly: BaseModel.model_validate adds a Python layer
    # that cost about a tenth of the fast path. The result is the same model instance.
    validate: Callable[[object], Any] = typed_envelope(
        command_topic, command_model
    ).__pydantic_validator__.validate_python
    return validate


# A frozen dataclass's __init__ sets each field through object.__setattr__, three times the cost
# of filling the slots through their descriptors; on the hot path (two objects per message) that
# was a tenth of the parse time. The objects are the same either way (a test compares them).
_new_object = object.__new__
_set_meta_event_id = CommandMeta.__dict__["event_id"].__set__
_set_meta_source = CommandMeta.__dict__["source"].__set__
_set_meta_correlation_id = CommandMeta.__dict__["correlation_id"].__set__
_set_meta_time = CommandMeta.__dict__["time"].__set__
_set_flow = ValidCommand.__dict__["flow"].__set__
_set_meta = ValidCommand.__dict__["meta"].__set__
_set_data = ValidCommand.__dict__["data"].__set__
_set_idempotency_key = ValidCommand.__dict__["idempotency_key"].__set__
_set_message_key = ValidCommand.__dict__["message_key"].__set__
_set_content_hash = ValidCommand.__dict__["content_hash"].__set__


def _new_command_meta(
    event_id: str | None, source: str | None, correlation_id: str | None, time: datetime | None
) -> CommandMeta:
    meta: CommandMeta = _new_object(CommandMeta)
    _set_meta_event_id(meta, event_id)
    _set_meta_source(meta, source)
    _set_meta_correlation_id(meta, correlation_id)
    _set_meta_time(meta, time)
    return meta


def _new_valid_command(
    flow: Flow,
    meta: CommandMeta,
    *,
    data: BaseModel,
    idempotency_key: str,
    message_key: str,
    content_hash: bytes,
) -> ValidCommand:
    command: ValidCommand = _new_object(ValidCommand)
    _set_flow(command, flow)
    _set_meta(command, meta)
    _set_data(command, data)
    _set_idempotency_key(command, idempotency_key)
    _set_message_key(command, message_key)
    _set_content_hash(command, content_hash)
    return command


def _command_envelope(flow: Flow) -> type[Envelope[Any]]:
    return typed_envelope(flow.command_topic, flow.command_model)


def _parse_carefully(flow: Flow, value: bytes) -> ParseResult:
    decoded = _decode_carefully(value)
    if isinstance(decoded, Unattributable):
        return decoded
    root = decoded.tree
    if not isinstance(root, dict):
        return Unattributable("message is not a JSON object", ErrorClass.NOT_OBJECT)

    errors: list[str] = list(decoded.problems)
    try:
        envelope = _command_envelope(flow).model_validate(root)
    except ValidationError as exc:
        errors.extend(_readable(exc))
    if not errors:
        # Valid after all (it only needed the careful decoder, e.g. for an escaped string).
        return _valid(flow, envelope)

    if {"data", flow.id_field} & decoded.duplicates:
        return Unattributable(
            f"duplicate key makes data.{flow.id_field} ambiguous", ErrorClass.AMBIGUOUS_ID
        )
    data = root.get("data")
    idempotency_key = _read_uuid(data, flow.id_field)
    if idempotency_key is None:
        return Unattributable(
            f"no readable data.{flow.id_field} (a UUID) in the message", ErrorClass.NO_ID
        )
    return InvalidCommand(
        flow=flow,
        meta=_loose_meta(root),
        idempotency_key=idempotency_key,
        errors=_bounded(errors),
        message_key=_read_uuid(data, flow.key_field),
    )


def _valid(flow: Flow, envelope: Envelope[Any]) -> ValidCommand:
    data: BaseModel = envelope.data
    return ValidCommand(
        flow=flow,
        meta=CommandMeta(
            event_id=envelope.id,
            source=envelope.source,
            correlation_id=envelope.correlationid or envelope.id,
            time=envelope.time,
        ),
        data=data,
        idempotency_key=str(getattr(data, flow.id_field)),
        message_key=str(getattr(data, flow.key_field)),
        content_hash=content_hash(data),
    )


def _no_duplicate_keys(value: bytes, tree: Any) -> bool:
    """True when `tree` kept every key of `value`, proved by counting colons.

    Only for a `value` without backslashes. A colon is either structural (exactly one per key) or
    inside a string; without escapes a decoded string holds exactly the colons of its source (no
    UTF-8 continuation byte is 0x3A), and orjson writes colons in strings literally. So encoding
    `tree` again yields as many colons as `value` if and only if no key (with its value) was
    dropped as a duplicate.
    """
    try:
        encoded = orjson.dumps(tree)
    except orjson.JSONEncodeError:  # nesting deeper than orjson encodes: let the careful path see
        return False
    return encoded.count(b":") == value.count(b":")


def _decode_carefully(value: bytes) -> _Decoded | Unattributable:
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unattributable(
            f"message is not UTF-8: {exc.reason} at byte {exc.start}", ErrorClass.NOT_UTF8
        )

    problems: list[str] = []
    duplicates: set[str] = set()

    def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, item in pairs:
            if key in obj:
                duplicates.add(key)
            obj[key] = item  # the last one wins, as in orjson and pydantic
        return obj

    def constant(name: str) -> _Marker:
        problems.append(f"{name} is not valid JSON")
        return _NOT_A_NUMBER

    def integer(digits: str) -> int | _Marker:
        if len(digits) > _INT_MAX_DIGITS:  # never build a huge int (Python refuses > 4300 digits)
            return _OUT_OF_RANGE
        number = int(digits)
        return number if _INT_MIN <= number < _INT_LIMIT else _OUT_OF_RANGE

    try:
        tree = json.loads(
            text, object_pairs_hook=object_pairs, parse_constant=constant, parse_int=integer
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        return Unattributable(_cut(f"message is not JSON: {exc}"), ErrorClass.NOT_JSON)
    if _has_lone_surrogate(tree):
        problems.append("a string holds an unpaired surrogate escape (not valid Unicode)")
    problems.extend(f"duplicate key {key!r}" for key in sorted(duplicates))
    return _Decoded(tree, tuple(_cut(p) for p in problems), frozenset(duplicates))


def _has_lone_surrogate(tree: Any) -> bool:
    # Iterative: the tree may be nested as deep as the decoder allowed.
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


_UUID_ADAPTER: Final = TypeAdapter(UUID)
_TIME_ADAPTER: Final[TypeAdapter[datetime]] = TypeAdapter(Timestamp)


def _read_uuid(data: Any, field: str) -> str | None:
    """data[field] as a canonical UUID string when it is a UUID in any form pydantic reads."""
    if not isinstance(data, dict):
        return None
    raw = data.get(field)
    if not isinstance(raw, str) or len(raw) > _ID_TEXT_MAX_CHARS:
        return None
    try:
        return str(_UUID_ADAPTER.validate_python(raw))
    except ValidationError:
        return None


def _loose_meta(root: dict[str, Any]) -> CommandMeta:
    event_id = _text(root.get("id"), ID_MAX_CHARS)
    time: datetime | None
    try:
        time = _TIME_ADAPTER.validate_python(root.get("time"))
    except ValidationError:
        time = None
    return CommandMeta(
        event_id=event_id,
        source=_text(root.get("source"), SOURCE_MAX_CHARS),
        correlation_id=_text(root.get("correlationid"), ID_MAX_CHARS) or event_id,
        time=time,
    )


def _text(value: Any, max_chars: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= max_chars and not _has_lone_surrogate(value):
        return value
    return None


def _readable(exc: ValidationError) -> list[str]:
    readable = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"])
        readable.append(_cut(f"{location}: {error['msg']}" if location else error["msg"]))
    return readable


def _bounded(errors: list[str]) -> tuple[str, ...]:
    if len(errors) <= ERRORS_MAX:
        return tuple(errors)
    return (*errors[: ERRORS_MAX - 1], f"... and {len(errors) - ERRORS_MAX + 1} more errors")


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."
