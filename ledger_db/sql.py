"""Every SQL statement of the write path: one round trip per table and batch.

Reads and updates take arrays (`unnest`, `= ANY`); plain inserts go by binary COPY.
"""

CUSTOMER_COLUMNS = ("id", "tier", "subject")
CUSTOMER_PII_COLUMNS = (
    "customer_id",
    "key_id",
    "full_name",
    "phone_number",
    "email",
    "national_id",
    "bank_code",
    "bank_account_number",
    "phone_index",
)
WALLET_ACCOUNT_COLUMNS = ("id", "kind", "currency", "customer_id")
BALANCE_COLUMNS = ("account_id", "kind", "shard", "balance")
ENTRY_COLUMNS = ("id", "flow", "idempotency_key")
POSTING_COLUMNS = ("entry_id", "seq", "account_id", "currency", "amount")
IDEMPOTENCY_RECORD_COLUMNS = (
    "flow",
    "key",
    "content_hash",
    "outcome",
    "reason",
    "journal_entry_id",
    "result_topic",
    "result_event_id",
    "result_payload",
)
OUTBOX_COLUMNS = ("event_id", "topic", "key", "payload", "traceparent")

# Large id lists travel as one comma-separated text parameter: asyncpg type-checks every element
# of an array parameter in Python, which costs more than PostgreSQL's string_to_array.
SELECT_IDEMPOTENCY_RECORDS = """
SELECT r.flow, r.key, r.content_hash, r.result_topic, r.result_event_id, r.result_payload
FROM idempotency_records r
JOIN unnest(string_to_array($1, ','), string_to_array($2, ',')::uuid[]) AS k(flow, key)
  ON r.flow = k.flow AND r.key = k.key
"""

# ORDER BY before FOR UPDATE: rows are locked in ascending id order, so two batches touching
# the same wallets wait for each other instead of deadlocking.
# Id lists are joined as a set (unnest), never matched with `= ANY(array)`: on a table whose
# statistics are stale (just loaded, not yet analyzed), `= ANY` can be planned as a sequential
# scan comparing every row with every id, which took seconds per batch in the benchmark.
# The outgoing totals count for today and this month only (UTC, PostgreSQL's clock at the
# transaction's start: the day journal_entries.created_at will show).
LOCK_WALLETS = """
SELECT a.id, a.currency, a.status, c.tier, c.subject, b.balance,
       CASE WHEN b.out_day = (now() AT TIME ZONE 'UTC')::date
            THEN b.out_day_total ELSE 0 END AS out_today,
       CASE WHEN b.out_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
            THEN b.out_month_total ELSE 0 END AS out_month
FROM unnest(string_to_array($1, ',')::uuid[]) AS w(id)
JOIN balances b ON b.account_id = w.id AND b.shard = 0
JOIN accounts a ON a.id = b.account_id
JOIN customers c ON c.id = a.customer_id
WHERE b.kind = 'wallet'
ORDER BY b.account_id
FOR UPDATE OF b
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

# A wallet's debits (`d.out`, 0 for house shards and for wallets only credited) are added to
# today's and this month's totals on the same row, which restart when the day or month changed.
APPLY_BALANCE_DELTAS = """
UPDATE balances b SET
    balance = b.balance + d.delta,
    out_day_total = CASE WHEN d.out = 0 THEN b.out_day_total
                         WHEN b.out_day = t.day THEN b.out_day_total + d.out ELSE d.out END,
    out_day = CASE WHEN d.out = 0 THEN b.out_day ELSE t.day END,
    out_month_total = CASE WHEN d.out = 0 THEN b.out_month_total
                           WHEN b.out_month = t.month THEN b.out_month_total + d.out
                           ELSE d.out END,
    out_month = CASE WHEN d.out = 0 THEN b.out_month ELSE t.month END
FROM unnest(
    string_to_array($1, ',')::uuid[],
    string_to_array($2, ',')::smallint[],
    string_to_array($3, ',')::bigint[],
    string_to_array($4, ',')::bigint[]
) AS d(account_id, shard, delta, out),
(SELECT (now() AT TIME ZONE 'UTC')::date AS day,
        date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month) AS t
WHERE b.account_id = d.account_id AND b.shard = d.shard
"""

NOTIFY_OUTBOX = "SELECT pg_notify('ledgerflow_outbox', '')"
