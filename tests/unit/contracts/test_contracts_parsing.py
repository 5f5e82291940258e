"""parse_command: exactly three outcomes, whatever the bytes."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.commands import (
    ApproveCashOut,
    BankAccount,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
    Settlement,
)
from ledgerflow.contracts.events import (
    DETAIL_MAX_CHARS,
    CashOutRejected,
    PaymentRejected,
    RefundRejected,
    RejectReason,
    TransferRejected,
)
from ledgerflow.contracts.parsing import (
    ERRORS_MAX,
    MAX_BYTES_DEFAULT,
    CommandMeta,
    ErrorClass,
    InvalidCommand,
    Unattributable,
    ValidCommand,
    _new_command_meta,
    _new_valid_command,
    _parse_carefully,
    content_hash,
    parse_command,
)
from ledgerflow.contracts.topics import (
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
)

TRANSFER_ID = "5f0c1a4e-8f7d-4a39-9d0c-0d6f5d2b7c11"
FROM_ID = "9b2c4d6e-8f0a-4b1c-8d3e-5f6a7b8c9d0e"
TO_ID = "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f"


def transfer_message(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "transfer_id": TRANSFER_ID,
        "from_account_id": FROM_ID,
        "to_account_id": TO_ID,
        "amount": 12345,
        "currency": "EUR",
        "note": "dinner",
    }
    data.update(data_changes)
    return {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/api/p2p",
        "type": "transfer.initiated",
        "time": "2026-11-29T10:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    }


def dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_valid_transfer_has_keys_meta_and_hash() -> None:
    result = parse_command(TRANSFER, dumps(transfer_message()))
    assert isinstance(result, ValidCommand)
    assert result.flow is TRANSFER
    assert isinstance(result.data, InitiateTransfer)
    assert result.data.amount == 12345
    assert result.idempotency_key == TRANSFER_ID
    assert result.message_key == FROM_ID
    assert result.meta == CommandMeta(
        event_id="evt-1",
        source="/api/p2p",
        correlation_id="evt-1",  # no correlationid: the command's id
        time=datetime(2026, 11, 29, 10, tzinfo=UTC),
    )
    assert len(result.content_hash) == 32


def test_correlationid_is_kept() -> None:
    message = transfer_message() | {"correlationid": "order-77"}
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, ValidCommand)
    assert result.meta.correlation_id == "order-77"


def test_upper_case_ids_give_canonical_keys() -> None:
    message = transfer_message(transfer_id=TRANSFER_ID.upper(), from_account_id=FROM_ID.upper())
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, ValidCommand)
    assert result.idempotency_key == TRANSFER_ID
    assert result.message_key == FROM_ID
    assert result.content_hash == content_hash(result.data)


def test_unknown_attributes_and_missing_time_still_parse() -> None:
    message = transfer_message(channel="ios", nested={"a": [1, 2]})
    message["partnerid"] = "acme"
    del message["time"]
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, ValidCommand)
    assert result.meta.time is None


def test_content_hash_ignores_envelope_extras_order_and_whitespace() -> None:
    base = parse_command(TRANSFER, dumps(transfer_message()))
    message = transfer_message(extra_field="x")
    message.update(id="evt-2", source="/api/retry", time="2026-11-30T00:00:00+01:00")
    reordered = dict(reversed(list(message.items())))
    reordered["data"] = dict(reversed(list(message["data"].items())))
    retry = parse_command(TRANSFER, json.dumps(reordered, indent=4).encode())
    assert isinstance(base, ValidCommand)
    assert isinstance(retry, ValidCommand)
    assert retry.content_hash == base.content_hash
    changed = parse_command(TRANSFER, dumps(transfer_message(amount=12346)))
    assert isinstance(changed, ValidCommand)
    assert changed.content_hash != base.content_hash


def test_content_hash_is_the_canonical_json_of_the_data() -> None:
    result = parse_command(TRANSFER, dumps(transfer_message(note=None)))
    assert isinstance(result, ValidCommand)
    canonical = orjson.dumps(
        result.data.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
    )
    assert result.content_hash == hashlib.sha256(canonical).digest()
    # A null optional and an absent one are the same content.
    absent = transfer_message()
    del absent["data"]["note"]
    again = parse_command(TRANSFER, dumps(absent))
    assert isinstance(again, ValidCommand)
    assert again.content_hash == result.content_hash


def test_content_hash_covers_nested_models() -> None:
    command = ApproveCashOut(
        cashout_id=uuid.uuid4(),
        wallet_account_id=uuid.uuid4(),
        amount=100,
        currency="EUR",
        destination=BankAccount(bank_code="DEUTDEFF", account_number="DE89370400440532013000"),
    )
    canonical = orjson.dumps(
        command.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
    )
    assert content_hash(command) == hashlib.sha256(canonical).digest()


def test_phone_number_is_normalised_before_hashing() -> None:
    data = {
        "customer_id": str(uuid.uuid4()),
        "full_name": "Amara Okafor",
        "phone_number": "+447911123456",
        "currency": "GBP",
    }
    message = {
        "specversion": "1.0",
        "id": "e",
        "source": "/s",
        "type": "onboarding.requested",
        "data": data,
    }
    result = parse_command(ONBOARDING, dumps(message))
    assert isinstance(result, ValidCommand)
    assert isinstance(result.data, RequestOnboarding)
    assert result.data.phone_number == "+447911123456"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amount": "12345"}, "data.amount: Input should be a valid integer"),
        ({"amount": 12345.0}, "data.amount: Input should be a valid integer"),
        ({"amount": True}, "data.amount: Input should be a valid integer"),
        ({"amount": 0}, "data.amount: Input should be greater than or equal to 1"),
        ({"amount": 10**15 + 1}, "data.amount: Input should be less than or equal to"),
        ({"amount": 10**19}, "data.amount: Input should be less than or equal to"),
        ({"amount": 10**30}, "data.amount: Input should be a valid integer"),
        ({"currency": "eur"}, "data.currency: Input should be an active ISO 4217"),
        ({"to_account_id": "nope"}, "data.to_account_id: Input should be a UUID"),
        ({"note": "x" * 141}, "data.note: String should have at most 140 characters"),
    ],
)
def test_invalid_field_is_attributed(changes: dict[str, Any], expected: str) -> None:
    result = parse_command(TRANSFER, dumps(transfer_message(**changes)))
    assert isinstance(result, InvalidCommand)
    assert result.idempotency_key == TRANSFER_ID
    assert result.message_key == FROM_ID
    assert any(error.startswith(expected) for error in result.errors), result.errors


def test_wrong_envelope_with_readable_id_is_invalid() -> None:
    message = transfer_message()
    message.update(type="cashin.confirmed", specversion="0.3")
    del message["source"]
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, InvalidCommand)
    assert "type: Input should be 'transfer.initiated'" in result.errors
    assert "specversion: Input should be '1.0'" in result.errors
    assert "source: Field required" in result.errors


def test_rejection_lists_errors_within_bounds() -> None:
    result = parse_command(TRANSFER, dumps(transfer_message(amount="1", currency="xx")))
    assert isinstance(result, InvalidCommand)
    rejection = result.rejection()
    assert isinstance(rejection, TransferRejected)
    assert rejection.transfer_id == uuid.UUID(TRANSFER_ID)
    assert rejection.reason is RejectReason.INVALID_COMMAND
    assert "data.amount: Input should be a valid integer" in rejection.detail
    assert "data.currency" in rejection.detail


def test_many_errors_are_bounded() -> None:
    data = {f"f{i}": i for i in range(100)} | {"transfer_id": TRANSFER_ID}
    message = {"data": data, **{f"k{i}": 1 for i in range(50)}}
    # 100 duplicate keys in the raw text as well
    raw = (
        b'{"data":'
        + dumps(data)[:-1]
        + b","
        + b",".join(f'"f{i}":0'.encode() for i in range(100))
        + b"}"
        + b"}"
    )
    for value in (dumps(message), raw):
        result = parse_command(TRANSFER, value)
        assert isinstance(result, InvalidCommand)
        assert len(result.errors) <= ERRORS_MAX
        assert len(result.rejection().detail) <= DETAIL_MAX_CHARS  # type: ignore[attr-defined]


def test_invalid_meta_is_best_effort() -> None:
    message = transfer_message(amount="1") | {"correlationid": "c-1"}
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, InvalidCommand)
    assert result.meta.event_id == "evt-1"
    assert result.meta.correlation_id == "c-1"
    assert result.meta.time == datetime(2026, 11, 29, 10, tzinfo=UTC)
    message = transfer_message(amount="1") | {"id": 5, "source": None, "time": "yesterday"}
    result = parse_command(TRANSFER, dumps(message))
    assert isinstance(result, InvalidCommand)
    assert result.meta == CommandMeta(None, None, None, None)


def test_message_key_of_invalid_command_may_be_unknown() -> None:
    result = parse_command(TRANSFER, dumps(transfer_message(from_account_id=7)))
    assert isinstance(result, InvalidCommand)
    assert result.message_key is None


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        (None, ErrorClass.EMPTY),
        (b"", ErrorClass.NOT_JSON),
        (b"\xff\xfe{}", ErrorClass.NOT_UTF8),
        (b"not json", ErrorClass.NOT_JSON),
        (b'{"data": {"transfer_id": "x"', ErrorClass.NOT_JSON),
        (b"[1, 2]", ErrorClass.NOT_OBJECT),
        (b'"text"', ErrorClass.NOT_OBJECT),
        (b"{}", ErrorClass.NO_ID),
        (b'{"data": []}', ErrorClass.NO_ID),
        (b'{"data": {"transfer_id": 5}}', ErrorClass.NO_ID),
        (b'{"data": {"transfer_id": "not-a-uuid"}}', ErrorClass.NO_ID),
        (b'{"data": {"transfer_id": null}}', ErrorClass.NO_ID),
        (b"[" * 100_000 + b"]" * 100_000, ErrorClass.TOO_LARGE),
        (b"[" * 30_000 + b"]" * 30_000, ErrorClass.NOT_JSON),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, ErrorClass.NOT_JSON),
    ],
)
def test_unattributable(value: bytes | None, error_class: ErrorClass) -> None:
    result = parse_command(TRANSFER, value)
    assert isinstance(result, Unattributable)
    assert result.error_class == error_class
    assert result.error


def test_over_max_bytes_is_not_parsed() -> None:
    value = dumps(transfer_message())
    assert isinstance(parse_command(TRANSFER, value, max_bytes=len(value)), ValidCommand)
    result = parse_command(TRANSFER, value, max_bytes=len(value) - 1)
    assert isinstance(result, Unattributable)
    assert result.error_class == ErrorClass.TOO_LARGE
    padded = dumps(transfer_message(note=None) | {"pad": "x" * MAX_BYTES_DEFAULT})
    assert isinstance(parse_command(TRANSFER, padded), Unattributable)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_amount_is_invalid_not_a_crash(constant: bytes) -> None:
    value = dumps(transfer_message(amount=1)).replace(b'"amount": 1', b'"amount": ' + constant)
    result = parse_command(TRANSFER, value)
    assert isinstance(result, InvalidCommand)
    assert f"{constant.decode()} is not valid JSON" in result.errors
    assert "data.amount: Input should be a valid integer" in result.errors


def test_nan_anywhere_makes_the_command_invalid() -> None:
    value = dumps(transfer_message()).replace(b'"note": "dinner"', b'"note": "dinner", "x": NaN')
    assert isinstance(parse_command(TRANSFER, value), InvalidCommand)


@pytest.mark.parametrize("digits", [20, 25, 400, 4300, 5000, 20_000])
def test_integers_with_many_digits_are_invalid(digits: int) -> None:
    value = dumps(transfer_message(amount=1)).replace(b'"amount": 1', b'"amount": ' + b"9" * digits)
    result = parse_command(TRANSFER, value)
    assert isinstance(result, InvalidCommand)
    assert any(e.startswith("data.amount: Input should be") for e in result.errors)


def test_huge_integer_in_an_unknown_field_is_ignored() -> None:
    value = dumps(transfer_message()).replace(
        b'"note": "dinner"', b'"note": "dinner", "big": ' + b"7" * 5000
    )
    assert isinstance(parse_command(TRANSFER, value), ValidCommand)


@pytest.mark.parametrize(
    "value",
    [
        # the amount twice: the last would win silently in orjson, pydantic and json
        b'"amount": 1, "amount": 1000',
        # a key of the envelope twice
        b'"amount": 1}, "source": "/other", "data": {"transfer_id": "' + TRANSFER_ID.encode(),
    ],
)
def test_duplicate_keys_are_rejected(value: bytes) -> None:
    raw = dumps(transfer_message(amount=1)).replace(b'"amount": 1', value)
    result = parse_command(TRANSFER, raw)
    assert not isinstance(result, ValidCommand)


def test_duplicate_key_is_named() -> None:
    raw = dumps(transfer_message(amount=1)).replace(b'"amount": 1', b'"amount": 1, "amount": 1')
    result = parse_command(TRANSFER, raw)
    assert isinstance(result, InvalidCommand)
    assert "duplicate key 'amount'" in result.errors


def test_duplicate_id_is_ambiguous() -> None:
    other = str(uuid.uuid4())
    raw = dumps(transfer_message()).replace(
        b'"amount": 12345', f'"amount": 12345, "transfer_id": "{other}"'.encode()
    )
    result = parse_command(TRANSFER, raw)
    assert isinstance(result, Unattributable)
    assert result.error_class == ErrorClass.AMBIGUOUS_ID


def test_duplicate_key_in_unknown_nested_object_is_rejected() -> None:
    raw = dumps(transfer_message()).replace(
        b'"note": "dinner"', b'"note": "dinner", "meta": {"a": {"b": 1, "b": 2}}'
    )
    assert isinstance(parse_command(TRANSFER, raw), InvalidCommand)


def test_duplicate_keys_hidden_by_escapes_are_found() -> None:
    # "\u0061mount" is "amount": the escape defeats a byte comparison, not the careful decoder.
    raw = dumps(transfer_message(amount=1)).replace(
        b'"amount": 1', b'"amount": 1, "\\u0061mount": 5'
    )
    result = parse_command(TRANSFER, raw)
    assert isinstance(result, InvalidCommand)
    assert "duplicate key 'amount'" in result.errors


def test_colons_inside_strings_do_not_hide_duplicates() -> None:
    raw = dumps(transfer_message(note="a:b")).replace(b'"note": "a:b"', b'"note": "a", "note": "b"')
    assert isinstance(parse_command(TRANSFER, raw), InvalidCommand)


def test_escaped_strings_are_valid() -> None:
    value = dumps(transfer_message(note='he said "hi" \\ caf\u00e9 \U0001f600'))
    assert b"\\" in value
    result = parse_command(TRANSFER, value)
    assert isinstance(result, ValidCommand)
    assert isinstance(result.data, InitiateTransfer)
    assert result.data.note == 'he said "hi" \\ caf\u00e9 \U0001f600'


def test_lone_surrogate_is_invalid() -> None:
    value = dumps(transfer_message(note="x")).replace(b'"note": "x"', b'"note": "\\ud800"')
    result = parse_command(TRANSFER, value)
    assert isinstance(result, InvalidCommand)
    assert any("surrogate" in e for e in result.errors)
    result.rejection()  # the detail is encodable


def test_fast_constructors_build_equal_objects() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    meta = _new_command_meta("a", "b", "c", when)
    assert meta == CommandMeta(event_id="a", source="b", correlation_id="c", time=when)
    with pytest.raises(AttributeError):
        meta.source = "x"  # type: ignore[misc]
    data = InitiateTransfer(
        transfer_id=uuid.uuid4(),
        from_account_id=uuid.uuid4(),
        to_account_id=uuid.uuid4(),
        amount=1,
        currency="EUR",
    )
    fast = _new_valid_command(
        TRANSFER, meta, data=data, idempotency_key="i", message_key="k", content_hash=b"h"
    )
    slow = ValidCommand(
        flow=TRANSFER,
        meta=meta,
        data=data,
        idempotency_key="i",
        message_key="k",
        content_hash=b"h",
    )
    assert fast == slow
    assert hash(fast.meta) == hash(slow.meta)


def test_careful_path_agrees_with_fast_path() -> None:
    command = InitiateTransfer(
        transfer_id=uuid.uuid4(),
        from_account_id=uuid.uuid4(),
        to_account_id=uuid.uuid4(),
        amount=5,
        currency="JPY",
    )
    value = encode_command(TRANSFER, command).value
    fast = parse_command(TRANSFER, value)
    careful = _parse_carefully(TRANSFER, value)
    assert fast == careful


def test_cashout_fee_defaults_to_zero() -> None:
    message = {
        "specversion": "1.0",
        "id": "e",
        "source": "/s",
        "type": "cashout.approved",
        "data": {
            "cashout_id": str(uuid.uuid4()),
            "wallet_account_id": str(uuid.uuid4()),
            "amount": 100,
            "currency": "EUR",
            "destination": {"bank_code": "DEUTDEFF", "account_number": "DE89370400440532013000"},
        },
    }
    result = parse_command(CASHOUT, dumps(message))
    assert isinstance(result, ValidCommand)
    assert isinstance(result.data, ApproveCashOut)
    assert result.data.fee == 0


def test_deep_unknown_field_within_limits_parses() -> None:
    deep = b"[" * 500 + b"]" * 500  # deeper than orjson encodes (254), within what it decodes
    raw = dumps(transfer_message()).replace(b'"note": "dinner"', b'"note": "dinner", "x": ' + deep)
    assert isinstance(parse_command(TRANSFER, raw), ValidCommand)
    deeper = b"[" * 5000 + b"]" * 5000
    raw = dumps(transfer_message()).replace(
        b'"note": "dinner"', b'"note": "dinner", "x": ' + deeper
    )
    result = parse_command(TRANSFER, raw)
    assert isinstance(result, Unattributable)
    assert result.error_class == ErrorClass.NOT_JSON


# --- The cash-out lifecycle (DESIGN.md §5.1) ---

CASHOUT_ID = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"
WALLET_ID = "9b2c4d6e-8f0a-4b1c-8d3e-5f6a7b8c9d0e"


def cashout_message(type_: str = "cashout.approved", **data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"cashout_id": CASHOUT_ID, "wallet_account_id": WALLET_ID}
    if type_ == "cashout.approved":
        data |= {
            "amount": 50000,
            "currency": "EUR",
            "fee": 150,
            "destination": {"bank_code": "DEUTDEFF", "account_number": "DE89370400440532013000"},
        }
    elif type_ == "cashout.settled":
        data |= {"bank_reference": "SEPA-1"}
    else:
        data |= {"return_code": "AC04"}
    data.update(data_changes)
    return {"specversion": "1.0", "id": "e", "source": "/s", "type": type_, "data": data}


def _approved(**data_changes: Any) -> ValidCommand:
    result = parse_command(CASHOUT, dumps(cashout_message(**data_changes)))
    assert isinstance(result, ValidCommand), result
    return result


def test_a_v1_cash_out_is_immediate_and_hashes_as_before() -> None:
    v1 = _approved()
    assert isinstance(v1.data, ApproveCashOut)
    assert v1.data.settlement is None
    assert v1.data.hold_expires_in_s is None
    assert not v1.data.holds
    # The hash of a v1 command has no trace of the new fields: retries across the upgrade match.
    v1_fields = {
        "cashout_id": CASHOUT_ID,
        "wallet_account_id": WALLET_ID,
        "amount": 50000,
        "currency": "EUR",
        "fee": 150,
        "destination": {"bank_code": "DEUTDEFF", "account_number": "DE89370400440532013000"},
    }
    assert (
        v1.content_hash
        == hashlib.sha256(orjson.dumps(v1_fields, option=orjson.OPT_SORT_KEYS)).digest()
    )


def test_explicit_immediate_is_the_same_content_as_absent() -> None:
    v1 = _approved()
    for spelled in ("immediate", None):
        again = _approved(settlement=spelled)
        assert isinstance(again.data, ApproveCashOut)
        assert again.data.settlement is None
        assert again.content_hash == v1.content_hash
    assert (
        ApproveCashOut.model_validate(v1.data.model_dump() | {"settlement": Settlement.IMMEDIATE})
        == v1.data
    )


def test_a_hold_is_other_content() -> None:
    v1 = _approved()
    held = _approved(settlement="on_confirmation")
    assert isinstance(held.data, ApproveCashOut)
    assert held.data.settlement is Settlement.ON_CONFIRMATION
    assert held.data.holds
    assert held.content_hash != v1.content_hash
    shorter = _approved(settlement="on_confirmation", hold_expires_in_s=3600)
    assert shorter.content_hash not in {v1.content_hash, held.content_hash}
    canonical = orjson.dumps(
        shorter.data.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
    )
    assert shorter.content_hash == hashlib.sha256(canonical).digest()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"hold_expires_in_s": 59},
            "data.hold_expires_in_s: Input should be greater than or equal to 60",
        ),
        (
            {"hold_expires_in_s": 2_592_001},
            "data.hold_expires_in_s: Input should be less than or equal to 2592000",
        ),
        ({"hold_expires_in_s": "3600"}, "data.hold_expires_in_s: Input should be a valid integer"),
        ({"hold_expires_in_s": 3600.0}, "data.hold_expires_in_s: Input should be a valid integer"),
        ({"hold_expires_in_s": True}, "data.hold_expires_in_s: Input should be a valid integer"),
        (
            {"settlement": "later"},
            "data.settlement: Input should be 'immediate' or 'on_confirmation'",
        ),
    ],
)
def test_invalid_hold_fields_are_attributed(changes: dict[str, Any], expected: str) -> None:
    message = cashout_message(**({"settlement": "on_confirmation"} | changes))
    result = parse_command(CASHOUT, dumps(message))
    assert isinstance(result, InvalidCommand)
    assert any(error.startswith(expected) for error in result.errors), result.errors
    rejection = result.rejection()
    assert isinstance(rejection, CashOutRejected)
    assert rejection.answers is None  # the approve flow's rejections keep the v1 shape


def test_second_phase_commands_parse_with_the_cash_out_as_key() -> None:
    for flow, type_, model in (
        (CASHOUT_SETTLE, "cashout.settled", SettleCashOut),
        (CASHOUT_RETURN, "cashout.returned", ReturnCashOut),
    ):
        result = parse_command(flow, dumps(cashout_message(type_)))
        assert isinstance(result, ValidCommand), result
        assert isinstance(result.data, model)
        assert result.idempotency_key == CASHOUT_ID
        assert result.message_key == WALLET_ID
        # Each command type is its own topic: a settle is not a valid return, nor an approval.
        other = CASHOUT_RETURN if flow is CASHOUT_SETTLE else CASHOUT_SETTLE
        assert isinstance(parse_command(other, dumps(cashout_message(type_))), InvalidCommand)
        assert isinstance(parse_command(CASHOUT, dumps(cashout_message(type_))), InvalidCommand)


@pytest.mark.parametrize(
    ("flow", "type_", "changes", "expected"),
    [
        (
            CASHOUT_SETTLE,
            "cashout.settled",
            {"bank_reference": ""},
            "data.bank_reference: String should have at least 1 character",
        ),
        (
            CASHOUT_SETTLE,
            "cashout.settled",
            {"bank_reference": "r" * 129},
            "data.bank_reference: String should have at most 128 characters",
        ),
        (
            CASHOUT_RETURN,
            "cashout.returned",
            {"return_code": ""},
            "data.return_code: String should have at least 1 character",
        ),
        (
            CASHOUT_RETURN,
            "cashout.returned",
            {"return_code": "X" * 36},
            "data.return_code: String should have at most 35 characters",
        ),
        (
            CASHOUT_RETURN,
            "cashout.returned",
            {"detail": "d" * 501},
            "data.detail: String should have at most 500 characters",
        ),
        (
            CASHOUT_RETURN,
            "cashout.returned",
            {"wallet_account_id": "w"},
            "data.wallet_account_id: Input should be a UUID",
        ),
    ],
)
def test_invalid_second_phase_command_is_answered_with_its_type(
    flow: Any, type_: str, changes: dict[str, Any], expected: str
) -> None:
    result = parse_command(flow, dumps(cashout_message(type_, **changes)))
    assert isinstance(result, InvalidCommand)
    assert result.idempotency_key == CASHOUT_ID
    assert any(error.startswith(expected) for error in result.errors), result.errors
    rejection = result.rejection()
    assert rejection == CashOutRejected(
        cashout_id=uuid.UUID(CASHOUT_ID),
        reason=RejectReason.INVALID_COMMAND,
        detail="; ".join(result.errors),
        answers=type_,
    )


# --- Merchants, payments and refunds (DESIGN.md §5.2) ---

CUSTOMER_ID = "4c5d6e7f-8a9b-4c0d-8e1f-2a3b4c5d6e7f"
PAYMENT_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
REFUND_ID = "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"
MERCHANT_ID = "d1e2f3a4-b5c6-4d7e-8f9a-0b1c2d3e4f5a"


def message(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "e", "source": "/s", "type": type_, "data": data}


def onboarding_message(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "customer_id": CUSTOMER_ID,
        "full_name": "Corner Bakery Ltd",
        "phone_number": "+442079460958",
        "currency": "EUR",
    }
    return message("onboarding.requested", data | data_changes)


def payment_message(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "payment_id": PAYMENT_ID,
        "from_account_id": FROM_ID,
        "merchant_account_id": MERCHANT_ID,
        "amount": 10_000,
        "currency": "EUR",
        "order_reference": "ORDER-2026-000042",
    }
    return message("payment.initiated", data | data_changes)


def refund_message(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "refund_id": REFUND_ID,
        "payment_id": PAYMENT_ID,
        "merchant_account_id": MERCHANT_ID,
        "amount": 3_333,
        "currency": "EUR",
        "reason": "one of three items returned",
    }
    return message("refund.requested", data | data_changes)


def _onboarding(**data_changes: Any) -> ValidCommand:
    result = parse_command(ONBOARDING, dumps(onboarding_message(**data_changes)))
    assert isinstance(result, ValidCommand), result
    assert isinstance(result.data, RequestOnboarding)
    return result


def test_a_v1_onboarding_is_a_consumer_and_hashes_as_before() -> None:
    v1 = _onboarding()
    assert isinstance(v1.data, RequestOnboarding)
    assert v1.data.kind is None
    assert v1.data.customer_kind is CustomerKind.CONSUMER
    v1_fields = onboarding_message()["data"]
    assert (
        v1.content_hash
        == hashlib.sha256(orjson.dumps(v1_fields, option=orjson.OPT_SORT_KEYS)).digest()
    )


def test_explicit_consumer_is_the_same_content_as_absent() -> None:
    v1 = _onboarding()
    for spelled in ("consumer", None):
        again = _onboarding(kind=spelled)
        assert isinstance(again.data, RequestOnboarding)
        assert again.data.kind is None
        assert again.data.customer_kind is CustomerKind.CONSUMER
        assert again.content_hash == v1.content_hash
    assert (
        RequestOnboarding.model_validate(v1.data.model_dump() | {"kind": CustomerKind.CONSUMER})
        == v1.data
    )


def test_a_merchant_is_other_content() -> None:
    v1 = _onboarding()
    merchant = _onboarding(kind="merchant")
    assert isinstance(merchant.data, RequestOnboarding)
    assert merchant.data.customer_kind is CustomerKind.MERCHANT
    assert merchant.content_hash != v1.content_hash
    canonical = orjson.dumps(
        merchant.data.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
    )
    assert merchant.content_hash == hashlib.sha256(canonical).digest()
    assert b'"kind":"merchant"' in canonical


def test_invalid_kind_is_attributed() -> None:
    result = parse_command(ONBOARDING, dumps(onboarding_message(kind="business")))
    assert isinstance(result, InvalidCommand)
    assert result.idempotency_key == CUSTOMER_ID
    assert any(
        e.startswith("data.kind: Input should be 'consumer' or 'merchant'") for e in result.errors
    ), result.errors


def test_payment_and_refund_parse_with_their_keys() -> None:
    for flow, document, model, id_value, key_value in (
        (PAYMENT, payment_message(), InitiatePayment, PAYMENT_ID, FROM_ID),
        (REFUND, refund_message(), RequestRefund, REFUND_ID, MERCHANT_ID),
    ):
        result = parse_command(flow, dumps(document))
        assert isinstance(result, ValidCommand), result
        assert isinstance(result.data, model)
        assert result.idempotency_key == id_value
        assert result.message_key == key_value
        # Each command type is its own topic: a payment is not a valid refund, nor a transfer.
        other = REFUND if flow is PAYMENT else PAYMENT
        assert not isinstance(parse_command(other, dumps(document)), ValidCommand)
        assert not isinstance(parse_command(TRANSFER, dumps(document)), ValidCommand)


def test_a_refund_is_attributed_by_its_own_id_not_the_payments() -> None:
    document = refund_message()
    del document["data"]["refund_id"]
    result = parse_command(REFUND, dumps(document))
    assert isinstance(result, Unattributable)  # payment_id is no refund's idempotency key
    assert result.error_class == ErrorClass.NO_ID


def test_optional_merchant_fields_hash_as_absent_when_null() -> None:
    for flow, document, field in (
        (PAYMENT, payment_message(), "order_reference"),
        (REFUND, refund_message(), "reason"),
    ):
        del document["data"][field]
        absent = parse_command(flow, dumps(document))
        document["data"][field] = None
        null = parse_command(flow, dumps(document))
        assert isinstance(absent, ValidCommand)
        assert isinstance(null, ValidCommand)
        assert absent.content_hash == null.content_hash


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amount": 0}, "data.amount: Input should be greater than or equal to 1"),
        ({"amount": "10000"}, "data.amount: Input should be a valid integer"),
        (
            {"order_reference": "R" * 65},
            "data.order_reference: String should have at most 64 characters",
        ),
        (
            {"order_reference": ""},
            "data.order_reference: String should have at least 1 character",
        ),
        ({"merchant_account_id": None}, "data.merchant_account_id: Input should be a UUID"),
        ({"merchant_account_id": "m-1"}, "data.merchant_account_id: Input should be a UUID"),
        ({"currency": "eur"}, "data.currency: Input should be an active ISO 4217"),
    ],
)
def test_invalid_payment_is_answered_with_payment_rejected(
    changes: dict[str, Any], expected: str
) -> None:
    result = parse_command(PAYMENT, dumps(payment_message(**changes)))
    assert isinstance(result, InvalidCommand)
    assert result.idempotency_key == PAYMENT_ID
    assert result.message_key == FROM_ID
    assert any(error.startswith(expected) for error in result.errors), result.errors
    assert result.rejection() == PaymentRejected(
        payment_id=uuid.UUID(PAYMENT_ID),
        reason=RejectReason.INVALID_COMMAND,
        detail="; ".join(result.errors),
    )


def test_missing_merchant_is_invalid() -> None:
    document = payment_message()
    del document["data"]["merchant_account_id"]
    result = parse_command(PAYMENT, dumps(document))
    assert isinstance(result, InvalidCommand)
    assert "data.merchant_account_id: Field required" in result.errors


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amount": 0}, "data.amount: Input should be greater than or equal to 1"),
        ({"amount": 33.33}, "data.amount: Input should be a valid integer"),
        ({"reason": "r" * 141}, "data.reason: String should have at most 140 characters"),
        ({"payment_id": "ORDER-1"}, "data.payment_id: Input should be a UUID"),
    ],
)
def test_invalid_refund_is_answered_with_refund_rejected(
    changes: dict[str, Any], expected: str
) -> None:
    result = parse_command(REFUND, dumps(refund_message(**changes)))
    assert isinstance(result, InvalidCommand)
    assert result.idempotency_key == REFUND_ID
    assert result.message_key == MERCHANT_ID
    assert any(error.startswith(expected) for error in result.errors), result.errors
    assert result.rejection() == RefundRejected(
        refund_id=uuid.UUID(REFUND_ID),
        reason=RejectReason.INVALID_COMMAND,
        detail="; ".join(result.errors),
    )
