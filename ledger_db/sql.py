"""Every SQL statement of the write path: a constant number of round trips per batch.

Reads, updates and inserts take arrays (`unnest`, `= ANY`): a chunk of a batch inserts into
every table it writes with one statement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# The relay LISTENs here; every transaction that writes outbox rows notifies it once.
OUTBOX_CHANNEL = "ledgerflow_outbox"


@dataclass(frozen=True, slots=True)
class Insert:
    """A table the apply path inserts into: the columns it writes, each with the element type
    of the array that carries it (a char(3) column takes text, cast on assignment)."""

    table: str
    typed: tuple[tuple[str, str], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.typed)


CUSTOMERS = Insert(
    "customers", (("id", "uuid"), ("tier", "text"), ("subject", "text"), ("kind", "text"))
)
CUSTOMER_PII = Insert(
    "customer_pii",
    (
        ("customer_id", "uuid"),
        ("key_id", "text"),
        ("full_name", "bytea"),
        ("phone_number", "bytea"),
        ("email", "bytea"),
        ("national_id", "bytea"),
        ("bank_code", "text"),
        ("bank_account_number", "bytea"),
        ("phone_index", "bytea"),
    ),
)
WALLET_ACCOUNTS = Insert(
    "accounts", (("id", "uuid"), ("kind", "text"), ("currency", "text"), ("customer_id", "uuid"))
)
WALLET_BALANCES = Insert(
    "balances",
    (("account_id", "uuid"), ("kind", "text"), ("shard", "smallint"), ("balance", "bigint")),
)
ENTRIES = Insert(
    "journal_entries",
    (("id", "uuid"), ("flow", "text"), ("idempotency_key", "uuid"), ("out_day", "date")),
)
POSTINGS = Insert(
    "postings",
    (
        ("entry_id", "uuid"),
        ("seq", "smallint"),
        ("account_id", "uuid"),
        ("currency", "text"),
        ("amount", "bigint"),
        ("posted_at", "timestamptz"),
        ("balance_after", "bigint"),
    ),
)
PAYMENTS = Insert(
    "payments",
    (
        ("payment_id", "uuid"),
        ("payer_account_id", "uuid"),
        ("merchant_account_id", "uuid"),
        ("currency", "text"),
        ("amount", "bigint"),
        ("fee", "bigint"),
        ("entry_id", "uuid"),
    ),
)
HOLDS = Insert(
    "holds",
    (
        ("cashout_id", "uuid"),
        ("wallet_account_id", "uuid"),
        ("currency", "text"),
        ("amount", "bigint"),
        ("fee", "bigint"),
        ("placed_at", "timestamptz"),
        ("expires_at", "timestamptz"),
        ("out_day", "date"),
        ("command_event_id", "text"),
        ("correlation_id", "text"),
    ),
)
IDEMPOTENCY_RECORDS = Insert(
    "idempotency_records",
    (
        ("flow", "text"),
        ("key", "uuid"),
        ("content_hash", "bytea"),
        ("content_hash_keyed", "boolean"),
        ("outcome", "text"),
        ("reason", "text"),
        ("journal_entry_id", "uuid"),
        ("result_topic", "text"),
        ("result_event_id", "uuid"),
        ("result_payload", "bytea"),
        ("subject", "text"),
    ),
)
OUTBOX = Insert(
    "outbox",
    (
        ("event_id", "uuid"),
        ("topic", "text"),
        ("key", "bytea"),
        ("payload", "bytea"),
        ("traceparent", "text"),
    ),
)


@functools.cache
def insert_statement(inserts: tuple[Insert, ...]) -> str:
    """One statement inserting into every table of `inserts`, each column one array parameter,
    in that order: one round trip where a COPY per table takes two each. A row may refer to a
    row of a table before it: foreign keys and the postings check run at the end of the
    statement, when every table's rows are in."""
    assert inserts, "nothing to insert"
    parts: list[str] = []
    n = 0
    for insert in inserts:
        arrays = []
        for _, element in insert.typed:
            n += 1
            arrays.append(f"${n}::{element}[]")
        parts.append(
            f"INSERT INTO {insert.table} ({', '.join(insert.columns)})\n"
            f"SELECT * FROM unnest({', '.join(arrays)})"
        )
    *first, last = parts
    ctes = [f"i{k} AS ({part})" for k, part in enumerate(first)]
    return ("WITH " + ",\n".join(ctes) + "\n" if ctes else "") + last


