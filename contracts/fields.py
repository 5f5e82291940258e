"""Field types shared by the envelope, commands and results.

Each type validates the same way in pydantic and in the exported JSON Schema, so the published
schema tells an upstream team exactly what the workers accept. The hot types (UUIDs, timestamps,
currencies) are built from pydantic-core schemas rather than Python validators: every command
passes through them, and a Python call per field would cost a measurable share of the parse rate.
"""

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

import phonenumbers
from pydantic import AfterValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema


class NativeSchema:
    """Annotated metadata: validate with `schema` (pydantic-core), publish `json_schema`.

    `schema` takes the JSON form first (strings), then the Python object itself, so models can
    also be built in code from UUID and datetime values.
    """

    __slots__ = ("json_schema", "schema")

    def __init__(self, schema: CoreSchema, json_schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.json_schema = dict(json_schema)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return self.schema

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(self.json_schema)


UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# The 8-4-4-4-12 form is 36 characters. pydantic's UUID type alone also accepts the braced (38),
# URN (45) and bare (32) forms, which JSON Schema's `format: uuid` does not: the length keeps the
# two in step.
_UUID_TEXT_CHARS: Final = 36

Uuid = Annotated[
    UUID,
    NativeSchema(
        core_schema.custom_error_schema(
            core_schema.union_schema(
                [
                    core_schema.chain_schema(
                        [
                            core_schema.str_schema(
                                min_length=_UUID_TEXT_CHARS,
                                max_length=_UUID_TEXT_CHARS,
                                strict=True,
                            ),
                            core_schema.uuid_schema(),
                        ]
                    ),
                    core_schema.uuid_schema(strict=True),
                ],
                mode="left_to_right",
            ),
            custom_error_type="uuid_text",
            custom_error_message="Input should be a UUID in the 8-4-4-4-12 hexadecimal form",
        ),
        {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
    ),
]
"""A UUID written as 8-4-4-4-12 hexadecimal digits (either case; serialised in lower case)."""

# RFC 3339 date-time with a mandatory offset. pydantic's lax mode would also take a date alone,
# a space as separator or a Unix timestamp; CloudEvents `time` is RFC 3339.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)

Timestamp = Annotated[
    datetime,
    NativeSchema(
        core_schema.custom_error_schema(
            core_schema.union_schema(
                [
                    core_schema.chain_schema(
                        [
                            core_schema.str_schema(pattern=RFC3339_PATTERN, strict=True),
                            core_schema.datetime_schema(tz_constraint="aware"),
                        ]
                    ),
                    core_schema.datetime_schema(strict=True, tz_constraint="aware"),
                ],
                mode="left_to_right",
            ),
            custom_error_type="timestamp",
            custom_error_message=(
                "Input should be an RFC 3339 date-time with an offset, e.g. 2026-11-29T10:00:00Z"
            ),
        ),
        {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
    ),
]
"""An RFC 3339 timestamp with an offset (a timezone-aware datetime in Python)."""

# E.164: a plus sign and at most 15 digits, the first not zero.
E164_PATTERN: Final = r"^\+[1-9][0-9]{1,14}$"
_E164 = re.compile(E164_PATTERN)


def _e164(value: str) -> str:
    # The number itself is never echoed in the error: it is personal data, and errors travel in
    # `*.rejected` events to every consumer.
    if _E164.fullmatch(value) is None:
        raise ValueError("must be an E.164 phone number: '+' and up to 15 digits")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be a valid E.164 phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("must be a valid E.164 phone number")
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted


PhoneNumber = Annotated[
    str,
    AfterValidator(_e164),
    WithJsonSchema({"type": "string", "pattern": E164_PATTERN}),
]
"""An E.164 phone number that `phonenumbers` considers valid, normalised to E.164.

The JSON Schema can only check the form; whether the number exists in its country's numbering
plan is checked by pydantic alone.
"""
