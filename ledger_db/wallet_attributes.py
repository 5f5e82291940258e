"""What a writer knows of its wallets between batches, besides their balance rows.

Locking a batch's wallets reads their balance rows; the rest of a `Wallet` (the account's
currency and status, the customer's tier, subject and kind) changes rarely and by hand, so a
writer keeps it and only reads it for wallets it does not know. Joining a thousand rows with
accounts and customers doubled the lock's cost (docs/benchmarks.md).

It is never stale: every change to an account or a customer bumps `wallet_attributes_version`
in its own transaction (migration 0009), each batch reads that version in the statement that
locks its wallets, and attributes of another version are forgotten and read again. Reading them
a statement before or after the lock is what the join did too: accounts and customers are never
locked by a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from uuid import UUID

# Wallets remembered per writer (about 200 bytes each); the oldest is forgotten first.
WALLETS_KNOWN_MAX = 200_000

# (currency, status, tier, owner subject, customer kind, customer id)
Attributes = tuple[str, str, str, str | None, str, "UUID | None"]


@dataclass(slots=True)
class WalletAttributes:
    """The attributes of the wallets a writer locked lately, as of one version."""

    size_max: int = WALLETS_KNOWN_MAX
    version: int | None = None
    _known: dict[UUID, Attributes] = field(default_factory=dict)

    def unknown(self, wallet_ids: Iterable[UUID]) -> list[UUID]:
        """The wallets whose attributes a batch must read with its locks."""
        known = self._known
        return [w for w in wallet_ids if w not in known]

    def get(self, version: int, wallet_id: UUID) -> Attributes | None:
        """A wallet's attributes if known at `version` (read under the batch's locks)."""
        if version != self.version:
            return None
        return self._known.get(wallet_id)

    def remember(self, version: int, wallet_id: UUID, attributes: Attributes) -> None:
        """Attributes read at `version` or later; those of another version are forgotten
        first (another batch may have read a later one meanwhile: it is checked again)."""
        known = self._known
        if version != self.version:
            known.clear()
            self.version = version
        if wallet_id not in known and len(known) >= self.size_max:
            del known[next(iter(known))]
        known[wallet_id] = attributes

    def __len__(self) -> int:
        return len(self._known)