# Large id lists travel as one comma-separated text parameter: asyncpg type-checks every element
# of an array parameter in Python, which costs more than PostgreSQL's string_to_array.
# Also the deployment's content-hash key check (None: records are written plain; see
# ledger_db/content_hash.py), on a first row that always comes, with the records if any.
# And the relay's wake-up: a batch with commands writes outbox rows (every outcome has one), and
# PostgreSQL delivers a notification at commit only, wherever in the transaction it was raised,
# so this first statement raises it instead of a round trip of its own.
SELECT_IDEMPOTENCY_RECORDS = f"""
WITH keying AS MATERIALIZED (
    SELECT content_hash_key_check() AS key_check, pg_notify('{OUTBOX_CHANNEL}', '') AS woke
)
SELECT keying.key_check, r.flow, r.key, r.content_hash, r.content_hash_keyed, r.result_topic,
       r.result_event_id, r.result_payload
FROM keying LEFT JOIN (
    idempotency_records r
    JOIN unnest(string_to_array($1, ','), string_to_array($2, ',')::uuid[]) AS k(flow, key)
      ON r.flow = k.flow AND r.key = k.key
) ON true
"""

# ORDER BY before FOR UPDATE: rows are locked in ascending id order, so two batches touching
# the same wallets wait for each other instead of deadlocking.
# Id lists are joined as a set (unnest), never matched with `= ANY(array)`: on a table whose
# statistics are stale (just loaded, not yet analyzed), `= ANY` can be planned as a sequential
# scan comparing every row with every id, which took seconds per batch in the benchmark.
# The outgoing totals count for the wallet's current day and month (UTC), which never go back:
# the later of the row's own day and the clock, read once every row is locked ($2, or
# clock_timestamp() when NULL). A transaction's start (now()) would not do: a batch begun before
# midnight that commits after another batch rolled the row over would write the old day back and
# reset the total. APPLY_BALANCE_DELTAS gets the clock's day back and applies the same rule.
# The wallets' attributes (account and customer) come only for the wallets in $3, those the
# writer does not know (ledger_db/wallet_attributes.py); NULL for the others.
# One row per wallet locked, in the order of rules.Wallet's fields (a row becomes a Wallet by
# position: a thousand rows a batch, by-name lookups cost more), then one last row, whose id is
# NULL, with the clock and the attributes' version: it always comes, and carries the clock's
# day for the wallets the batch opens.
LOCK_WALLETS = """
WITH locked AS MATERIALIZED (
    SELECT b.account_id, b.balance, b.held, b.out_day, b.out_day_total, b.out_month,
           b.out_month_total, b.last_posted_at
    FROM unnest(string_to_array($1, ',')::uuid[]) AS w(id)
    JOIN balances b ON b.account_id = w.id AND b.shard = 0
    WHERE b.kind = 'wallet'
    ORDER BY b.account_id
    FOR UPDATE OF b
),
clock AS MATERIALIZED (
    SELECT (now.at AT TIME ZONE 'UTC')::date AS day, now.at,
           greatest(now.at, every_row_locked.last_posted_at) AS posted_at
    FROM (SELECT count(*) AS n, max(last_posted_at) AS last_posted_at FROM locked)
         AS every_row_locked,
         LATERAL (SELECT coalesce($2::timestamptz, clock_timestamp()) AS at) AS now
    WHERE every_row_locked.n >= 0
)
SELECT l.account_id AS id, a.currency, a.status, c.tier, l.balance, c.subject,
       CASE WHEN l.out_day >= clock.day THEN l.out_day_total ELSE 0 END AS out_today,
       CASE WHEN l.out_month >= date_trunc('month', clock.day)::date
            THEN l.out_month_total ELSE 0 END AS out_month,
       greatest(l.out_day, clock.day) AS out_day,
       l.held, c.kind, a.customer_id,
       NULL::date AS clock_day, NULL::timestamptz AS clock_now, NULL::timestamptz AS posted_at,
       NULL::bigint AS attributes_version
FROM locked l CROSS JOIN clock
LEFT JOIN unnest(string_to_array($3, ',')::uuid[]) AS unknown(id) ON unknown.id = l.account_id
LEFT JOIN accounts a ON a.id = unknown.id
LEFT JOIN customers c ON c.id = a.customer_id
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       clock.day, clock.at, clock.posted_at, v.version
FROM clock CROSS JOIN wallet_attributes_version v
"""
# LOCK_WALLETS' columns: Wallet's fields, then the clock's row's.
LOCK_WALLETS_WALLET_COLUMNS = 12

