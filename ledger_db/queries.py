"""Read models for people and scripts: balances, account listings, pending holds and merchants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    import asyncpg

ACCOUNTS_LISTED_MAX = 10_000
HOLDS_LISTED_MAX = 10_000

_ACCOUNT = """
SELECT a.id, a.kind, a.currency, a.status, a.customer_id, c.tier,
       coalesce(sum(b.balance), 0)::bigint AS balance,
       coalesce(sum(b.held), 0)::bigint AS held
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
    # Reserved by pending holds (two-phase cash-outs); always 0 for house accounts.
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held

    def as_json(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "currency": self.currency,
            "status": self.status,
            "customer_id": str(self.customer_id) if self.customer_id else None,
            "tier": self.tier,
            "balance": self.balance,
            "held": self.held,
            "available": self.available,
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
        row["held"],
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


# Pending holds, soonest to expire first (the index of the expiry sweep), optionally of one
# wallet ($1) and expiring within $2 seconds of the database's clock.
_PENDING_HOLDS = """
SELECT cashout_id, wallet_account_id, amount, fee, currency, placed_at, expires_at
FROM holds
WHERE status = 'pending'
  AND ($1::uuid IS NULL OR wallet_account_id = $1::uuid)
  AND ($2::bigint IS NULL OR expires_at <= clock_timestamp() + make_interval(secs => $2::bigint))
ORDER BY expires_at, cashout_id
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class HoldView:
    cashout_id: UUID
    wallet_account_id: UUID
    amount: int
    fee: int
    currency: str
    placed_at: datetime
    expires_at: datetime

    def as_json(self) -> dict[str, object]:
        return {
            "cashout_id": str(self.cashout_id),
            "wallet_account_id": str(self.wallet_account_id),
            "amount": self.amount,
            "fee": self.fee,
            "currency": self.currency,
            "placed_at": self.placed_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


async def list_pending_holds(
    conn: asyncpg.Connection,
    wallet: UUID | None = None,
    expiring_within_s: int | None = None,
    limit: int = 100,
) -> list[HoldView]:
    """Pending holds, soonest to expire first, at most `limit` (bounded by HOLDS_LISTED_MAX)."""
    rows = await conn.fetch(
        _PENDING_HOLDS, wallet, expiring_within_s, max(1, min(limit, HOLDS_LISTED_MAX))
    )
    return [
        HoldView(
            r["cashout_id"],
            r["wallet_account_id"],
            r["amount"],
            r["fee"],
            r["currency"].strip(),
            r["placed_at"],
            r["expires_at"],
        )
        for r in rows
    ]


MERCHANTS_LISTED_MAX = 10_000

# Merchant customers, oldest first, each with its wallets (with balances) and the fee schedule
# in force: its latest merchant_fees row (none: the deployment's default applies).
_MERCHANTS = """
SELECT c.id AS customer_id, c.tier, c.created_at,
       w.wallets, w.currencies, w.balances,
       f.bps, f.fixed, f.changed_at, f.changed_by
FROM customers c
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(a.id ORDER BY a.currency, a.id), '{}') AS wallets,
           coalesce(array_agg(a.currency::text ORDER BY a.currency, a.id), '{}') AS currencies,
           coalesce(array_agg(coalesce(b.balance, 0) ORDER BY a.currency, a.id), '{}')
               AS balances
    FROM accounts a
    LEFT JOIN balances b ON b.account_id = a.id AND b.shard = 0
    WHERE a.customer_id = c.id AND a.kind = 'wallet'
) AS w
LEFT JOIN LATERAL (
    SELECT m.bps, m.fixed, m.changed_at, m.changed_by
    FROM merchant_fees m WHERE m.customer_id = c.id
    ORDER BY m.changed_at DESC, m.id DESC
    LIMIT 1
) AS f ON true
WHERE c.kind = 'merchant'
ORDER BY c.created_at, c.id
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class MerchantWallet:
    account_id: UUID
    currency: str
    balance: int


@dataclass(frozen=True, slots=True)
class MerchantView:
    """A merchant customer, its wallets and the fee in force. `changed_at` is None when no fee
    was ever set: the deployment's default (LEDGERFLOW_MERCHANT_FEE_BPS, _FIXED) applies, given
    here as `bps` and `fixed`."""

    customer_id: UUID
    tier: str
    created_at: datetime
    wallets: tuple[MerchantWallet, ...]
    bps: int
    fixed: int
    changed_at: datetime | None
    changed_by: str | None

    @property
    def fee_is_default(self) -> bool:
        return self.changed_at is None

    def as_json(self) -> dict[str, object]:
        return {
            "customer_id": str(self.customer_id),
            "tier": self.tier,
            "created_at": self.created_at.isoformat(),
            "wallets": [
                {"account_id": str(w.account_id), "currency": w.currency, "balance": w.balance}
                for w in self.wallets
            ],
            "fee": {
                "bps": self.bps,
                "fixed": self.fixed,
                "default": self.fee_is_default,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None,
                "changed_by": self.changed_by,
            },
        }


async def list_merchants(
    conn: asyncpg.Connection, default_bps: int, default_fixed: int, limit: int = 100
) -> list[MerchantView]:
    """Merchants, oldest first, at most `limit` (bounded by MERCHANTS_LISTED_MAX); a merchant
    without a fee schedule of its own shows the default given."""
    rows = await conn.fetch(_MERCHANTS, max(1, min(limit, MERCHANTS_LISTED_MAX)))
    return [
        MerchantView(
            r["customer_id"],
            r["tier"],
            r["created_at"],
            tuple(
                MerchantWallet(a, c.strip(), b)
                for a, c, b in zip(r["wallets"], r["currencies"], r["balances"], strict=True)
            ),
            default_bps if r["changed_at"] is None else r["bps"],
            default_fixed if r["changed_at"] is None else r["fixed"],
            r["changed_at"],
            r["changed_by"],
        )
        for r in rows
    ]
