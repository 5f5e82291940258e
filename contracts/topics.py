"""The one registry of flows: topic <-> command model <-> result models <-> key and id fields.

No other module spells a topic name. Workers may prepend a deployment prefix to the Kafka topic;
the CloudEvents `type` is always the unprefixed name used here.
"""

from dataclasses import dataclass
from typing import Final
from uuid import UUID

from pydantic import BaseModel

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    ConfirmCashIn,
    InitiateTransfer,
    RequestOnboarding,
)
from ledgerflow.contracts.events import (
    CashInCompleted,
    CashInRejected,
    CashOutCompleted,
    CashOutRejected,
    OnboardingCompleted,
    OnboardingRejected,
    RejectReason,
    TransferCompleted,
    TransferRejected,
    bound_detail,
)

DLQ_SUFFIX: Final = ".dlq"


@dataclass(frozen=True, slots=True)
class Flow:
    """One command topic, its command model and its two result topics."""

    name: str
    command_topic: str
    command_model: type[BaseModel]
    completed_topic: str
    completed_model: type[BaseModel]
    rejected_topic: str
    rejected_model: type[BaseModel]
    key_field: str
    """Field of the command whose value is the Kafka message key of the command and results."""
    id_field: str
    """Field of the command that is its idempotency key."""

    @property
    def dlq_topic(self) -> str:
        """Where messages that cannot be attributed to a command go, unchanged."""
        return f"{self.command_topic}{DLQ_SUFFIX}"

    @property
    def message_types(self) -> tuple[str, str, str]:
        """The CloudEvents types of this flow: command, completed, rejected."""
        return (self.command_topic, self.completed_topic, self.rejected_topic)

    def model_of(self, message_type: str) -> type[BaseModel]:
        """The `data` model of one of this flow's message types."""
        if message_type == self.command_topic:
            return self.command_model
        if message_type == self.completed_topic:
            return self.completed_model
        if message_type == self.rejected_topic:
            return self.rejected_model
        raise KeyError(message_type)

    def rejected(self, id_value: UUID | str, reason: RejectReason, detail: str) -> BaseModel:
        """The `*.rejected` data for the command with id `id_value` (detail cut to its bound)."""
        return self.rejected_model.model_validate(
            {self.id_field: id_value, "reason": reason, "detail": bound_detail(detail)}
        )


ONBOARDING: Final = Flow(
    name="onboarding",
    command_topic="onboarding.requested",
    command_model=RequestOnboarding,
    completed_topic="onboarding.completed",
    completed_model=OnboardingCompleted,
    rejected_topic="onboarding.rejected",
    rejected_model=OnboardingRejected,
    key_field="customer_id",
    id_field="customer_id",
)
CASHIN: Final = Flow(
    name="cashin",
    command_topic="cashin.confirmed",
    command_model=ConfirmCashIn,
    completed_topic="cashin.completed",
    completed_model=CashInCompleted,
    rejected_topic="cashin.rejected",
    rejected_model=CashInRejected,
    key_field="wallet_account_id",
    id_field="cashin_id",
)
TRANSFER: Final = Flow(
    name="transfer",
    command_topic="transfer.initiated",
    command_model=InitiateTransfer,
    completed_topic="transfer.completed",
    completed_model=TransferCompleted,
    rejected_topic="transfer.rejected",
    rejected_model=TransferRejected,
    key_field="from_account_id",
    id_field="transfer_id",
)
CASHOUT: Final = Flow(
    name="cashout",
    command_topic="cashout.approved",
    command_model=ApproveCashOut,
    completed_topic="cashout.completed",
    completed_model=CashOutCompleted,
    rejected_topic="cashout.rejected",
    rejected_model=CashOutRejected,
    key_field="wallet_account_id",
    id_field="cashout_id",
)

FLOWS: Final[tuple[Flow, ...]] = (ONBOARDING, CASHIN, TRANSFER, CASHOUT)

_BY_NAME: Final = {flow.name: flow for flow in FLOWS}
_BY_TOPIC: Final = {
    topic: flow for flow in FLOWS for topic in (*flow.message_types, flow.dlq_topic)
}

MESSAGE_TYPES: Final[tuple[str, ...]] = tuple(t for flow in FLOWS for t in flow.message_types)
"""The 12 CloudEvents types: each flow's command, completed and rejected, in registry order."""


def flow_by_name(name: str) -> Flow:
    """The flow called `name` ("onboarding", "cashin", "transfer", "cashout"); KeyError if none."""
    return _BY_NAME[name]


def flow_by_topic(topic: str, *, topic_prefix: str = "") -> Flow:
    """The flow owning `topic` (its command, result or dead-letter topic); KeyError if none.

    `topic_prefix` is the deployment prefix the workers prepend, stripped before the look-up.
    """
    if topic_prefix:
        if not topic.startswith(topic_prefix):
            raise KeyError(topic)
        topic = topic[len(topic_prefix) :]
    return _BY_TOPIC[topic]


def all_topics() -> list[str]:
    """Every topic name, per flow: command, completed, rejected, dead-letter."""
    return [topic for flow in FLOWS for topic in (*flow.message_types, flow.dlq_topic)]


def message_model(message_type: str) -> type[BaseModel]:
    """The `data` model of a CloudEvents type (one of MESSAGE_TYPES); KeyError if unknown."""
    flow = _BY_TOPIC[message_type]
    return flow.model_of(message_type)
