-- Today's and this month's outgoing totals move onto the wallet's balance row. Every batch that
-- debits a wallet locks and updates that row anyway, so the daily/monthly limits now cost no
-- statement of their own (they cost a read and an upsert of wallet_outgoing per batch).
-- The day and month are PostgreSQL's (UTC, the transaction's start), like journal_entries.created_at,
-- so the audit can recount them from the journal.
ALTER TABLE balances
    ADD COLUMN out_day         date,
    ADD COLUMN out_day_total   bigint NOT NULL DEFAULT 0 CHECK (out_day_total >= 0),
    ADD COLUMN out_month       date CHECK (out_month = date_trunc('month', out_month)::date),
    ADD COLUMN out_month_total bigint NOT NULL DEFAULT 0 CHECK (out_month_total >= 0),
    -- Only wallets have limits; a day's total is part of its month's.
    ADD CONSTRAINT balances_outgoing_wallet_only
        CHECK (kind = 'wallet' OR (out_day IS NULL AND out_month IS NULL
                                   AND out_day_total = 0 AND out_month_total = 0)),
    ADD CONSTRAINT balances_outgoing_day_in_month
        CHECK (out_day IS NULL OR (out_month = date_trunc('month', out_day)::date
                                   AND out_day_total <= out_month_total));

-- Carry over the current totals: the latest day per wallet and that day's month.
UPDATE balances b
SET out_day = o.day,
    out_day_total = o.total,
    out_month = date_trunc('month', o.day)::date,
    out_month_total = (SELECT sum(m.total) FROM wallet_outgoing m
                       WHERE m.account_id = o.account_id
                         AND date_trunc('month', m.day) = date_trunc('month', o.day))
FROM (SELECT DISTINCT ON (account_id) account_id, day, total
      FROM wallet_outgoing ORDER BY account_id, day DESC) o
WHERE b.account_id = o.account_id AND b.shard = 0 AND b.kind = 'wallet';

DROP TABLE wallet_outgoing;
