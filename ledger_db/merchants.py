"""Operations on merchants (DESIGN.md §5.2): setting a merchant's fee schedule.

A merchant's fee is set by operations, never by a command: each change is a new row of
`merchant_fees` (append-only, the latest in force from the next payment on), naming who set it.
`ledgerflow merchants set-fee` and the demo both go through `set_merchant_fee`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledgerflow.contracts.money import MAX_AMOUNT
from ledgerflow.ledger_db.rules import BPS_PER_UNIT

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    import asyncpg

CHANGED_BY_MAX_CHARS = 200  # merchant_fees.changed_by (migration 0007)

# One statement: the row is written only if the customer is a merchant (a customer's kind never
# changes after onboarding: the app role may not update it), so nothing can slip between a
# check and the insert.
_INSERT_FEE = """
INSERT INTO merchant_fees (customer_id, bps, fixed, changed_by)
SELECT c.id, $2, $3, $4 FROM customers c WHERE c.id = $1 AND c.kind = 'merchant'
RETURNING id, customer_id, bps, fixed, changed_at, changed_by
"""
_CUSTOMER_KIND = "SELECT kind FROM customers WHERE id = $1"


class FeeRefusedError(ValueError):
    """A fee schedule that may not be set; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class MerchantFee:
    """One row of a merchant's fee history."""

    id: int
    customer_id: UUID
    bps: int
    fixed: int
    changed_at: datetime
    changed_by: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "customer_id": str(self.customer_id),
            "bps": self.bps,
            "fixed": self.fixed,
            "changed_at": self.changed_at.isoformat(),
            "changed_by": self.changed_by,
        }


def check_fee(bps: int, fixed: int, changed_by: str) -> None:
    """Refuse, with the reason, a schedule the ledger could not charge or a missing operator."""
    if not 0 <= bps <= BPS_PER_UNIT:
        raise FeeRefusedError(f"--bps must be between 0 and {BPS_PER_UNIT} (100%), not {bps}")
    if fixed < 0:
        raise FeeRefusedError(f"--fixed must not be negative, not {fixed}")
    if fixed > MAX_AMOUNT:
        raise FeeRefusedError(f"--fixed must be at most {MAX_AMOUNT:,} minor units, not {fixed}")
    if not 1 <= len(changed_by) <= CHANGED_BY_MAX_CHARS:
        raise FeeRefusedError(
            f"who sets the fee must be 1 to {CHANGED_BY_MAX_CHARS} characters (--by or $USER)"
        )


async def set_merchant_fee(
    conn: asyncpg.Connection, customer_id: UUID, bps: int, fixed: int, changed_by: str
) -> MerchantFee:
    """Put a new fee schedule in force for a merchant customer: bps of each payment's amount
    plus `fixed` minor units, capped at the amount. Raises FeeRefusedError for a schedule out of
    bounds, an unknown customer or one that is not a merchant."""
    check_fee(bps, fixed, changed_by)
    row = await conn.fetchrow(_INSERT_FEE, customer_id, bps, fixed, changed_by)
    if row is None:
        kind = await conn.fetchval(_CUSTOMER_KIND, customer_id)
        if kind is None:
            raise FeeRefusedError(f"no customer {customer_id}")
        raise FeeRefusedError(f"customer {customer_id} is a {kind}, not a merchant: it has no fee")
    return MerchantFee(
        row["id"],
        row["customer_id"],
        row["bps"],
        row["fixed"],
        row["changed_at"],
        row["changed_by"],
    )
