"""The read API's response bodies (pydantic v2): what the OpenAPI document in contracts/ says.

Money is an integer of minor units, as on the wire of the commands (DESIGN.md §1).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ledgerflow.ledger_db import reads


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutgoingTotal(_Body):
    """What the wallet sent (transfers, cash-outs with their fee, payments) in the period."""

    period_start: date = Field(description="The UTC day, or the first day of the UTC month.")
    total: int = Field(ge=0)
    limit: int | None = Field(description="The tier's bound; null: unbounded.")


class Wallet(_Body):
    account_id: UUID
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    status: Literal["open", "closed"]
    kind: Literal["consumer", "merchant"]
    tier: Literal["basic", "standard", "full"]
    balance: int = Field(ge=0, description="Posted balance.")
    held: int = Field(ge=0, description="Reserved by pending cash-outs.")
    available: int = Field(ge=0, description="balance - held: what the wallet can spend.")
    outgoing_today: OutgoingTotal
    outgoing_this_month: OutgoingTotal
    limits_configured: bool = Field(
        description="False: no limits apply to the tier in this currency, so nothing can be sent."
    )

    @classmethod
    def of(cls, view: reads.WalletView) -> Wallet:
        return cls(
            account_id=view.account_id,
            currency=view.currency,
            status=view.status,
            kind=view.kind,
            tier=view.tier,
            balance=view.balance,
            held=view.held,
            available=view.available,
            outgoing_today=OutgoingTotal(
                period_start=view.today.period, total=view.today.total, limit=view.today.limit
            ),
            outgoing_this_month=OutgoingTotal(
                period_start=view.month.period, total=view.month.total, limit=view.month.limit
            ),
            limits_configured=view.limits_configured,
        )


class Entry(_Body):
    """One journal entry from the wallet's view."""

    journal_entry_id: UUID
    type: str = Field(description="The command's CloudEvents type, e.g. transfer.initiated.")
    id: UUID = Field(description="The command's id (transfer_id, cashin_id, …).")
    amount: int = Field(description="Signed, from this wallet's view: positive is money in.")
    counterparty_account_id: UUID | None = Field(
        description="The other wallet of the entry, if one took part."
    )
    balance_after: int = Field(ge=0)
    created_at: datetime = Field(description="When the entry was posted.")

    @classmethod
    def of(cls, line: reads.EntryLine) -> Entry:
        return cls(
            journal_entry_id=line.journal_entry_id,
            type=line.type,
            id=line.id,
            amount=line.amount,
            counterparty_account_id=line.counterparty_account_id,
            balance_after=line.balance_after,
            created_at=line.created_at,
        )


class EntriesPage(_Body):
    account_id: UUID
    items: list[Entry] = Field(max_length=reads.PAGE_LIMIT_MAX)
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class Statement(_Body):
    account_id: UUID
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    from_: datetime = Field(alias="from", description="Start of the range, inclusive.")
    to: datetime = Field(description="End of the range, exclusive.")
    opening_balance: int = Field(ge=0)
    closing_balance: int = Field(ge=0)
    total_in: int = Field(ge=0)
    total_out: int = Field(ge=0)
    entries: list[Entry] = Field(
        max_length=reads.STATEMENT_ENTRIES_MAX, description="Oldest first."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @classmethod
    def of(cls, statement: reads.Statement) -> Statement:
        return cls.model_validate(
            {
                "account_id": statement.account_id,
                "currency": statement.currency,
                "from": statement.start,
                "to": statement.end,
                "opening_balance": statement.opening_balance,
                "closing_balance": statement.closing_balance,
                "total_in": statement.total_in,
                "total_out": statement.total_out,
                "entries": [Entry.of(line) for line in statement.lines],
            }
        )


class BalanceAt(_Body):
    account_id: UUID
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    at: datetime
    balance: int = Field(ge=0, description="The posted balance at that instant.")


class Problem(_Body):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None

    model_config = ConfigDict(extra="allow", frozen=True)


class CloudEvent(BaseModel):
    """A result event exactly as it was published (CloudEvents 1.0, structured JSON mode)."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    time: str | None = None
    datacontenttype: str | None = None
    data: dict[str, object]

    model_config = ConfigDict(extra="allow")
