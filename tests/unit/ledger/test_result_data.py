"""The ledger builds each success result as its model's fields (no model on the hot path):
every one must be exactly what the model would dump, in the model's field order, so the bytes
on the wire are the contract's."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from ledgerflow.contracts.codec import decode_result, encode_event
from ledgerflow.ledger_db.apply import RESULT_SOURCE, _result
from ledgerflow.ledger_db.rules import Book, CashOut, CashOutState, Rejected, TierLimits, Wallet
from ledgerflow.testkit.commands import (
    cashin,
    cashout,
    flow_of,
    held_cashout,
    onboarding,
    payment,
    refund,
    returned,
    settle,
    transfer,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ledgerflow.contracts.topics import Flow

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, 123_456, tzinfo=dt.UTC)


def ledger() -> tuple[Book, Wallet, Wallet, Wallet]:
    payer, other = (
        Wallet(uuid.uuid4(), "EUR", "open", "basic", 100_000, out_day=NOW.date()) for _ in "ab"
    )
    shop = Wallet(
        uuid.uuid4(), "EUR", "open", "basic", 0, kind="merchant", customer_id=uuid.uuid4()
    )
    book = Book(
        wallets={w.id: w for w in (payer, other, shop)},
        taken_phone_numbers=set(),
        limits={"basic": TierLimits()},
        today=NOW.date(),
        now=NOW,
        posted_at=NOW,
        hold_expires_s=3_600,
    )
    return book, payer, other, shop


def commands(payer: Wallet, other: Wallet, shop: Wallet) -> list[BaseModel]:
    """One command of every kind that succeeds, in an order in which each does."""
    paid = payment(payer.id, shop.id, 10_000)
    immediate = cashout(payer.id, 300, fee=5)
    held = held_cashout(other.id, 200, fee=3, expires_in_s=600)
    kept = held_cashout(other.id, 100, fee=1, expires_in_s=600)
    return [
        onboarding(),
        cashin(payer.id, 5_000),
        transfer(payer.id, other.id, 1_234),
        paid,
        refund(paid, 4_000),
        immediate,
        returned(immediate),
        held,
        settle(held),
        kept,
        returned(kept),
    ]


def decided() -> list[tuple[Flow, str, Any]]:
    book, payer, other, shop = ledger()
    out = []
    for command in commands(payer, other, shop):
        decision = book.decide(command)  # type: ignore[arg-type]
        assert not isinstance(decision, Rejected), (command, decision)
        flow = flow_of(command)
        event_type, result = _result(flow, command, decision, book)  # type: ignore[arg-type]
        out.append((flow, event_type, result))
        # What the writer records of each so the next command finds it (the cash-outs).
        data: Any = result
        cmd_id: Any = getattr(command, "cashout_id", None)
        placed = {"cashout.completed": CashOutState.IMMEDIATE, "cashout.held": CashOutState.PENDING}
        if event_type in placed and cmd_id not in book.cashouts:
            book.cashouts[cmd_id] = CashOut(
                cmd_id,
                data["wallet_account_id"],
                "EUR",
                data["amount"],
                data["fee"],
                placed[event_type],
                expires_at=data.get("hold_expires_at"),
                out_day=NOW.date(),
            )
    return out


@pytest.mark.parametrize(
    ("flow", "event_type", "data"),
    decided(),
    ids=[f"{t}-{i}" for i, (_, t, _) in enumerate(decided())],
)
def test_each_success_is_its_model_s_dump_in_its_field_order(
    flow: Flow, event_type: str, data: Any
) -> None:
    if event_type == "cashout.voided":  # built as its model: expiry shares it, a rare path
        data = data.model_dump()
    assert isinstance(data, dict), "successes are built as fields, not models"
    model = flow.model_of(event_type)
    dumped = model.model_validate(data).model_dump(mode="json", exclude_none=True)
    written = orjson.loads(orjson.dumps(data, option=orjson.OPT_UTC_Z))
    assert written == dumped
    assert list(written) == list(dumped), "the model's field order"
    value = encode_event(
        event_type,
        data,
        event_id=str(uuid.uuid4()),
        source=RESULT_SOURCE,
        causation_id=None,
        correlation_id=None,
        time=NOW,
    )
    assert decode_result(flow, value).data == model.model_validate(data)


def test_ids_read_from_the_database_are_written_as_uuids() -> None:
    """Rows carry asyncpg's own UUID type, which orjson does not write by itself."""
    from asyncpg.pgproto.pgproto import UUID as RowUUID  # noqa: PLC0415, N811

    wallet = uuid.uuid4()
    value = encode_event(
        "cashin.completed",
        {
            "cashin_id": uuid.uuid4(),
            "wallet_account_id": RowUUID(str(wallet)),
            "amount": 5,
            "currency": "EUR",
            "journal_entry_id": uuid.uuid4(),
            "balance_after": 5,
        },
        event_id=str(uuid.uuid4()),
        source=RESULT_SOURCE,
        causation_id=None,
        correlation_id=None,
        time=NOW,
    )
    assert orjson.loads(value)["data"]["wallet_account_id"] == str(wallet)
