"""The registry matches DESIGN.md §1 and is the one place that names topics."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from ledgerflow.contracts.events import RejectReason, TransferRejected
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    FLOWS,
    MESSAGE_TYPES,
    ONBOARDING,
    TRANSFER,
    all_topics,
    flow_by_name,
    flow_by_topic,
    message_model,
)

# DESIGN.md §1, "Topics": command topic, key, result topics.
DESIGN_TABLE = [
    ("onboarding.requested", "customer_id", "onboarding.completed", "onboarding.rejected"),
    ("cashin.confirmed", "wallet_account_id", "cashin.completed", "cashin.rejected"),
    ("transfer.initiated", "from_account_id", "transfer.completed", "transfer.rejected"),
    ("cashout.approved", "wallet_account_id", "cashout.completed", "cashout.rejected"),
]
ID_FIELDS = ["customer_id", "cashin_id", "transfer_id", "cashout_id"]


def test_flows_match_the_design() -> None:
    assert FLOWS == (ONBOARDING, CASHIN, TRANSFER, CASHOUT)
    assert [f.name for f in FLOWS] == ["onboarding", "cashin", "transfer", "cashout"]
    for flow, (command, key, completed, rejected), id_field in zip(
        FLOWS, DESIGN_TABLE, ID_FIELDS, strict=True
    ):
        assert (flow.command_topic, flow.key_field) == (command, key)
        assert (flow.completed_topic, flow.rejected_topic) == (completed, rejected)
        assert flow.id_field == id_field
        assert flow.dlq_topic == f"{command}.dlq"


def test_key_and_id_fields_exist_in_every_model() -> None:
    for flow in FLOWS:
        assert next(iter(flow.command_model.model_fields)) == flow.id_field
        assert flow.key_field in flow.command_model.model_fields
        assert flow.id_field in flow.completed_model.model_fields
        assert flow.id_field in flow.rejected_model.model_fields
        assert set(flow.rejected_model.model_fields) == {flow.id_field, "reason", "detail"}


def test_lookups() -> None:
    for flow in FLOWS:
        assert flow_by_name(flow.name) is flow
        for topic in (*flow.message_types, flow.dlq_topic):
            assert flow_by_topic(topic) is flow
            assert flow_by_topic(f"prod.{topic}", topic_prefix="prod.") is flow
    with pytest.raises(KeyError):
        flow_by_name("refund")
    with pytest.raises(KeyError):
        flow_by_topic("transfer.cancelled")
    with pytest.raises(KeyError):
        flow_by_topic("transfer.initiated", topic_prefix="prod.")


def test_all_topics_and_message_types() -> None:
    topics = all_topics()
    assert len(topics) == 16
    assert len(set(topics)) == 16
    assert len(MESSAGE_TYPES) == 12
    assert set(MESSAGE_TYPES) | {f.dlq_topic for f in FLOWS} == set(topics)
    assert message_model("transfer.completed") is TRANSFER.completed_model
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


def test_no_other_contracts_module_spells_a_topic_name() -> None:
    package = Path(__file__).resolve().parents[3] / "contracts"
    topic = re.compile(r"[\"'](" + "|".join(re.escape(t) for t in all_topics()) + r")[\"']")
    offenders = [
        path.name
        for path in package.glob("*.py")
        if path.name != "topics.py" and topic.search(path.read_text())
    ]
    assert offenders == []