# The attributes of wallets locked already, when the writer's were of another version.
SELECT_WALLET_ATTRIBUTES = """
SELECT a.id, a.currency, a.status, c.tier, c.subject, c.kind, a.customer_id
FROM unnest(string_to_array($1, ',')::uuid[]) AS w(id)
JOIN accounts a ON a.id = w.id
JOIN customers c ON c.id = a.customer_id
"""

SELECT_TIER_LIMITS = """
SELECT tier, currency, single_amount_max, balance_max, daily_out_max, monthly_out_max
FROM tier_limits
"""

SELECT_TAKEN_PHONES = """
SELECT phone_index FROM customer_pii WHERE phone_index = ANY($1::bytea[])
"""

ENSURE_HOUSE_ACCOUNTS = """
INSERT INTO accounts (id, kind, currency)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING
"""

ENSURE_HOUSE_SHARDS = """
INSERT INTO balances (account_id, kind, shard)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::smallint[])
ON CONFLICT DO NOTHING
"""

LOCK_HOUSE_SHARDS = """
SELECT 1 FROM balances
WHERE account_id = ANY($1::uuid[]) AND shard = $2
ORDER BY account_id
FOR UPDATE
"""

# A wallet's debits (`d.out`, `d.out_m`: 0 for house shards and for wallets only credited) are
# added to its current day's and month's totals on the same row: the later of the row's and the
# clock's ($5, LOCK_WALLETS' clock_day), which restart when the clock passed the row's day or
# month. A void's give-back is negative and only ever for the row's current day (month). A
# change of either total moves the row to the clock's day and month first: a void on a later
# day of the month gives back the month's total only, and the old day's total must not outlive
# its day (it would exceed the month's). `d.held` moves the wallet's held amount.
APPLY_BALANCE_DELTAS = """
UPDATE balances b SET
    balance = b.balance + d.delta,
    held = b.held + d.held,
    out_day_total = CASE WHEN d.out = 0 AND d.out_m = 0 THEN b.out_day_total
                         WHEN b.out_day >= t.day THEN b.out_day_total + d.out ELSE d.out END,
    out_day = CASE WHEN d.out = 0 AND d.out_m = 0 THEN b.out_day
                   ELSE greatest(b.out_day, t.day) END,
    out_month_total = CASE WHEN d.out = 0 AND d.out_m = 0 THEN b.out_month_total
                           WHEN b.out_month >= t.month THEN b.out_month_total + d.out_m
                           ELSE d.out_m END,
    out_month = CASE WHEN d.out = 0 AND d.out_m = 0 THEN b.out_month
                     ELSE greatest(b.out_month, t.month) END,
    last_posted_at = greatest(b.last_posted_at, $8::timestamptz)
FROM unnest(
    string_to_array($1, ',')::uuid[],
    string_to_array($2, ',')::smallint[],
    string_to_array($3, ',')::bigint[],
    string_to_array($4, ',')::bigint[],
    string_to_array($6, ',')::bigint[],
    string_to_array($7, ',')::bigint[]
) AS d(account_id, shard, delta, out, out_m, held),
(SELECT $5::date AS day, date_trunc('month', $5::date)::date AS month) AS t
WHERE b.account_id = d.account_id AND b.shard = d.shard
"""

