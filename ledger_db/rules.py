"""The ledger's pure rules: what a command does to which accounts. No I/O.

`Book` is the in-memory view of the rows one batch touches (locked by the caller). Deciding a
command mutates the book, so the second of two debits in one batch sees the first. Every
accepted command yields balanced postings; that invariant is asserted here and enforced again by
PostgreSQL at commit.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, cast

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    ConfirmCashIn,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
)
from ledgerflow.contracts.events import RejectReason, Tier, VoidReason

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import date, datetime
    from uuid import UUID

# Fixed forever: account and entry ids derive from it, so every replica computes the same ids.
LEDGER_NAMESPACE = uuid.UUID("6f1c3b52-5d0e-4c7b-9a55-2f7f1e0c8a11")

LedgerCommand = (
    RequestOnboarding
    | ConfirmCashIn
    | InitiateTransfer
    | ApproveCashOut
    | SettleCashOut
    | ReturnCashOut
    | InitiatePayment
    | RequestRefund
)
BPS_PER_UNIT = 10_000


class AccountKind(StrEnum):
    WALLET = "wallet"
    CASHIN_CLEARING = "cashin_clearing"
    CASHOUT_CLEARING = "cashout_clearing"
    FEE_REVENUE = "fee_revenue"


HOUSE_KINDS = (AccountKind.CASHIN_CLEARING, AccountKind.CASHOUT_CLEARING, AccountKind.FEE_REVENUE)


# House accounts are a few kinds per currency, named on every payment, refund and cash-in: a
# SHA-1 each time was ~4 % of a worker's CPU in the refund flow (docs/benchmarks.md).
HOUSE_IDS_CACHED = 256


@functools.lru_cache(maxsize=HOUSE_IDS_CACHED)
def house_account_id(kind: AccountKind, currency: str) -> UUID:
    return uuid.uuid5(LEDGER_NAMESPACE, f"house:{kind.value}:{currency}")


def wallet_account_id(customer_id: UUID, currency: str) -> UUID:
    return uuid.uuid5(LEDGER_NAMESPACE, f"wallet:{customer_id}:{currency}")


@dataclass(frozen=True, slots=True)
class TierLimits:
    """Bounds in minor units; None means unbounded. A tier without limits moves no money."""

    single_amount_max: int | None = None
    balance_max: int | None = None
    daily_out_max: int | None = None
    monthly_out_max: int | None = None


@dataclass(slots=True)
class Wallet:
    id: UUID
    currency: str
    status: str
    tier: str
    balance: int
    # The identity-provider subject bound at onboarding; None for wallets opened unauthenticated.
    owner: str | None = None
    # Debited so far on the wallet's current day and month (UTC), for the daily and monthly
    # limits, and that day: the later of the row's and the clock's, read under the row's lock.
    out_today: int = 0
    out_month: int = 0
    out_day: date | None = None
    # Reserved by pending holds (two-phase cash-outs); every debit checks `available`.
    held: int = 0
    kind: str = CustomerKind.CONSUMER.value
    customer_id: UUID | None = None

    @property
    def available(self) -> int:
        return self.balance - self.held


class CashOutState(StrEnum):
    PENDING = "pending"  # held, waiting for the bank
    SETTLED = "settled"  # held, then posted
    VOIDED = "voided"  # held, then released (returned or expired)
    IMMEDIATE = "immediate"  # posted at once (v1), never held


@dataclass(slots=True)
class CashOut:
    """A cash-out the second phase may act on: a hold (any state) or an immediate cash-out, as
    locked by the batch. Deciding a command on it moves it on, so a second command in the same
    batch sees the first's effect."""

    cashout_id: UUID
    wallet_id: UUID
    currency: str
    amount: int
    fee: int
    state: CashOutState
    expires_at: datetime | None = None
    out_day: date | None = None  # the day a hold counted toward the outgoing totals
    void_reason: VoidReason | None = None
    reversed: bool = False
    # The approving command's CloudEvents id and correlation id (a hold's): what an expiry answers.
    approved_by: tuple[str, str] | None = None

    @property
    def total(self) -> int:
        return self.amount + self.fee

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """A merchant's fee: basis points of the amount, plus a fixed part, in minor units."""

    bps: int = 150
    fixed: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.bps <= BPS_PER_UNIT, "a fee is at most the whole amount"
        assert self.fixed >= 0, "a fixed fee is never negative"

    def fee(self, amount: int) -> int:
        """min(amount, floor(amount * bps / 10,000) + fixed), in integers: at most the amount."""
        return min(amount, amount * self.bps // BPS_PER_UNIT + self.fixed)


def fee_returned_total(fee: int, refunded: int, amount: int) -> int:
    """The fee returned once refunds total `refunded` of a payment: floor(fee * refunded / amount),
    so a full refund returns exactly the fee."""
    assert amount > 0, "a payment moves money"
    assert 0 <= refunded <= amount, "refunds never pass the payment"
    return fee * refunded // amount


@dataclass(slots=True)
class Payment:
    """A completed payment as its refunds see it (locked by the batch)."""

    payment_id: UUID
    payer_id: UUID
    merchant_id: UUID
    currency: str
    amount: int
    fee: int
    refunded: int = 0
    fee_returned: int = 0


@dataclass(frozen=True, slots=True)
class Posting:
    """A signed amount: positive credits the account, negative debits it."""

    account_id: UUID
    currency: str
    amount: int


@dataclass(frozen=True, slots=True)
class MoneyMoved:
    entry_id: UUID
    postings: tuple[Posting, ...]
    balance_after: int
    # The day whose outgoing totals the wallet debit counted toward; None when no wallet is debited.
    out_day: date | None = None
    # Per posting, the wallet's balance once it applied (the read side's running balance); None
    # for a house account, whose balance is split over shards.
    balances_after: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class HoldPlaced:
    """amount + fee reserved on the wallet; no journal entry until it settles."""

    cashout: CashOut
    expires_at: datetime
    available_after: int


@dataclass(frozen=True, slots=True)
class HoldVoided:
    """A hold released (returned by the bank, or expired): the money never left the wallet.
    What it had counted toward the outgoing totals is given back while its day (month) is
    current."""

    cashout: CashOut
    reason: VoidReason
    available_after: int
    day_given_back: bool
    month_given_back: bool


@dataclass(frozen=True, slots=True)
class CustomerOpened:
    customer_id: UUID
    wallet: Wallet


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class RefundDecided:
    """A refund's entry, and its payment after it (refunded so far, fee returned so far)."""

    moved: MoneyMoved
    payment: Payment
    fee_returned: int


Decision = MoneyMoved | CustomerOpened | HoldPlaced | HoldVoided | RefundDecided | Rejected


def assert_balanced(postings: Iterable[Posting]) -> None:
    """Double entry: at least two postings, summing to zero per currency. A bug if violated."""
    sums: dict[str, int] = defaultdict(int)
    count = 0
    for posting in postings:
        assert posting.amount != 0, "a posting moves money"
        sums[posting.currency] += posting.amount
        count += 1
    assert count >= 2, "an entry has at least two postings"
    assert all(total == 0 for total in sums.values()), f"unbalanced entry: {dict(sums)}"


@dataclass(slots=True)
class Book:
    """The wallets, phone numbers and limits one batch needs, as locked in the database."""

    wallets: dict[UUID, Wallet]
    taken_phone_numbers: set[str]
    limits: Mapping[str, TierLimits]
    new_customers: list[CustomerOpened] = field(default_factory=list)
    # Debits per wallet decided in this batch, to add to the current day's and month's outgoing
    # totals (a void's give-back is negative).
    outgoing: dict[UUID, int] = field(default_factory=dict)
    outgoing_month: dict[UUID, int] = field(default_factory=dict)
    # Change of each wallet's held amount in this batch.
    held: dict[UUID, int] = field(default_factory=dict)
    # The cash-outs the second phase names (and the holds the batch places), by cashout_id.
    cashouts: dict[UUID, CashOut] = field(default_factory=dict)
    # The clock's UTC day read under the batch's locks: the current day of a wallet opened here.
    today: date | None = None
    # The clock's instant under the locks: when holds placed here expire from, and which expire.
    now: datetime | None = None
    # When the batch's postings are posted: `now`, or the latest posting of a locked wallet when
    # that is later (a clock that stepped back), so a wallet's history never goes back in time.
    posted_at: datetime | None = None
    # LEDGERFLOW_HOLD_EXPIRES_S: a hold's life when its command does not say.
    hold_expires_s: int = 259_200
    # Merchants' fee schedules in force, by customer id; the default for those without one.
    fees: Mapping[UUID, FeeSchedule] = field(default_factory=dict)
    default_fee: FeeSchedule = field(default_factory=FeeSchedule)
    # The payments the batch's refunds name, and those it completes, by payment_id.
    payments: dict[UUID, Payment] = field(default_factory=dict)
    # Journal-entry ids made before the batch took its locks, drawn from the end; once they run
    # out, each is made when needed. Random: the journal's UNIQUE (flow, idempotency_key) is
    # what refuses a second application, not the id.
    entry_ids: list[UUID] = field(default_factory=list)

    def refuse_owner(self, command: LedgerCommand, subject: str | None) -> str | None:
        """Why `subject` may not debit the wallet the command names (None: it may).

        Only checked when authentication is on (a subject is given). A debit needs the owner;
        a wallet that does not exist is left to the rules (account_not_found).
        """
        if subject is None:
            return None
        kind = type(command)
        if kind is InitiateTransfer:
            debited = cast("InitiateTransfer", command).from_account_id
        elif kind is ApproveCashOut:
            debited = cast("ApproveCashOut", command).wallet_account_id
        elif kind is InitiatePayment:
            debited = cast("InitiatePayment", command).from_account_id
        elif kind is RequestRefund:
            debited = cast("RequestRefund", command).merchant_account_id
        else:
            return None
        wallet = self.wallets.get(debited)
        if wallet is not None and wallet.owner != subject:
            return "the token's subject does not own the debited wallet"
        return None

    def decide(self, command: LedgerCommand, subject: str | None = None) -> Decision:
        # Dispatch on the exact type: isinstance on pydantic models goes through ABCMeta, which
        # costs more than the whole rule on the hot path.
        kind = type(command)
        if kind is InitiateTransfer:
            return self._transfer(cast("InitiateTransfer", command))
        if kind is ConfirmCashIn:
            return self._cash_in(cast("ConfirmCashIn", command))
        if kind is ApproveCashOut:
            return self._cash_out(cast("ApproveCashOut", command))
        if kind is SettleCashOut:
            return self._settle(cast("SettleCashOut", command))
        if kind is ReturnCashOut:
            return self._return(cast("ReturnCashOut", command))
        if kind is InitiatePayment:
            return self._payment(cast("InitiatePayment", command))
        if kind is RequestRefund:
            return self._refund(cast("RequestRefund", command))
        assert kind is RequestOnboarding, kind
        return self._onboard(cast("RequestOnboarding", command), subject)

    # -- flows -------------------------------------------------------------------------------

    def _onboard(self, cmd: RequestOnboarding, subject: str | None) -> Decision:
        if cmd.phone_number in self.taken_phone_numbers:
            return Rejected(RejectReason.PHONE_NUMBER_TAKEN, "the phone number has a wallet")
        wallet = Wallet(
            id=wallet_account_id(cmd.customer_id, cmd.currency),
            currency=cmd.currency,
            status="open",
            tier=Tier.BASIC.value,
            balance=0,
            owner=subject,
            out_day=self.today,
            kind=cmd.customer_kind.value,
            customer_id=cmd.customer_id,
        )
        if wallet.id in self.wallets:
            # Only reachable if a customer row exists without its idempotency record.
            return Rejected(RejectReason.ID_CONFLICT, "the customer already has a wallet")
        self.taken_phone_numbers.add(cmd.phone_number)
        self.wallets[wallet.id] = wallet
        opened = CustomerOpened(customer_id=cmd.customer_id, wallet=wallet)
        self.new_customers.append(opened)
        return opened

    def _cash_in(self, cmd: ConfirmCashIn) -> Decision:
        wallet = self._wallet(cmd.wallet_account_id, cmd.currency)
        if isinstance(wallet, Rejected):
            return wallet
        refused = self._over_single_limit(wallet, cmd.amount) or self._over_balance_limit(
            wallet, cmd.amount
        )
        if refused:
            return refused
        clearing = house_account_id(AccountKind.CASHIN_CLEARING, cmd.currency)
        postings = (
            Posting(clearing, cmd.currency, -cmd.amount),
            Posting(wallet.id, cmd.currency, cmd.amount),
        )
        return self._post(postings, wallet)

    def _transfer(self, cmd: InitiateTransfer) -> Decision:
        if cmd.from_account_id == cmd.to_account_id:
            return Rejected(RejectReason.SAME_ACCOUNT, "sender and receiver are one account")
        sender = self._wallet(cmd.from_account_id, cmd.currency, role="sender")
        if isinstance(sender, Rejected):
            return sender
        receiver = self._wallet(cmd.to_account_id, cmd.currency, role="receiver")
        if isinstance(receiver, Rejected):
            return receiver
        refused = self._over_single_limit(sender, cmd.amount)
        if refused:
            return refused
        if sender.available < cmd.amount:
            return Rejected(
                RejectReason.INSUFFICIENT_FUNDS, "the sender's available balance is too low"
            )
        refused = self._over_period_limits(sender, cmd.amount)
        if refused:
            return refused
        refused = self._over_balance_limit(receiver, cmd.amount, role="receiver")
        if refused:
            return refused
        postings = (
            Posting(sender.id, cmd.currency, -cmd.amount),
            Posting(receiver.id, cmd.currency, cmd.amount),
        )
        return self._post(postings, sender)

    def _cash_out(self, cmd: ApproveCashOut) -> Decision:
        wallet = self._wallet(cmd.wallet_account_id, cmd.currency)
        if isinstance(wallet, Rejected):
            return wallet
        refused = self._over_single_limit(wallet, cmd.amount)
        if refused:
            return refused
        if wallet.available < cmd.amount + cmd.fee:
            return Rejected(
                RejectReason.INSUFFICIENT_FUNDS,
                "the available balance does not cover amount and fee",
            )
        refused = self._over_period_limits(wallet, cmd.amount + cmd.fee)
        if refused:
            return refused
        if cmd.holds:
            return self._hold(cmd, wallet)
        paid = CashOut(
            cmd.cashout_id,
            wallet.id,
            cmd.currency,
            cmd.amount,
            cmd.fee,
            CashOutState.IMMEDIATE,
        )
        return self._post(_cash_out_postings(paid, wallet.id), wallet)

    def _payment(self, cmd: InitiatePayment) -> Decision:
        if cmd.from_account_id == cmd.merchant_account_id:
            return Rejected(RejectReason.SAME_ACCOUNT, "payer and merchant are one account")
        payer = self._wallet(cmd.from_account_id, cmd.currency, role="payer")
        if isinstance(payer, Rejected):
            return payer
        merchant = self._wallet(cmd.merchant_account_id, cmd.currency, role="merchant")
        if isinstance(merchant, Rejected):
            return merchant
        if merchant.kind != CustomerKind.MERCHANT.value:
            return Rejected(RejectReason.NOT_A_MERCHANT, "the receiving wallet is not a merchant's")
        refused = self._over_single_limit(payer, cmd.amount)
        if refused:
            return refused
        if payer.available < cmd.amount:
            return Rejected(
                RejectReason.INSUFFICIENT_FUNDS, "the payer's available balance is too low"
            )
        refused = self._over_period_limits(payer, cmd.amount)
        if refused:
            return refused
        assert merchant.customer_id is not None, "a merchant wallet has its customer"
        fee = self.fees.get(merchant.customer_id, self.default_fee).fee(cmd.amount)
        postings = [Posting(payer.id, cmd.currency, -cmd.amount)]
        if cmd.amount - fee:
            postings.append(Posting(merchant.id, cmd.currency, cmd.amount - fee))
        if fee:
            fee_revenue = house_account_id(AccountKind.FEE_REVENUE, cmd.currency)
            postings.append(Posting(fee_revenue, cmd.currency, fee))
        moved = self._post(tuple(postings), payer)
        self.payments[cmd.payment_id] = Payment(
            cmd.payment_id, payer.id, merchant.id, cmd.currency, cmd.amount, fee
        )
        return moved

    def _refund(self, cmd: RequestRefund) -> Decision:
        payment = self.payments.get(cmd.payment_id)
        if payment is None or payment.merchant_id != cmd.merchant_account_id:
            return Rejected(
                RejectReason.PAYMENT_NOT_FOUND, "no payment with this id to this merchant"
            )
        merchant = self._wallet(cmd.merchant_account_id, cmd.currency, role="merchant")
        if isinstance(merchant, Rejected):
            return merchant
        payer = self.wallets.get(payment.payer_id)
        if payer is None:  # locked with the batch: only missing if the ledger is broken
            raise AssertionError(f"payment {payment.payment_id}: its payer is not locked")
        if payer.status != "open":
            return Rejected(RejectReason.ACCOUNT_CLOSED, "the payer's account is closed")
        if cmd.amount > payment.amount - payment.refunded:
            return Rejected(
                RejectReason.REFUND_EXCEEDS_PAYMENT,
                f"only {payment.amount - payment.refunded} of the payment is left to refund",
            )
        refunded = payment.refunded + cmd.amount
        fee_back = fee_returned_total(payment.fee, refunded, payment.amount) - payment.fee_returned
        from_merchant = cmd.amount - fee_back
        if merchant.available < from_merchant:
            return Rejected(
                RejectReason.INSUFFICIENT_FUNDS, "the merchant's available balance is too low"
            )
        postings = [Posting(payer.id, cmd.currency, cmd.amount)]
        if from_merchant:
            postings.append(Posting(merchant.id, cmd.currency, -from_merchant))
        if fee_back:
            fee_revenue = house_account_id(AccountKind.FEE_REVENUE, cmd.currency)
            postings.append(Posting(fee_revenue, cmd.currency, -fee_back))
        # Refunds are not limited by the merchant's tier, nor counted toward its totals.
        moved = self._post(tuple(postings), merchant, counts_outgoing=False)
        payment.refunded, payment.fee_returned = refunded, payment.fee_returned + fee_back
        return RefundDecided(moved, payment, fee_back)

    def _hold(self, cmd: ApproveCashOut, wallet: Wallet) -> HoldPlaced:
        assert self.now is not None, "a hold is placed in a batch that read the clock"
        if cmd.cashout_id in self.cashouts:
            # Only reachable if a hold row exists without its idempotency record.
            raise AssertionError(f"cash-out {cmd.cashout_id} is held already")
        total = cmd.amount + cmd.fee
        expires_in = cmd.hold_expires_in_s or self.hold_expires_s
        expires_at = self.now + timedelta(seconds=expires_in)
        wallet.held += total
        self._count_outgoing(wallet, total)
        cashout = CashOut(
            cmd.cashout_id,
            wallet.id,
            cmd.currency,
            cmd.amount,
            cmd.fee,
            CashOutState.PENDING,
            expires_at=expires_at,
            out_day=wallet.out_day,
        )
        self.cashouts[cmd.cashout_id] = cashout
        self.held[wallet.id] = self.held.get(wallet.id, 0) + total
        assert wallet.available >= 0, "a hold never takes more than is available"
        return HoldPlaced(cashout, expires_at, wallet.available)

    def _settle(self, cmd: SettleCashOut) -> Decision:
        cashout = self._named_cashout(cmd.cashout_id, cmd.wallet_account_id)
        if isinstance(cashout, Rejected):
            return cashout
        refused = self._second_phase_refusal(cashout, settling=True)
        if refused:
            return refused
        wallet = self.wallets[cashout.wallet_id]
        wallet.held -= cashout.total
        self.held[wallet.id] = self.held.get(wallet.id, 0) - cashout.total
        cashout.state = CashOutState.SETTLED
        # Counted toward the outgoing totals when it was held: the entry is not counted again.
        return self._post(_cash_out_postings(cashout, wallet.id), wallet, counts_outgoing=False)

    def _return(self, cmd: ReturnCashOut) -> Decision:
        cashout = self._named_cashout(cmd.cashout_id, cmd.wallet_account_id)
        if isinstance(cashout, Rejected):
            return cashout
        refused = self._second_phase_refusal(cashout, settling=False)
        if refused:
            return refused
        if cashout.state is CashOutState.PENDING:
            return self._void(cashout, VoidReason.RETURNED)
        # Paid out, and the bank sent it back: the mirror of the cash-out's entry.
        cashout.reversed = True
        wallet = self.wallets[cashout.wallet_id]
        mirrored = tuple(
            Posting(p.account_id, p.currency, -p.amount)
            for p in _cash_out_postings(cashout, wallet.id)
        )
        return self._post(mirrored, wallet, counts_outgoing=False)

    def expire(self, cashout_id: UUID) -> HoldVoided | None:
        """Void a pending hold whose time is up; None when it is not (settled, returned or
        expired meanwhile, by another replica or command): the sweep then does nothing."""
        assert self.now is not None, "expiry reads the clock under the locks"
        cashout = self.cashouts.get(cashout_id)
        if (
            cashout is None
            or cashout.state is not CashOutState.PENDING
            or not cashout.expired_at(self.now)
            or cashout.wallet_id not in self.wallets
        ):
            return None
        return self._void(cashout, VoidReason.EXPIRED)

    def _void(self, cashout: CashOut, reason: VoidReason) -> HoldVoided:
        wallet = self.wallets[cashout.wallet_id]
        wallet.held -= cashout.total
        assert wallet.held >= 0, "a wallet never holds less than nothing"
        self.held[wallet.id] = self.held.get(wallet.id, 0) - cashout.total
        cashout.state, cashout.void_reason = CashOutState.VOIDED, reason
        # Give back what the hold counted, while its day (month) is still the wallet's current.
        same_day = cashout.out_day is not None and cashout.out_day == wallet.out_day
        same_month = (
            cashout.out_day is not None
            and wallet.out_day is not None
            and (cashout.out_day.year, cashout.out_day.month)
            == (wallet.out_day.year, wallet.out_day.month)
        )
        if same_day:
            wallet.out_today -= cashout.total
            self.outgoing[wallet.id] = self.outgoing.get(wallet.id, 0) - cashout.total
        if same_month:
            wallet.out_month -= cashout.total
            self.outgoing_month[wallet.id] = self.outgoing_month.get(wallet.id, 0) - cashout.total
        assert wallet.out_today >= 0, "a give-back returns only what was counted"
        assert wallet.out_month >= 0, "a give-back returns only what was counted"
        return HoldVoided(cashout, reason, wallet.available, same_day, same_month)

    def _named_cashout(self, cashout_id: UUID, wallet_id: UUID) -> CashOut | Rejected:
        cashout = self.cashouts.get(cashout_id)
        if cashout is None or cashout.wallet_id != wallet_id or wallet_id not in self.wallets:
            return Rejected(
                RejectReason.HOLD_NOT_FOUND, "no cash-out with this id on this wallet (yet)"
            )
        return cashout

    def _second_phase_refusal(self, cashout: CashOut, *, settling: bool) -> Rejected | None:
        """Why a settle (or a return) cannot apply to the cash-out in its state; None: it can."""
        assert self.now is not None, "the second phase reads the clock under the locks"
        state = cashout.state
        if state is CashOutState.VOIDED:
            if cashout.void_reason is VoidReason.EXPIRED:
                return Rejected(RejectReason.HOLD_EXPIRED, "the hold expired and was released")
            return Rejected(RejectReason.ALREADY_VOIDED, "the hold was returned and released")
        if cashout.reversed:
            return Rejected(RejectReason.ALREADY_REVERSED, "the cash-out was reversed already")
        if settling:
            if state is not CashOutState.PENDING:
                return Rejected(RejectReason.ALREADY_SETTLED, "the cash-out was paid out already")
            if cashout.expired_at(self.now):
                return Rejected(RejectReason.HOLD_EXPIRED, "the hold expired before it was settled")
        return None

    # -- helpers -----------------------------------------------------------------------------

    def _wallet(self, account_id: UUID, currency: str, role: str = "wallet") -> Wallet | Rejected:
        wallet = self.wallets.get(account_id)
        if wallet is None:
            return Rejected(RejectReason.ACCOUNT_NOT_FOUND, f"the {role} account does not exist")
        if wallet.status != "open":
            return Rejected(RejectReason.ACCOUNT_CLOSED, f"the {role} account is closed")
        if wallet.currency != currency:
            return Rejected(
                RejectReason.CURRENCY_MISMATCH,
                f"the {role} account holds {wallet.currency}, not {currency}",
            )
        return wallet

    def _over_single_limit(self, wallet: Wallet, amount: int) -> Rejected | None:
        limits = self._limits(wallet)
        if isinstance(limits, Rejected):
            return limits
        bound = limits.single_amount_max
        if bound is not None and amount > bound:
            return Rejected(
                RejectReason.LIMIT_EXCEEDED,
                f"amount above the {wallet.tier} tier's single-amount limit of {bound}",
            )
        return None

    def _over_balance_limit(
        self, wallet: Wallet, credit: int, role: str = "wallet"
    ) -> Rejected | None:
        limits = self._limits(wallet, role)
        if isinstance(limits, Rejected):
            return limits
        bound = limits.balance_max
        if bound is not None and wallet.balance + credit > bound:
            return Rejected(
                RejectReason.LIMIT_EXCEEDED,
                f"the {role}'s balance would pass the {wallet.tier} tier's limit of {bound}",
            )
        return None

    def _over_period_limits(self, wallet: Wallet, debit: int) -> Rejected | None:
        limits = self._limits(wallet)
        if isinstance(limits, Rejected):
            return limits
        if limits.daily_out_max is not None and wallet.out_today + debit > limits.daily_out_max:
            return Rejected(
                RejectReason.LIMIT_EXCEEDED,
                f"today's outgoing total would pass the {wallet.tier} tier's daily limit of "
                f"{limits.daily_out_max}",
            )
        if limits.monthly_out_max is not None and (
            wallet.out_month + debit > limits.monthly_out_max
        ):
            return Rejected(
                RejectReason.LIMIT_EXCEEDED,
                f"this month's outgoing total would pass the {wallet.tier} tier's monthly limit "
                f"of {limits.monthly_out_max}",
            )
        return None

    def _limits(self, wallet: Wallet, role: str = "wallet") -> TierLimits | Rejected:
        """Per (tier, currency), then the tier's '*' row, then the tier. None of them: refused.

        Fails closed: a tier whose limits row is missing (a typo, a tier added without its row)
        must not become a tier without limits.
        """
        limits = (
            self.limits.get(f"{wallet.tier}:{wallet.currency}")
            or self.limits.get(f"{wallet.tier}:*")
            or self.limits.get(wallet.tier)
        )
        if limits is None:
            return Rejected(
                RejectReason.LIMIT_EXCEEDED,
                f"no limits are configured for the {role}'s {wallet.tier} tier in "
                f"{wallet.currency}: nothing moves until they are",
            )
        return limits

    def _count_outgoing(self, wallet: Wallet, debit: int) -> None:
        wallet.out_today += debit
        wallet.out_month += debit
        self.outgoing[wallet.id] = self.outgoing.get(wallet.id, 0) + debit
        self.outgoing_month[wallet.id] = self.outgoing_month.get(wallet.id, 0) + debit

    def _post(
        self, postings: tuple[Posting, ...], first: Wallet, *, counts_outgoing: bool = True
    ) -> MoneyMoved:
        assert_balanced(postings)
        out_day: date | None = None
        after: list[int | None] = []
        for posting in postings:
            wallet = self.wallets.get(posting.account_id)
            if wallet is None:
                after.append(None)
                continue
            wallet.balance += posting.amount
            after.append(wallet.balance)
            assert wallet.available >= 0, "a wallet never spends what it holds"
            if posting.amount < 0 and counts_outgoing:
                self._count_outgoing(wallet, -posting.amount)
                out_day = wallet.out_day
        entry_id = self.entry_ids.pop() if self.entry_ids else uuid.uuid4()
        return MoneyMoved(entry_id, postings, first.balance, out_day, tuple(after))


def _cash_out_postings(cashout: CashOut, wallet_id: UUID) -> tuple[Posting, ...]:
    """A cash-out's entry: the wallet pays amount + fee, the clearing account gets the amount,
    fee revenue the fee."""
    postings = [
        Posting(wallet_id, cashout.currency, -cashout.total),
        Posting(
            house_account_id(AccountKind.CASHOUT_CLEARING, cashout.currency),
            cashout.currency,
            cashout.amount,
        ),
    ]
    if cashout.fee:
        postings.append(
            Posting(
                house_account_id(AccountKind.FEE_REVENUE, cashout.currency),
                cashout.currency,
                cashout.fee,
            )
        )
    return tuple(postings)
