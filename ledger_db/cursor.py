"""Opaque, tamper-evident page cursors for the read side.

A cursor is a history position (ledger_db/reads.py) bound to the wallet and the time range it
was issued for, MACed with a server key (HMAC-SHA-256, truncated to 128 bits). A client can
neither forge a position in a wallet it was never shown, nor carry a cursor to another wallet or
range: either is refused as a bad cursor (400), never answered with the wrong rows.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from ledgerflow.ledger_db.reads import Position

KEY_BYTES_MIN = 32
CURSOR_CHARS_MAX = 128  # a cursor is 75 characters; anything longer is not one
_VERSION = 1
_MAC_BYTES = 16
# version, account id, posted_at and the range as microseconds since the epoch, posting id
_LAYOUT = struct.Struct(">B16sqqqq")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadCursorError(ValueError):
    """Not a cursor this deployment issued for this query."""


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(microseconds=1)


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def decode_key_text(text: str) -> bytes:
    """Url-safe base64, padding optional (the form of every key in the settings)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class CursorCodec:
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < KEY_BYTES_MIN:
            raise ValueError(f"the cursor key has at least {KEY_BYTES_MIN} bytes")

    @classmethod
    def from_text(cls, text: str) -> CursorCodec:
        return cls(decode_key_text(text))

    @property
    def is_dev(self) -> bool:
        return hmac.compare_digest(self.secret, decode_key_text(DEV_CURSOR_KEY_TEXT))

    def encode(self, account_id: UUID, start: datetime, end: datetime, at: Position) -> str:
        body = _LAYOUT.pack(
            _VERSION,
            account_id.bytes,
            _micros(at.posted_at),
            _micros(start),
            _micros(end),
            at.posting_id,
        )
        mac = hmac.digest(self.secret, body, "sha256")[:_MAC_BYTES]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def decode(self, cursor: str, account_id: UUID, start: datetime, end: datetime) -> Position:
        """The position a cursor carries; `BadCursorError` unless it is intact and was issued for
        this wallet and range."""
        if len(cursor) > CURSOR_CHARS_MAX:
            raise BadCursorError("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise BadCursorError("cursor is not url-safe base64") from None
        if len(raw) != _LAYOUT.size + _MAC_BYTES:
            raise BadCursorError("cursor has the wrong length")
        body, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not hmac.compare_digest(mac, hmac.digest(self.secret, body, "sha256")[:_MAC_BYTES]):
            raise BadCursorError("cursor was altered or issued by another deployment")
        version, account, posted, first, last, posting_id = _LAYOUT.unpack(body)
        if version != _VERSION:
            raise BadCursorError("cursor of another version")
        if account != account_id.bytes or first != _micros(start) or last != _micros(end):
            raise BadCursorError("cursor belongs to another wallet or time range")
        return Position(_instant(posted), posting_id)


# Development key: the embedded stack, tests and the demo. Public: every deployment sets
# LEDGERFLOW_API_CURSOR_KEY (or its _FILE); the API warns when it runs with this one.
DEV_CURSOR_KEY_TEXT = "ZGV2LW9ubHktY3Vyc29yLWtleS1ub3QtZm9yLXByb2R1Y3Rpb24tdXNl"