# The cash-outs a batch's second-phase commands (and expiries) name, locked after the wallets:
# holds in any state, and cash-outs paid at once (v1: their entry's postings), with whether a
# reversal was posted. One row per cash-out found.
LOCK_CASHOUTS = """
WITH ids AS (SELECT DISTINCT unnest(string_to_array($1, ',')::uuid[]) AS id),
held AS MATERIALIZED (
    SELECT h.cashout_id, h.wallet_account_id, h.currency, h.amount, h.fee, h.status,
           h.expires_at, h.out_day, h.void_reason, h.command_event_id, h.correlation_id
    FROM holds h JOIN ids ON ids.id = h.cashout_id
    ORDER BY h.cashout_id
    FOR UPDATE OF h
),
paid AS (
    SELECT e.idempotency_key AS cashout_id,
           (array_agg(p.account_id) FILTER (WHERE a.kind = 'wallet'))[1] AS wallet_account_id,
           min(p.currency) AS currency,
           coalesce(sum(p.amount) FILTER (WHERE a.kind = 'cashout_clearing'), 0)::bigint AS amount,
           coalesce(sum(p.amount) FILTER (WHERE a.kind = 'fee_revenue'), 0)::bigint AS fee
    FROM journal_entries e
    JOIN ids ON ids.id = e.idempotency_key
    JOIN postings p ON p.entry_id = e.id
    JOIN accounts a ON a.id = p.account_id
    WHERE e.flow = 'cashout'
    GROUP BY e.idempotency_key
)
SELECT h.cashout_id, h.wallet_account_id, h.currency, h.amount, h.fee, h.status,
       h.expires_at, h.out_day, h.void_reason, h.command_event_id, h.correlation_id,
       r.id IS NOT NULL AS reversed
FROM held h
LEFT JOIN journal_entries r ON r.flow = 'cashout_return' AND r.idempotency_key = h.cashout_id
UNION ALL
SELECT p.cashout_id, p.wallet_account_id, p.currency, p.amount, p.fee, 'immediate',
       NULL, NULL, NULL, NULL, NULL, r.id IS NOT NULL
FROM paid p
LEFT JOIN journal_entries r ON r.flow = 'cashout_return' AND r.idempotency_key = p.cashout_id
WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.cashout_id = p.cashout_id)
"""

# Resolutions of holds decided by a batch: (cashout_id, status, void_reason, day and month
# given back, settle entry).
RESOLVE_HOLDS = """
UPDATE holds h SET
    status = r.status,
    void_reason = r.void_reason,
    resolved_at = $7,
    day_given_back = r.day_back,
    month_given_back = r.month_back,
    settle_entry_id = r.entry_id
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::boolean[], $5::boolean[], $6::uuid[]
) AS r(cashout_id, status, void_reason, day_back, month_back, entry_id)
WHERE h.cashout_id = r.cashout_id AND h.status = 'pending'
"""

# The expiry sweep's candidates: pending holds past their time, oldest first, read without
# locks (the sweep locks their wallets, then the holds, and decides again under the locks).
SELECT_EXPIRED_HOLDS = """
SELECT cashout_id, wallet_account_id FROM holds
WHERE status = 'pending' AND expires_at <= coalesce($2::timestamptz, clock_timestamp())
ORDER BY expires_at
LIMIT $1
"""

NOTIFY_OUTBOX = f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')"

# The payers of the payments a batch's refunds name, read before any lock: their wallets are
# credited, so they are locked with the others (a payment's accounts never change).
SELECT_PAYMENT_PAYERS = """
SELECT payment_id, payer_account_id FROM payments
WHERE payment_id = ANY($1::uuid[])
"""

# The payments refunded, locked after the wallets (ascending payment_id): two refunds of one
# payment, in two batches, are decided one after the other, each on the other's result.
LOCK_PAYMENTS = """
SELECT payment_id, payer_account_id, merchant_account_id, currency, amount, fee, refunded,
       fee_returned
FROM payments WHERE payment_id = ANY($1::uuid[])
ORDER BY payment_id
FOR UPDATE
"""

REFUND_PAYMENTS = """
UPDATE payments p SET refunded = r.refunded, fee_returned = r.fee_returned
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r(payment_id, refunded, fee_returned)
WHERE p.payment_id = r.payment_id
"""

# The fee schedule in force for each merchant customer: its latest row.
SELECT_MERCHANT_FEES = """
SELECT DISTINCT ON (customer_id) customer_id, bps, fixed
FROM merchant_fees WHERE customer_id = ANY($1::uuid[])
ORDER BY customer_id, changed_at DESC, id DESC
"""
