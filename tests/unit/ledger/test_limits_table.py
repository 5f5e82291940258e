"""The workers' limits: the tier_limits table, with LEDGERFLOW_BASIC_* over the basic row."""

from __future__ import annotations

from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.workers.app import tier_limits
from ledgerflow.workers.settings import Settings


def test_overrides_narrow_the_basic_row() -> None:
    table = {"basic:*": TierLimits(1_000, 5_000, 2_000, 10_000)}
    limits = tier_limits(Settings(basic_single_amount_max=10), table)
    assert limits["basic:*"] == TierLimits(10, 5_000, 2_000, 10_000)


def test_without_a_basic_row_the_overrides_invent_none() -> None:
    """A basic row made of the two overrides would leave the daily and monthly limits unbounded:
    without a row the tier fails closed instead (ledger_db/rules.py)."""
    limits = tier_limits(Settings(basic_single_amount_max=10, basic_balance_max=20), {})
    assert limits == {}
