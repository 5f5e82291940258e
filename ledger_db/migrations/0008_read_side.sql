-- The read side (DESIGN.md §6): what `ledgerflow api`, `history` and `statement` read, each page
-- from an index, never a scan of a wallet's whole history. Expand only: release 0.1's workers keep
-- writing postings without the new columns, which then take their defaults (posted_at) or stay
-- NULL (balance_after, computed on read for those rows: ledger_db/reads.py).

-- The read role is a prerequisite like ledgerflow_app (created by the DBA, the embedded stack or
-- compose's initdb): say so plainly rather than with a failed GRANT at the end.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledgerflow_reader') THEN
        RAISE EXCEPTION 'role ledgerflow_reader does not exist'
            USING HINT = 'create it before migrating: CREATE ROLE ledgerflow_reader LOGIN '
                         'PASSWORD ''...''; (README, "Deploying with Helm", step 3)';
    END IF;
END $$;

-- A posting's place in its account's history. The wallet's row lock orders the batches that post
-- to it; a posting's id (assigned at insert, under that lock) and its posted_at (the batch's clock
-- read under the lock, never earlier than the wallet's previous posting: balances.last_posted_at)
-- therefore follow the order in which the wallet's money moved, whatever the clock does.
-- Existing rows take the id of their physical order and their entry's time.
ALTER TABLE postings ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE postings ADD COLUMN posted_at timestamptz;
-- The wallet's balance once this posting applied; NULL for house accounts (their balance is
-- split over shards) and for rows release 0.1 wrote.
ALTER TABLE postings ADD COLUMN balance_after bigint CHECK (balance_after >= 0);

-- One backfill of derived columns on rows that exist now. The journal stays append-only for
-- everyone else: the trigger is off only inside this migration's transaction.
ALTER TABLE postings DISABLE TRIGGER postings_append_only;
UPDATE postings p SET posted_at = e.created_at FROM journal_entries e WHERE e.id = p.entry_id;
WITH running AS (
    SELECT p.entry_id, p.seq,
           sum(p.amount) OVER (PARTITION BY p.account_id ORDER BY p.posted_at, p.id) AS after
    FROM postings p JOIN accounts a ON a.id = p.account_id
    WHERE a.kind = 'wallet'
)
UPDATE postings p SET balance_after = r.after
FROM running r WHERE r.entry_id = p.entry_id AND r.seq = p.seq;
ALTER TABLE postings ENABLE TRIGGER postings_append_only;

ALTER TABLE postings ALTER COLUMN posted_at SET DEFAULT clock_timestamp();
ALTER TABLE postings ALTER COLUMN posted_at SET NOT NULL;
-- No unique index on id: GENERATED ALWAYS refuses values from anyone but the sequence, and a
-- second index per posting would cost every batch.

-- History pages, statements and balances at an instant: an account's postings newest first.
-- It also serves every look-up the old (account_id) index served.
CREATE INDEX postings_account_history_idx ON postings (account_id, posted_at, id);
DROP INDEX postings_account_id_idx;

-- The wallet's latest posting time, kept with its balance (read under the row lock), so that the
-- next batch never posts earlier. NULL until a current worker posts to it.
ALTER TABLE balances ADD COLUMN last_posted_at timestamptz;

-- Who sent a recorded command (the verified token's subject): the read API shows its outcome to
-- that subject. NULL when authentication was off or release 0.1 recorded it.
ALTER TABLE idempotency_records
    ADD COLUMN subject text CHECK (length(subject) BETWEEN 1 AND 255);

-- The read-only role of the API (and of a hot standby serving it): no personal data, no content
-- hashes, nothing it could write. The role is created with the cluster's others (the embedded
-- stack, compose's initdb, the DBA), like ledgerflow_app.
GRANT USAGE ON SCHEMA public TO ledgerflow_reader;
GRANT SELECT ON accounts, balances, journal_entries, postings, tier_limits, holds, payments
    TO ledgerflow_reader;
GRANT SELECT (id, tier, kind, subject, created_at) ON customers TO ledgerflow_reader;
GRANT SELECT (flow, key, outcome, reason, journal_entry_id, result_topic, result_event_id,
              result_payload, subject, created_at)
    ON idempotency_records TO ledgerflow_reader;
