"""Golden examples: pydantic and the published JSON Schema agree on every one of them."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from ledgerflow.contracts.envelope import typed_envelope
from ledgerflow.contracts.parsing import InvalidCommand, ValidCommand, parse_command
from ledgerflow.contracts.schema_export import schema_path
from ledgerflow.contracts.topics import FLOWS, MESSAGE_TYPES, flow_by_topic, message_model

PACKAGE = Path(__file__).resolve().parents[3] / "contracts"
EXAMPLES = sorted((PACKAGE / "examples").glob("*/*.json"))
COMMAND_TYPES = {flow.command_topic for flow in FLOWS}


@cache
def schema_validator(message_type: str) -> jsonschema.protocols.Validator:
    schema = json.loads((PACKAGE / schema_path(message_type)).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(
        schema, format_checker=validator_class.FORMAT_CHECKER
    )
    return validator


def pydantic_accepts(message_type: str, document: Any) -> bool:
    model = typed_envelope(message_type, message_model(message_type))
    try:
        model.model_validate(document)
    except ValidationError:
        return False
    return True


def example_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_examples_cover_every_type() -> None:
    assert {p.parent.name for p in EXAMPLES} == set(MESSAGE_TYPES)
    for message_type in MESSAGE_TYPES:
        names = [p.name for p in EXAMPLES if p.parent.name == message_type]
        assert any(n.startswith("valid-") or n == "valid.json" for n in names), message_type
    for message_type in COMMAND_TYPES:
        names = [p.name for p in EXAMPLES if p.parent.name == message_type]
        assert any(n.startswith("invalid-") for n in names), message_type


@pytest.mark.parametrize("path", EXAMPLES, ids=example_id)
def test_example_agrees_with_both_validators(path: Path) -> None:
    message_type = path.parent.name
    assert path.name == "valid.json" or path.name.startswith(("valid-", "invalid-"))
    expected = not path.name.startswith("invalid-")
    raw = path.read_bytes()
    # orjson is how the workers decode; json is what a JSON Schema tool would use.
    assert pydantic_accepts(message_type, orjson.loads(raw)) is expected
    assert schema_validator(message_type).is_valid(json.loads(raw)) is expected


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.parent.name in COMMAND_TYPES], ids=example_id
)
def test_command_example_parses_to_the_expected_outcome(path: Path) -> None:
    flow = flow_by_topic(path.parent.name)
    result = parse_command(flow, path.read_bytes())
    if path.name.startswith("invalid-"):
        assert not isinstance(result, ValidCommand)
        document = json.loads(path.read_bytes())
        data = document.get("data", {})
        if isinstance(data.get(flow.id_field), str) and len(data[flow.id_field]) == 36:
            assert isinstance(result, InvalidCommand)
    else:
        assert isinstance(result, ValidCommand)


def test_float_amount_is_where_json_schema_cannot_follow() -> None:
    # JSON Schema counts 12345.0 as an integer (the same JSON number); the contract does not,
    # so this case lives here rather than among the golden examples.
    document = json.loads((PACKAGE / "examples/transfer.initiated/valid.json").read_text())
    document["data"]["amount"] = 12345.0
    assert schema_validator("transfer.initiated").is_valid(document)
    assert not pydantic_accepts("transfer.initiated", document)


def test_phone_number_validity_is_checked_by_pydantic_alone() -> None:
    # The schema checks the E.164 form; the numbering plan is known to `phonenumbers` only.
    path = PACKAGE / "examples/onboarding.requested/valid-minimal.json"
    document = json.loads(path.read_text())
    document["data"]["phone_number"] = "+10000000000"
    assert schema_validator("onboarding.requested").is_valid(document)
    assert not pydantic_accepts("onboarding.requested", document)


# The fee schedule the merchant examples (and docs/contracts.md's worked example) assume.
EXAMPLE_BPS, EXAMPLE_FIXED = 150, 30


def _fee(amount: int, bps: int = EXAMPLE_BPS, fixed: int = EXAMPLE_FIXED) -> int:
    """DESIGN.md §5.2: min(amount, floor(amount x bps / 10,000) + fixed)."""
    return min(amount, amount * bps // 10_000 + fixed)


def _fee_returned_total(fee: int, refunded: int, amount: int) -> int:
    """DESIGN.md §5.2: after refunds totalling `refunded`, floor(fee x refunded / amount)."""
    return fee * refunded // amount


def _data(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PACKAGE / "examples" / relative).read_text())["data"]
    return data


def test_merchant_examples_follow_the_fee_rule() -> None:
    """The golden payment and its two refunds are one consistent story (docs/contracts.md)."""
    payment = _data("payment.initiated/valid.json")
    paid = _data("payment.completed/valid.json")
    asked = [
        _data("refund.requested/valid.json"),
        _data("refund.requested/valid-full-remainder.json"),
    ]
    done = [_data("refund.completed/valid-partial.json"), _data("refund.completed/valid-full.json")]
    for field in ("payment_id", "from_account_id", "merchant_account_id", "amount", "currency"):
        assert paid[field] == payment[field], field
    amount, fee = paid["amount"], paid["fee"]
    assert (amount, fee) == (10_000, 180)
    assert fee == _fee(amount)
    whole = _data("payment.completed/valid-fee-whole-amount.json")
    assert whole["fee"] == _fee(whole["amount"]) == whole["amount"]  # capped at the amount
    # The merchant's balance once paid, before the first refund debited it.
    merchant_paid = done[0]["balance_after"] + done[0]["amount"] - done[0]["fee_returned"]
    merchant_balance, refunded, fee_back = merchant_paid, 0, 0
    for request, result in zip(asked, done, strict=True):
        for field in ("refund_id", "payment_id", "merchant_account_id", "amount", "currency"):
            assert result[field] == request[field], field
        assert result["payment_id"] == paid["payment_id"]
        assert result["merchant_account_id"] == paid["merchant_account_id"]
        assert result["to_account_id"] == paid["from_account_id"]  # the payer gets it back
        refunded += result["amount"]
        assert result["refunded_total"] == refunded <= amount
        assert result["fee_returned"] == _fee_returned_total(fee, refunded, amount) - fee_back
        fee_back += result["fee_returned"]
        # The merchant gives back the amount less the fee returned; fee revenue the rest.
        merchant_balance -= result["amount"] - result["fee_returned"]
        assert result["balance_after"] == merchant_balance
    assert [r["fee_returned"] for r in done] == [59, 121]
    assert [r["amount"] - r["fee_returned"] for r in done] == [3_274, 6_546]
    # A full refund undoes the payment exactly: all of the fee came back, and the merchant has
    # what it had before it was paid amount - fee.
    assert refunded == amount
    assert fee_back == fee
    assert merchant_balance == merchant_paid - (amount - fee)
    left = amount - done[0]["refunded_total"]
    exceeded = _data("refund.rejected/valid-refund-exceeds-payment.json")
    assert exceeded["detail"] == f"only {left} of the payment is left to refund"


def test_examples_in_docs_are_valid() -> None:
    doc = (PACKAGE.parent / "docs" / "contracts.md").read_text()
    checked = 0
    for match in re.finditer(
        r"(<!-- data: (?P<type>[a-z.]+) -->\n)?```json\n(?P<body>.*?)```", doc, re.DOTALL
    ):
        document = json.loads(match["body"])
        if match["type"]:
            message_model(match["type"]).model_validate(document)
        else:
            assert pydantic_accepts(document["type"], document)
        checked += 1
    assert checked >= 14
