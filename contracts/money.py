"""Money on the wire: integer minor units and ISO 4217 currency codes, never floats.

Amounts are strict integers: pydantic's lax mode would turn `"100"`, `100.0` or `true` into 100,
and an amount must mean exactly what the client typed.
"""

from importlib.resources import files
from typing import Annotated, Final

from pydantic import Field, Strict
from pydantic_core import core_schema

from ledgerflow.contracts.fields import NativeSchema

# 10^15 minor units is 10 trillion in a two-decimal currency: far above any wallet's limit, and
# small enough that a sum of a few thousand such amounts still fits a PostgreSQL BIGINT.
MAX_AMOUNT: Final = 10**15
# A balance is stored in a PostgreSQL BIGINT.
MAX_BALANCE: Final = 2**63 - 1

Amount = Annotated[int, Strict(), Field(ge=1, le=MAX_AMOUNT)]
"""A positive amount in minor units (cents): `1 <= amount <= 10**15`."""

Fee = Annotated[int, Strict(), Field(ge=0, le=MAX_AMOUNT)]
"""A fee in minor units, zero allowed."""

Balance = Annotated[int, Strict(), Field(ge=0, le=MAX_BALANCE)]
"""A wallet balance in minor units after a command: never negative."""


def _load_currencies() -> frozenset[str]:
    # contracts/iso4217.txt is generated from ISO 4217 list one (via pycountry's copy of it) and
    # committed, so validation needs no third-party package and changes only by a reviewed diff.
    text = files("ledgerflow.contracts").joinpath("iso4217.txt").read_text(encoding="ascii")
    codes = frozenset(line.strip() for line in text.splitlines() if line.strip())
    assert codes, "contracts/iso4217.txt is empty"
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in codes)
    return codes


CURRENCIES: Final[frozenset[str]] = _load_currencies()
"""Every active ISO 4217 alphabetic code."""

CURRENCY_PATTERN: Final = r"^[A-Z]{3}$"


def is_currency(code: object) -> bool:
    """True when `code` is an active ISO 4217 alphabetic code, in upper case."""
    return isinstance(code, str) and code in CURRENCIES


Currency = Annotated[
    str,
    NativeSchema(
        # A literal set is a hash look-up inside pydantic-core; the custom error keeps the message
        # short instead of listing all codes, and never echoes the input.
        core_schema.custom_error_schema(
            core_schema.literal_schema(sorted(CURRENCIES)),
            custom_error_type="currency",
            custom_error_message="Input should be an active ISO 4217 currency code in upper case",
        ),
        {
            "type": "string",
            "pattern": CURRENCY_PATTERN,
            "enum": sorted(CURRENCIES),
            "description": "ISO 4217 alphabetic code, upper case.",
        },
    ),
]
"""An upper-case ISO 4217 code validated against the real list."""
