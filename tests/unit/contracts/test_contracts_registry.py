"""The registry matches DESIGN.md §1, §5.1 and §5.2 and is the one place that names topics."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import get_args

import pytest

from ledgerflow.contracts.commands import (
    InitiatePayment,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
)
from ledgerflow.contracts.events import (
    CashOutCommandType,
    CashOutCompleted,
    CashOutHeld,
    CashOutRejected,
    CashOutReversed,
    CashOutVoided,
    PaymentCompleted,
    PaymentRejected,
    RefundCompleted,
    RefundRejected,
    RejectReason,
    TransferRejected,
)
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    FLOWS,
    MESSAGE_TYPES,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
    WORKERS,
    all_topics,
    flow_by_name,
    flow_by_topic,
    flows_of_worker,
    message_model,
)

# DESIGN.md §1, "Topics": command topic, key, result topics. Contract v1 as first published: these
# flows, in this order, with exactly these completed and rejected topics, never change.
V1_TABLE = [
    ("onboarding.requested", "customer_id", "onboarding.completed", "onboarding.rejected"),
    ("cashin.confirmed", "wallet_account_id", "cashin.completed", "cashin.rejected"),
    ("transfer.initiated", "from_account_id", "transfer.completed", "transfer.rejected"),
    ("cashout.approved", "wallet_account_id", "cashout.completed", "cashout.rejected"),
]
V1_ID_FIELDS = ["customer_id", "cashin_id", "transfer_id", "cashout_id"]
V1_NAMES = ["onboarding", "cashin", "transfer", "cashout"]

# DESIGN.md §5.1: name, command topic, key, idempotency field, every result topic.
HOLDS_TABLE = [
    (
        "cashout",
        "cashout.approved",
        "wallet_account_id",
        "cashout_id",
        ("cashout.completed", "cashout.rejected", "cashout.held", "cashout.voided"),
    ),
    (
        "cashout_settle",
        "cashout.settled",
        "wallet_account_id",
        "cashout_id",
        ("cashout.completed", "cashout.rejected"),
    ),
    (
        "cashout_return",
        "cashout.returned",
        "wallet_account_id",
        "cashout_id",
        ("cashout.voided", "cashout.rejected", "cashout.reversed"),
    ),
]
# DESIGN.md §5.2: name, command topic, Kafka key, idempotency field, every result topic.
MERCHANTS_TABLE = [
    (
        "payment",
        "payment.initiated",
        "from_account_id",
        "payment_id",
        ("payment.completed", "payment.rejected"),
    ),
    (
        "refund",
        "refund.requested",
        "merchant_account_id",
        "refund_id",
        ("refund.completed", "refund.rejected"),
    ),
]
# Result topics that answer more than one command type (one topic, one model, one key).
SHARED_RESULTS = {
    "cashout.completed": (CASHOUT, CASHOUT_SETTLE),
    "cashout.rejected": (CASHOUT, CASHOUT_SETTLE, CASHOUT_RETURN),
    "cashout.voided": (CASHOUT, CASHOUT_RETURN),
}


def test_flows_match_the_design() -> None:
    assert FLOWS == (
        ONBOARDING,
        CASHIN,
        TRANSFER,
        CASHOUT,
        CASHOUT_SETTLE,
        CASHOUT_RETURN,
        PAYMENT,
        REFUND,
    )
    assert [f.name for f in FLOWS] == [
        *V1_NAMES,
        "cashout_settle",
        "cashout_return",
        "payment",
        "refund",
    ]
    # v1 is a prefix of the registry and unchanged: same flows, topics, keys and id fields.
    for flow, (command, key, completed, rejected), id_field in zip(
        FLOWS[:4], V1_TABLE, V1_ID_FIELDS, strict=True
    ):
        assert (flow.command_topic, flow.key_field) == (command, key)
        assert (flow.completed_topic, flow.rejected_topic) == (completed, rejected)
        assert flow.result_topics[:2] == (completed, rejected)
        assert flow.id_field == id_field
        assert flow.dlq_topic == f"{command}.dlq"
        assert not flow.rejection_answers  # a v1 rejection keeps its v1 shape
    for flow in (ONBOARDING, CASHIN, TRANSFER):
        assert flow.other_results == ()
        assert flow.result_topics == (flow.completed_topic, flow.rejected_topic)


def test_cashout_lifecycle_matches_the_design() -> None:
    for name, command, key, id_field, results in HOLDS_TABLE:
        flow = flow_by_name(name)
        assert (flow.command_topic, flow.key_field, flow.id_field) == (command, key, id_field)
        assert flow.result_topics == results
        assert flow.dlq_topic == f"{command}.dlq"
        assert flow.worker_name == "cashout"
    assert CASHOUT_SETTLE.command_model is SettleCashOut
    assert CASHOUT_RETURN.command_model is ReturnCashOut
    assert CASHOUT.model_of("cashout.held") is CashOutHeld
    assert CASHOUT.model_of("cashout.voided") is CashOutVoided
    assert CASHOUT_SETTLE.model_of("cashout.completed") is CashOutCompleted
    assert CASHOUT_RETURN.model_of("cashout.voided") is CashOutVoided
    assert CASHOUT_RETURN.model_of("cashout.reversed") is CashOutReversed
    assert CASHOUT_SETTLE.rejection_answers
    assert CASHOUT_RETURN.rejection_answers
    with pytest.raises(KeyError):
        CASHOUT_SETTLE.model_of("cashout.held")


def test_merchant_flows_match_the_design() -> None:
    for name, command, key, id_field, results in MERCHANTS_TABLE:
        flow = flow_by_name(name)
        assert (flow.command_topic, flow.key_field, flow.id_field) == (command, key, id_field)
        assert flow.result_topics == results
        assert flow.other_results == ()
        assert flow.dlq_topic == f"{command}.dlq"
        # Money between two wallets: the transfer worker consumes payments and refunds.
        assert flow.worker_name == "transfer"
        # Each has its own rejected topic, so its rejections need no `answers`.
        assert not flow.rejection_answers
    assert (PAYMENT.command_model, REFUND.command_model) == (InitiatePayment, RequestRefund)
    assert (PAYMENT.completed_model, PAYMENT.rejected_model) == (PaymentCompleted, PaymentRejected)
    assert (REFUND.completed_model, REFUND.rejected_model) == (RefundCompleted, RefundRejected)
    # A refund names its payment, but its own id is the idempotency key.
    assert "payment_id" in REFUND.command_model.model_fields
    assert "payment_id" in REFUND.completed_model.model_fields
    # The refund's result names the payer it credited; the payment's the merchant it paid.
    assert "to_account_id" in RefundCompleted.model_fields
    assert "merchant_account_id" in PaymentCompleted.model_fields
    with pytest.raises(KeyError):
        PAYMENT.model_of("refund.completed")


def test_workers() -> None:
    assert WORKERS == ("onboarding", "cashin", "transfer", "cashout")
    for flow in FLOWS[:4]:  # each v1 worker is named after its flow
        assert flow.worker_name == flow.name
    assert flows_of_worker("cashout") == (CASHOUT, CASHOUT_SETTLE, CASHOUT_RETURN)
    assert flows_of_worker("transfer") == (TRANSFER, PAYMENT, REFUND)
    assert {f for w in WORKERS for f in flows_of_worker(w)} == set(FLOWS)
    for name in ("cashout_settle", "payment", "refund"):
        with pytest.raises(KeyError):
            flows_of_worker(name)


def test_key_and_id_fields_exist_in_every_model() -> None:
    for flow in FLOWS:
        assert next(iter(flow.command_model.model_fields)) == flow.id_field
        assert flow.key_field in flow.command_model.model_fields
        for topic in flow.result_topics:
            model = flow.model_of(topic)
            assert next(iter(model.model_fields)) == flow.id_field, topic
            if model is not flow.rejected_model:
                # Every other result names its Kafka key's field, as the command does.
                assert flow.key_field in model.model_fields, topic
        fields = set(flow.rejected_model.model_fields)
        assert fields - {"answers"} == {flow.id_field, "reason", "detail"}
        # `answers` is optional: a rejection without it keeps the v1 shape.
        assert (
            "answers" not in fields or not flow.rejected_model.model_fields["answers"].is_required()
        )


def test_shared_result_topics_have_one_model_and_key() -> None:
    sharing: dict[str, list[str]] = {}
    for flow in FLOWS:
        for topic in flow.result_topics:
            sharing.setdefault(topic, []).append(flow.name)
    shared = {topic: names for topic, names in sharing.items() if len(names) > 1}
    assert shared == {t: [f.name for f in flows] for t, flows in SHARED_RESULTS.items()}
    for topic, flows in SHARED_RESULTS.items():
        assert {f.model_of(topic) for f in flows} == {message_model(topic)}
        assert {f.key_field for f in flows} == {"wallet_account_id"}
        assert flow_by_topic(topic) is flows[0]  # a look-up by topic finds the first flow
    # No command topic is anyone's result topic, and each command topic has one flow.
    commands = [f.command_topic for f in FLOWS]
    assert len(set(commands)) == len(commands)
    assert not set(commands) & set(sharing)


def test_answers_are_the_command_types_sharing_the_rejected_topic() -> None:
    sharing = tuple(f.command_topic for f in FLOWS if f.rejected_topic == CASHOUT.rejected_topic)
    assert get_args(CashOutCommandType) == sharing
    assert CashOutRejected.model_fields["answers"].default is None


def test_lookups() -> None:
    for flow in FLOWS:
        assert flow_by_name(flow.name) is flow
        for topic in (flow.command_topic, flow.dlq_topic):
            assert flow_by_topic(topic) is flow
            assert flow_by_topic(f"prod.{topic}", topic_prefix="prod.") is flow
        for topic in flow.result_topics:
            owner = flow_by_topic(topic)
            assert topic in owner.result_topics
            assert owner.model_of(topic) is flow.model_of(topic)
            assert flow_by_topic(f"prod.{topic}", topic_prefix="prod.") is owner
    for flow in FLOWS[:4]:  # every v1 topic still finds its v1 flow
        for topic in (*flow.message_types, flow.dlq_topic):
            assert flow_by_topic(topic) is flow
    with pytest.raises(KeyError):
        flow_by_name("chargeback")
    with pytest.raises(KeyError):
        flow_by_topic("transfer.cancelled")
    with pytest.raises(KeyError):
        flow_by_topic("transfer.initiated", topic_prefix="prod.")


def test_all_topics_and_message_types() -> None:
    topics = all_topics()
    assert len(topics) == len(set(topics)) == 31  # 23 message types and 8 dead-letter topics
    assert len(MESSAGE_TYPES) == len(set(MESSAGE_TYPES)) == 23
    assert set(MESSAGE_TYPES) | {f.dlq_topic for f in FLOWS} == set(topics)
    assert set(MESSAGE_TYPES) == {t for f in FLOWS for t in f.message_types}
    # v1's 16 topics and 12 types come first, in their v1 order.
    v1_topics = [t for row in V1_TABLE for t in (*row[:1], *row[2:], f"{row[0]}.dlq")]
    assert topics[:15] == v1_topics[:15]  # cashout.approved.dlq follows the new results
    assert set(v1_topics) <= set(topics)
    assert MESSAGE_TYPES[:12] == tuple(t for row in V1_TABLE for t in (row[0], *row[2:]))
    assert MESSAGE_TYPES[12:] == (
        "cashout.held",
        "cashout.voided",
        "cashout.settled",
        "cashout.returned",
        "cashout.reversed",
        "payment.initiated",
        "payment.completed",
        "payment.rejected",
        "refund.requested",
        "refund.completed",
        "refund.rejected",
    )
    assert topics[-8:] == [
        "payment.initiated",
        "payment.completed",
        "payment.rejected",
        "payment.initiated.dlq",
        "refund.requested",
        "refund.completed",
        "refund.rejected",
        "refund.requested.dlq",
    ]
    assert message_model("transfer.completed") is TRANSFER.completed_model
    assert message_model("refund.completed") is RefundCompleted
    assert message_model("cashout.reversed") is CashOutReversed
    with pytest.raises(KeyError):
        message_model("transfer.initiated.dlq")


def test_rejected_builds_the_rejected_model() -> None:
    transfer_id = uuid.uuid4()
    rejected = TRANSFER.rejected(transfer_id, RejectReason.SAME_ACCOUNT, "same")
    assert rejected == TransferRejected(
        transfer_id=transfer_id, reason=RejectReason.SAME_ACCOUNT, detail="same"
    )
    from_text = TRANSFER.rejected(str(transfer_id), RejectReason.ID_CONFLICT, "x" * 5000)
    assert isinstance(from_text, TransferRejected)
    assert len(from_text.detail) == 1000


def test_merchant_rejections_keep_the_plain_shape() -> None:
    payment_id, refund_id = uuid.uuid4(), uuid.uuid4()
    assert PAYMENT.rejected(payment_id, RejectReason.NOT_A_MERCHANT, "no") == PaymentRejected(
        payment_id=payment_id, reason=RejectReason.NOT_A_MERCHANT, detail="no"
    )
    for reason in (RejectReason.PAYMENT_NOT_FOUND, RejectReason.REFUND_EXCEEDS_PAYMENT):
        rejected = REFUND.rejected(str(refund_id), reason, "x" * 5000)
        assert isinstance(rejected, RefundRejected)
        assert (rejected.refund_id, rejected.reason) == (refund_id, reason)
        assert len(rejected.detail) == 1000
        assert set(rejected.model_dump()) == {"refund_id", "reason", "detail"}


def test_second_phase_rejections_say_what_they_answer() -> None:
    cashout_id = uuid.uuid4()
    v1 = CASHOUT.rejected(cashout_id, RejectReason.INSUFFICIENT_FUNDS, "no")
    assert isinstance(v1, CashOutRejected)
    assert v1.answers is None  # as in v1: absent on the wire
    assert "answers" not in v1.model_dump(exclude_none=True)
    for flow, reason in (
        (CASHOUT_SETTLE, RejectReason.HOLD_NOT_FOUND),
        (CASHOUT_RETURN, RejectReason.ALREADY_VOIDED),
    ):
        rejected = flow.rejected(str(cashout_id), reason, "x")
        assert rejected == CashOutRejected(
            cashout_id=cashout_id, reason=reason, detail="x", answers=flow.command_topic
        )


def test_no_other_contracts_module_spells_a_topic_name() -> None:
    package = Path(__file__).resolve().parents[3] / "contracts"
    topic = re.compile(r"[\"'](" + "|".join(re.escape(t) for t in all_topics()) + r")[\"']")
    # The one sanctioned exception: the `answers` type, held equal to the registry above.
    allowed = {"events.py": set(get_args(CashOutCommandType))}
    offenders = {
        path.name: spelled
        for path in package.glob("*.py")
        if path.name != "topics.py"
        and (spelled := set(topic.findall(path.read_text())) - allowed.get(path.name, set()))
    }
    assert offenders == {}
