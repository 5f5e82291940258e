"""Field types shared by the envelope, commands and results.

Each type validates the same way in pydantic and in the exported JSON Schema, so the published
schema tells an upstream team exactly what the workers accept.
"""

import re
from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

import phonenumbers
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, WithJsonSchema

UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# The 8-4-4-4-12 form is 36 characters; pydantic also accepts the braced (38), URN (45) and bare
# (32) forms, which JSON Schema's `format: uuid` does not: the length check keeps them in step.
_UUID_TEXT_CHARS: Final = 36


def _uuid_text(value: Any) -> Any:
    if isinstance(value, str) and len(value) != _UUID_TEXT_CHARS:
        raise ValueError("must be a UUID in the 8-4-4-4-12 hexadecimal form")
    return value


Uuid = Annotated[
    UUID,
    BeforeValidator(_uuid_text),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
]
"""A UUID written as 8-4-4-4-12 hexadecimal digits (either case; serialised in lower case)."""

# RFC 3339 date-time with a mandatory offset. pydantic's lax mode would also take a date alone,
# a naive time or a Unix timestamp; CloudEvents `time` is RFC 3339.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _RFC3339.match(value) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-29T10:00:00Z")
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
"""An RFC 3339 timestamp with an offset."""

# E.164: a plus sign and at most 15 digits, the first not zero.
E164_PATTERN: Final = r"^\+[1-9][0-9]{1,14}$"
_E164 = re.compile(E164_PATTERN)


def _e164(value: str) -> str:
    # The number itself is never echoed in the error: it is personal data, and errors travel in
    # `*.rejected` events to every consumer.
    if _E164.match(value) is None:
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
"""An E.164 phone number that `phonenumbers` considers valid, normalised to E.164."""

