"""The one registry of flows: topic <-> command model <-> result models <-> key and id fields.

No other module spells a topic name. Workers may prepend a deployment prefix to the Kafka topic;
the CloudEvents `type` is always the unprefixed name used here.
"""

from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

from pydantic import BaseModel

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    ConfirmCashIn,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
)
from ledgerflow.contracts.events import (
    CashInCompleted,
    CashInRejected,
    CashOutCompleted,
    CashOutHeld,
    CashOutRejected,
    CashOutReversed,
    CashOutVoided,
    OnboardingCompleted,
    OnboardingRejected,
    PaymentCompleted,
    PaymentRejected,
    RefundCompleted,
    RefundRejected,
    RejectReason,
    TransferCompleted,
    TransferRejected,
    bound_detail,
)

DLQ_SUFFIX: Final = ".dlq"


@dataclass(frozen=True, slots=True)
class Flow:
    """One command topic, its command model and its result topics: `completed` and `rejected`,
    and for the cash-out flows the lifecycle's others (`held`, `voided`, `reversed`)."""

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
    worker: str = ""
    """The worker kind that consumes it (`ledgerflow worker NAME`); the flow's name if empty."""
    other_results: tuple[tuple[str, type[BaseModel]], ...] = field(default=())
    """Result topics besides completed and rejected, with their models."""
    rejection_answers: bool = False
    """Its rejections say which command type they answer (`answers`): several command types
    share one rejected topic."""

    @property
    def worker_name(self) -> str:
        return self.worker or self.name

    @property
    def result_topics(self) -> tuple[str, ...]:
        """Every topic its results are published to: completed, rejected, then the others."""
        return (self.completed_topic, self.rejected_topic, *(t for t, _ in self.other_results))

    @property
    def dlq_topic(self) -> str:
        """Where messages that cannot be attributed to a command go, unchanged."""
        return f"{self.command_topic}{DLQ_SUFFIX}"

    @property
    def message_types(self) -> tuple[str, ...]:
        """The CloudEvents types of this flow: its command, then its results."""
        return (self.command_topic, *self.result_topics)

    def model_of(self, message_type: str) -> type[BaseModel]:
        """The `data` model of one of this flow's message types."""
        if message_type == self.command_topic:
            return self.command_model
        if message_type == self.completed_topic:
            return self.completed_model
        if message_type == self.rejected_topic:
            return self.rejected_model
        for topic, model in self.other_results:
            if message_type == topic:
                return model
        raise KeyError(message_type)

    def rejected(self, id_value: UUID | str, reason: RejectReason, detail: str) -> BaseModel:
        """The `*.rejected` data for the command with id `id_value` (detail cut to its bound)."""
        data = {self.id_field: id_value, "reason": reason, "detail": bound_detail(detail)}
        if self.rejection_answers:
            data["answers"] = self.command_topic
        return self.rejected_model.model_validate(data)


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
    # Placing a hold answers `cashout.held`; its expiry (no command) answers `cashout.voided`.
    other_results=(("cashout.held", CashOutHeld), ("cashout.voided", CashOutVoided)),
)
# The second phase of a held cash-out (DESIGN.md §5.1), consumed by the cash-out worker. The
# idempotency key is (command type, cashout_id): each flow keeps its own records.
CASHOUT_SETTLE: Final = Flow(
    name="cashout_settle",
    command_topic="cashout.settled",
    command_model=SettleCashOut,
    completed_topic="cashout.completed",
    completed_model=CashOutCompleted,
    rejected_topic="cashout.rejected",
    rejected_model=CashOutRejected,
    key_field="wallet_account_id",
    id_field="cashout_id",
    worker="cashout",
    rejection_answers=True,
)
CASHOUT_RETURN: Final = Flow(
    name="cashout_return",
    command_topic="cashout.returned",
    command_model=ReturnCashOut,
    completed_topic="cashout.voided",
    completed_model=CashOutVoided,
    rejected_topic="cashout.rejected",
    rejected_model=CashOutRejected,
    key_field="wallet_account_id",
    id_field="cashout_id",
    worker="cashout",
    other_results=(("cashout.reversed", CashOutReversed),),
    rejection_answers=True,
)

# Merchants (DESIGN.md §5.2), consumed by the transfer worker: money between two wallets.
PAYMENT: Final = Flow(
    name="payment",
    command_topic="payment.initiated",
    command_model=InitiatePayment,
    completed_topic="payment.completed",
    completed_model=PaymentCompleted,
    rejected_topic="payment.rejected",
    rejected_model=PaymentRejected,
    key_field="from_account_id",
    id_field="payment_id",
    worker="transfer",
)
REFUND: Final = Flow(
    name="refund",
    command_topic="refund.requested",
    command_model=RequestRefund,
    completed_topic="refund.completed",
    completed_model=RefundCompleted,
    rejected_topic="refund.rejected",
    rejected_model=RefundRejected,
    key_field="merchant_account_id",
    id_field="refund_id",
    worker="transfer",
)

FLOWS: Final[tuple[Flow, ...]] = (
    ONBOARDING,
    CASHIN,
    TRANSFER,
    CASHOUT,
    CASHOUT_SETTLE,
    CASHOUT_RETURN,
    PAYMENT,
    REFUND,
)
WORKERS: Final[tuple[str, ...]] = tuple(dict.fromkeys(flow.worker_name for flow in FLOWS))
"""The worker kinds (`ledgerflow worker NAME`): one per v1 flow; the cash-out worker also
consumes the second-phase topics, the transfer worker payments and refunds."""

_BY_NAME: Final = {flow.name: flow for flow in FLOWS}
# A result topic shared by several flows (`cashout.completed`) maps to the first that has it.
_BY_TOPIC: Final[dict[str, Flow]] = {}
for _flow in FLOWS:
    for _topic in (*_flow.message_types, _flow.dlq_topic):
        _BY_TOPIC.setdefault(_topic, _flow)

MESSAGE_TYPES: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(t for flow in FLOWS for t in flow.message_types)
)
"""Every CloudEvents type once: each flow's command and results, in registry order."""


def flow_by_name(name: str) -> Flow:
    """The flow called `name` ("onboarding", …, "cashout_settle"); KeyError if none."""
    return _BY_NAME[name]


def flows_of_worker(worker: str) -> tuple[Flow, ...]:
    """The flows a worker kind consumes ("cashout": approve, settle, return); KeyError if none."""
    found = tuple(flow for flow in FLOWS if flow.worker_name == worker)
    if not found:
        raise KeyError(worker)
    return found


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
    """Every topic name once, per flow: command, results, dead-letter."""
    return list(dict.fromkeys(t for flow in FLOWS for t in (*flow.message_types, flow.dlq_topic)))


def message_model(message_type: str) -> type[BaseModel]:
    """The `data` model of a CloudEvents type (one of MESSAGE_TYPES); KeyError if unknown."""
    flow = _BY_TOPIC[message_type]
    return flow.model_of(message_type)
