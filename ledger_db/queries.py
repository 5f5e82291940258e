"""Read models for people and scripts: balances and account listings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID

    import asyncpg

ACCOUNTS_LISTED_MAX = 10_000

_ACCOUNT = """
SELECT a.id, a.kind, a.currency, a.status, a.customer_id, c.tier,
       coalesce(sum(b.balance), 0)::bigint AS balance
FROM accounts a
LEFT JOIN customers c ON c.id = a.customer_id
LEFT JOIN balances b ON b.account_id = a.id
"""


@dataclass(frozen=True, slots=True)
class AccountView:
    id: UUID
    kind: str
    currency: str
    status: str
    customer_id: UUID | None
    tier: str | None
    balance: int

    def as_json(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "currency": self.currency,
            "status": self.status,
            "customer_id": str(self.customer_id) if self.customer_id else None,
            "tier": self.tier,
            "balance": self.balance,
        }


def _view(row: asyncpg.Record) -> AccountView:
    return AccountView(
        row["id"],
        row["kind"],
        row["currency"].strip(),
        row["status"],
        row["customer_id"],
        row["tier"],
        row["balance"],
    )


async def get_account(conn: asyncpg.Connection, account_id: UUID) -> AccountView | None:
    row = await conn.fetchrow(_ACCOUNT + " WHERE a.id = $1 GROUP BY a.id, c.tier", account_id)
    return _view(row) if row else None


async def list_accounts(
    conn: asyncpg.Connection, limit: int = ACCOUNTS_LISTED_MAX
) -> list[AccountView]:
    rows = await conn.fetch(
        _ACCOUNT + " GROUP BY a.id, c.tier ORDER BY a.kind <> 'wallet', a.kind, a.currency, a.id"
        " LIMIT $1",
        min(limit, ACCOUNTS_LISTED_MAX),
    )
    return [_view(r) for r in rows]
