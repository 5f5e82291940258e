"""The parts of a consumed Kafka record the workers read, and its headers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence


class Record(Protocol):
    """What we use of a record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


def header_text(value: bytes | None) -> str:
    """A header value as text, whatever its bytes: Kafka allows any, and null."""
    return "" if value is None else value.decode("utf-8", "replace")


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """A header's value as text (names compared case-insensitively), None when absent."""
    for key, value in headers or ():
        if key.lower() == name:
            return header_text(value)
    return None
