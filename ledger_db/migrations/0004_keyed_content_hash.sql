-- Hardening (issue 13): limit days that never go back, content hashes keyed at rest, tier
-- changes on record. Expand only: release 0.1's workers keep working on this schema
-- (docs/decisions/migrations.md, "0004").

-- 1. Limit days. The day an entry's wallet debit counted toward (the wallet's daily and monthly
-- outgoing totals): read under the wallet's row lock as the later of the row's day and the clock,
-- so it can be later than created_at's day (the transaction's start). NULL for entries written
-- before this migration (the audit then uses created_at's day) and for entries debiting no wallet.
ALTER TABLE journal_entries ADD COLUMN out_day date;

-- A wallet's day and month only move forward: a write of an earlier day than the row has would
-- reset a total that was already counted, and its limit could be spent twice. SQLSTATE 40001, so
-- that a writer holding a stale day (a release-0.1 worker whose transaction began before
-- midnight) retries with a fresh one instead of failing its batch.
CREATE FUNCTION refuse_outgoing_rollback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the outgoing totals of account % are for day % (month %) already: '
        'day % (month %) would move them back', NEW.account_id, OLD.out_day, OLD.out_month,
        NEW.out_day, NEW.out_month
        USING ERRCODE = 'serialization_failure';
END $$;

CREATE TRIGGER balances_outgoing_forward_only
    BEFORE UPDATE OF out_day, out_month ON balances
    FOR EACH ROW WHEN (NEW.out_day < OLD.out_day OR NEW.out_month < OLD.out_month)
    EXECUTE FUNCTION refuse_outgoing_rollback();

-- 2. Keyed content hashes (ledger_db/content_hash.py). A row says whether its content_hash is
-- the plain SHA-256 of the command's data (every row release 0.1 writes) or HMAC-SHA-256 of that
-- digest under LEDGERFLOW_CONTENT_HASH_KEY; workers grade a retry against either.
ALTER TABLE idempotency_records ADD COLUMN content_hash_keyed boolean NOT NULL DEFAULT false;

-- The deployment's state, one row. Workers write plain hashes until keyed_since is set: a
-- release-0.1 worker compares plain hashes only, so keyed rows may exist only once none runs,
-- and none will again (a rollback). `ledgerflow migrate --key-content-hashes`, run when that is
-- so, marks the deployment keyed and re-keys the rows written before. One way: HMAC cannot be
-- undone.
CREATE TABLE content_hash_keying (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    keyed_since  timestamptz,
    -- HMAC of a fixed text under the key: a worker or a migration with another key is refused.
    key_check    bytea       CHECK (length(key_check) = 32),
    -- Every row written before keyed_since has been re-keyed.
    rekeyed_at   timestamptz,
    CHECK ((keyed_since IS NULL) = (key_check IS NULL)),
    CHECK (rekeyed_at IS NULL OR keyed_since IS NOT NULL)
);
INSERT INTO content_hash_keying DEFAULT VALUES;

-- Called by every batch before it writes idempotency records: NULL (write plain) or the key
-- check of the deployment's key (write keyed). The shared advisory lock lasts until the batch
-- commits; marking the deployment keyed takes it exclusively, so once the mark commits no batch
-- that read "plain" is still writing, and re-keying afterwards misses no row. The state is read
-- after the lock, in a snapshot of its own (a VOLATILE function's statements each take one).
CREATE FUNCTION content_hash_key_check() RETURNS bytea LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7406931200004);
    RETURN (SELECT key_check FROM content_hash_keying WHERE keyed_since IS NOT NULL);
END $$;

-- The data step's mark (owner only): waits for the batches in flight, then sets keyed_since.
-- Returns the deployment's key check, set now or before.
CREATE FUNCTION mark_content_hashes_keyed(new_key_check bytea) RETURNS bytea
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7406931200004);
    UPDATE content_hash_keying SET keyed_since = now(), key_check = new_key_check
     WHERE keyed_since IS NULL;
    RETURN (SELECT key_check FROM content_hash_keying);
END $$;
REVOKE EXECUTE ON FUNCTION mark_content_hashes_keyed(bytea) FROM PUBLIC;

-- 3. Tier changes on record, whoever changes a tier (`ledgerflow customers set-tier`, or SQL):
-- a wallet whose tier was lowered may be above its new limits for the rest of that day and
-- month, and the audit excuses exactly that.
CREATE TABLE customer_tier_changes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  uuid        NOT NULL REFERENCES customers (id),
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    old_tier     text        NOT NULL,
    new_tier     text        NOT NULL
);
CREATE INDEX customer_tier_changes_customer_idx ON customer_tier_changes (customer_id, changed_at);

CREATE FUNCTION record_tier_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_tier_changes (customer_id, old_tier, new_tier)
    VALUES (NEW.id, OLD.tier, NEW.tier);
    RETURN NULL;
END $$;

CREATE TRIGGER customers_tier_changes_recorded
    AFTER UPDATE OF tier ON customers
    FOR EACH ROW WHEN (OLD.tier IS DISTINCT FROM NEW.tier)
    EXECUTE FUNCTION record_tier_change();

GRANT SELECT ON content_hash_keying TO ledgerflow_app;
-- Append-only for the application: no UPDATE or DELETE.
GRANT SELECT, INSERT ON customer_tier_changes TO ledgerflow_app;
