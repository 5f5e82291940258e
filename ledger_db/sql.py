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
ENTRY_COLUMNS = ("id", "flow", "idempotency_key", "out_day")
POSTING_COLUMNS = ("entry_id", "seq", "account_id", "currency", "amount")
IDEMPOTENCY_RECORD_COLUMNS = (
    "flow",
    "key",
    "content_hash",
    "content_hash_keyed",
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
# Also the deployment's content-hash key check (None: records are written plain; see
# ledger_db/content_hash.py), on a first row that always comes, with the records if any.
SELECT_IDEMPOTENCY_RECORDS = """
WITH keying AS MATERIALIZED (SELECT content_hash_key_check() AS key_check)
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
# reset the total. The first row always comes and carries the clock's day, for the wallets the
# batch opens; APPLY_BALANCE_DELTAS gets it back and applies the same rule.
LOCK_WALLETS = """
WITH locked AS MATERIALIZED (
    SELECT a.id, a.currency, a.status, c.tier, c.subject, b.balance,
           b.out_day, b.out_day_total, b.out_month, b.out_month_total
    FROM unnest(string_to_array($1, ',')::uuid[]) AS w(id)
    JOIN balances b ON b.account_id = w.id AND b.shard = 0
    JOIN accounts a ON a.id = b.account_id
    JOIN customers c ON c.id = a.customer_id
    WHERE b.kind = 'wallet'
    ORDER BY b.account_id
    FOR UPDATE OF b
),
clock AS MATERIALIZED (
    SELECT (coalesce($2::timestamptz, clock_timestamp()) AT TIME ZONE 'UTC')::date AS day
    FROM (SELECT count(*) AS n FROM locked) AS every_row_locked
    WHERE every_row_locked.n >= 0
)
SELECT clock.day AS clock_day, l.id, l.currency, l.status, l.tier, l.subject, l.balance,
       greatest(l.out_day, clock.day) AS out_day,
       CASE WHEN l.out_day >= clock.day THEN l.out_day_total ELSE 0 END AS out_today,
       CASE WHEN l.out_month >= date_trunc('month', clock.day)::date
            THEN l.out_month_total ELSE 0 END AS out_month
FROM clock LEFT JOIN locked l ON true
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
# its current day's and month's totals on the same row: the later of the row's and the clock's
# ($5, LOCK_WALLETS' clock_day), which restart when the clock passed the row's day or month.
APPLY_BALANCE_DELTAS = """
UPDATE balances b SET
    balance = b.balance + d.delta,
    out_day_total = CASE WHEN d.out = 0 THEN b.out_day_total
                         WHEN b.out_day >= t.day THEN b.out_day_total + d.out ELSE d.out END,
    out_day = CASE WHEN d.out = 0 THEN b.out_day ELSE greatest(b.out_day, t.day) END,
    out_month_total = CASE WHEN d.out = 0 THEN b.out_month_total
                           WHEN b.out_month >= t.month THEN b.out_month_total + d.out
                           ELSE d.out END,
    out_month = CASE WHEN d.out = 0 THEN b.out_month ELSE greatest(b.out_month, t.month) END
FROM unnest(
    string_to_array($1, ',')::uuid[],
    string_to_array($2, ',')::smallint[],
    string_to_array($3, ',')::bigint[],
    string_to_array($4, ',')::bigint[]
) AS d(account_id, shard, delta, out),
(SELECT $5::date AS day, date_trunc('month', $5::date)::date AS month) AS t
WHERE b.account_id = d.account_id AND b.shard = d.shard
"""

NOTIFY_OUTBOX = "SELECT pg_notify('ledgerflow_outbox', '')"
