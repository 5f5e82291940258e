"""The read side's pure pieces: cursors, content negotiation, who may read what."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.api.app import ProblemError, may_read, wants_csv
from ledgerflow.ledger_db.cursor import (
    DEV_CURSOR_KEY_TEXT,
    BadCursorError,
    CursorCodec,
)
from ledgerflow.ledger_db.reads import TIME_MAX, TIME_MIN, Position
from ledgerflow.workers.auth import Principal

CODEC = CursorCodec.from_text(DEV_CURSOR_KEY_TEXT)
OTHER = CursorCodec(b"another deployment's cursor key, 32+ bytes")
AT = Position(datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC), 987_654_321)


def test_a_cursor_round_trips_for_its_wallet_and_range() -> None:
    wallet = uuid.uuid4()
    cursor = CODEC.encode(wallet, TIME_MIN, TIME_MAX, AT)
    assert CODEC.decode(cursor, wallet, TIME_MIN, TIME_MAX) == AT
    assert len(cursor) < 128
    assert CODEC.is_dev
    assert not OTHER.is_dev


@given(st.integers(min_value=0, max_value=74), st.sampled_from("AQgw-_"))
def test_any_altered_character_is_refused(index: int, replacement: str) -> None:
    wallet = uuid.uuid4()
    cursor = CODEC.encode(wallet, TIME_MIN, TIME_MAX, AT)
    altered = cursor[:index] + replacement + cursor[index + 1 :]
    if altered == cursor:
        return
    with pytest.raises(BadCursorError):
        CODEC.decode(altered, wallet, TIME_MIN, TIME_MAX)


def test_a_cursor_does_not_travel_to_another_wallet_range_or_deployment() -> None:
    wallet = uuid.uuid4()
    cursor = CODEC.encode(wallet, TIME_MIN, TIME_MAX, AT)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for attempt in (
        lambda: CODEC.decode(cursor, uuid.uuid4(), TIME_MIN, TIME_MAX),
        lambda: CODEC.decode(cursor, wallet, start, TIME_MAX),
        lambda: OTHER.decode(cursor, wallet, TIME_MIN, TIME_MAX),
        lambda: CODEC.decode("", wallet, TIME_MIN, TIME_MAX),
        lambda: CODEC.decode("x" * 500, wallet, TIME_MIN, TIME_MAX),
        lambda: CODEC.decode("%%%", wallet, TIME_MIN, TIME_MAX),
    ):
        with pytest.raises(BadCursorError):
            attempt()


def test_a_short_cursor_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CursorCodec(b"short")


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/csv", True),
        ("text/csv, application/json;q=0.5", True),
        ("application/json, text/csv;q=0.9", False),
        ("text/*", True),
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),
    ],
)
def test_csv_only_when_asked_for_above_json(accept: str, csv: bool) -> None:
    assert wants_csv(accept) is csv


def test_a_type_neither_served_is_not_acceptable() -> None:
    with pytest.raises(ProblemError) as refused:
        wants_csv("image/png")
    assert refused.value.status == 406


def test_the_owner_or_ledger_read_reads_and_nobody_else() -> None:
    alice = Principal("user-alice", frozenset())
    service = Principal("wallet-app", frozenset({"ledger:read"}))
    mallory = Principal("user-mallory", frozenset({"ledger:cashin"}))
    assert may_read(alice, "user-alice")
    assert may_read(service, "user-alice")
    assert may_read(service, None)
    assert not may_read(mallory, "user-alice")
    assert not may_read(alice, None)  # a wallet opened without authentication: service only
    assert may_read(None, "user-alice")  # authentication off
