-- Holds: the two-phase cash-out (DESIGN.md §5.1). Expand only: release 0.1's workers keep working
-- on this schema (they never place a hold, so `held` stays 0 on the wallets they debit).

-- Money reserved on a wallet until the bank answers. available = balance - held.
ALTER TABLE balances
    ADD COLUMN held bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT balances_held_not_negative CHECK (held >= 0),
    ADD CONSTRAINT balances_held_wallet_only CHECK (kind = 'wallet' OR held = 0),
    ADD CONSTRAINT balances_available_not_negative CHECK (kind <> 'wallet' OR balance - held >= 0);

-- One row per held cash-out, resolved exactly once: settled (a journal entry of amount + fee),
-- voided (returned by the bank, or expired: no entry), and a settled one may be reversed later.
CREATE TABLE holds (
    cashout_id         uuid        PRIMARY KEY,
    wallet_account_id  uuid        NOT NULL REFERENCES accounts (id),
    currency           char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount             bigint      NOT NULL CHECK (amount > 0),
    fee                bigint      NOT NULL CHECK (fee >= 0),
    placed_at          timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    -- The UTC day the hold counted toward the daily/monthly outgoing totals.
    out_day            date        NOT NULL,
    status             text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'settled', 'voided')),
    void_reason        text        CHECK (void_reason IN ('returned', 'expired')),
    resolved_at        timestamptz,
    -- What a void gave back to the totals: the day's while that day was current, the month's
    -- while that month was (DESIGN.md §5.1, Limits).
    day_given_back     boolean     NOT NULL DEFAULT false,
    month_given_back   boolean     NOT NULL DEFAULT false,
    settle_entry_id    uuid        UNIQUE REFERENCES journal_entries (id),
    -- The approving command's ids: an expiry (no command of its own) answers it.
    command_event_id   text        NOT NULL,
    correlation_id     text        NOT NULL,
    CHECK (expires_at > placed_at),
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((status = 'voided') = (void_reason IS NOT NULL)),
    CHECK ((status = 'settled') = (settle_entry_id IS NOT NULL)),
    CHECK (status = 'voided' OR NOT (day_given_back OR month_given_back)),
    CHECK (NOT day_given_back OR month_given_back)
);
-- The expiry sweep reads pending holds by deadline; the CLI and the audit by wallet.
CREATE INDEX holds_pending_expiry ON holds (expires_at) WHERE status = 'pending';
CREATE INDEX holds_wallet ON holds (wallet_account_id);

-- A resolved hold never changes again, and only the columns of its resolution move: no second
-- settlement, no void after it (the rules refuse them first; this is the database's word).
CREATE FUNCTION holds_resolve_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'hold % is already %', OLD.cashout_id, OLD.status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.cashout_id, NEW.wallet_account_id, NEW.currency, NEW.amount, NEW.fee, NEW.placed_at,
        NEW.expires_at, NEW.out_day, NEW.command_event_id, NEW.correlation_id)
       IS DISTINCT FROM
       (OLD.cashout_id, OLD.wallet_account_id, OLD.currency, OLD.amount, OLD.fee, OLD.placed_at,
        OLD.expires_at, OLD.out_day, OLD.command_event_id, OLD.correlation_id) THEN
        RAISE EXCEPTION 'hold % may only be resolved, not changed', OLD.cashout_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER holds_resolve_once BEFORE UPDATE ON holds
    FOR EACH ROW EXECUTE FUNCTION holds_resolve_once();
CREATE TRIGGER holds_never_deleted BEFORE DELETE OR TRUNCATE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();

-- The second phase has journal entries (settle, reversal) and records of its own.
DO $$
DECLARE
    name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
     WHERE conrelid = 'journal_entries'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%flow%cashin%transfer%cashout%';
    EXECUTE format('ALTER TABLE journal_entries DROP CONSTRAINT %I', name);
    SELECT conname INTO name FROM pg_constraint
     WHERE conrelid = 'idempotency_records'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%flow%onboarding%cashin%transfer%cashout%';
    EXECUTE format('ALTER TABLE idempotency_records DROP CONSTRAINT %I', name);
    -- A completed command had an entry unless it opened a wallet; now a placed hold and a void
    -- complete without one (the audit ties each to its hold instead).
    SELECT conname INTO name FROM pg_constraint
     WHERE conrelid = 'idempotency_records'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%journal_entry_id IS NOT NULL%'
       AND pg_get_constraintdef(oid) LIKE '%onboarding%';
    EXECUTE format('ALTER TABLE idempotency_records DROP CONSTRAINT %I', name);
END;
$$;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_flow_check
    CHECK (flow IN ('cashin', 'transfer', 'cashout', 'cashout_settle', 'cashout_return'));
ALTER TABLE idempotency_records ADD CONSTRAINT idempotency_records_flow_check
    CHECK (flow IN ('onboarding', 'cashin', 'transfer', 'cashout', 'cashout_settle',
                    'cashout_return'));
ALTER TABLE idempotency_records ADD CONSTRAINT idempotency_records_completed_has_entry
    CHECK (flow IN ('onboarding', 'cashout', 'cashout_return') OR outcome = 'rejected'
           OR journal_entry_id IS NOT NULL);

GRANT SELECT, INSERT ON holds TO ledgerflow_app;
GRANT UPDATE (status, void_reason, resolved_at, day_given_back, month_given_back,
              settle_entry_id) ON holds TO ledgerflow_app;
