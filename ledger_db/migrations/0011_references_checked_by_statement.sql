-- The references of payments and holds are checked once per statement instead of once per row,
-- and their row rules (refunds only grow, a hold is resolved once) run only for an UPDATE that
-- breaks them. Same rules; the error names the row and what it lacks.
--
-- Why: the three foreign keys of `payments` (0007) fired three row-level RI triggers per row,
-- each a query of its own with a FOR KEY SHARE lock: 10 of the 14.6 ms that a COPY of 420
-- payments took, under the lock of the merchant's wallet, which every payment and refund of
-- that merchant queues on (docs/benchmarks.md). A statement trigger looks each account the
-- statement names up once and each entry once, by primary key (`unknown_reference`), as
-- `check_postings()` (0010) does: the COPY takes 4.8 ms.
--
-- What the foreign keys also gave, and why it is not lost: they locked the referenced rows
-- against a concurrent DELETE. Journal entries are never deleted or truncated (0001's triggers
-- refuse it, even for the owner), and accounts are never deleted by the ledger: the app role
-- has no DELETE on them (0001's grants), and an account is closed by its status. `ledgerflow
-- audit` checks every payment's references again (payments_have_their_entry).
--
-- Holds (0006) had the same two kinds of cost on the two-phase cash-out's path: a foreign key
-- on the wallet when placed, one on the settling entry when settled, and a PL/pgSQL call per
-- resolved hold.
--
-- Expand only: release 0.1 never writes payments or holds, and the new writers write the same
-- rows.

ALTER TABLE payments
    DROP CONSTRAINT payments_payer_account_id_fkey,
    DROP CONSTRAINT payments_merchant_account_id_fkey,
    DROP CONSTRAINT payments_entry_id_fkey;

-- The one lookup both checks use: the first of the accounts and then of the journal entries
-- named that does not exist (no row: all do). Scalar subqueries, never turned into joins: one
-- primary-key probe per id, whatever the tables' size. Callers pass each id once.
CREATE FUNCTION unknown_reference(accounts_named uuid[], entries_named uuid[])
RETURNS TABLE (kind text, id uuid) LANGUAGE sql STABLE AS $$
    (SELECT 'an account', i FROM unnest(accounts_named) AS i
      WHERE (SELECT a.id FROM accounts a WHERE a.id = i) IS NULL LIMIT 1)
    UNION ALL
    (SELECT 'a journal entry', i FROM unnest(entries_named) AS i
      WHERE (SELECT e.id FROM journal_entries e WHERE e.id = i) IS NULL LIMIT 1)
    LIMIT 1
$$;

CREATE FUNCTION check_payments() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unknown record;
BEGIN
    -- Each account once (a batch's payments share their merchant).
    SELECT * INTO unknown FROM unknown_reference(
        ARRAY(SELECT payer_account_id FROM new_payments
              UNION SELECT merchant_account_id FROM new_payments),
        ARRAY(SELECT entry_id FROM new_payments));
    IF unknown.id IS NOT NULL THEN
        RAISE EXCEPTION 'payment % names % that does not exist: %',
            (SELECT p.payment_id FROM new_payments p
              WHERE unknown.id IN (p.payer_account_id, p.merchant_account_id, p.entry_id)
              LIMIT 1),
            unknown.kind, unknown.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payments_refer_to_rows
    AFTER INSERT ON payments
    REFERENCING NEW TABLE AS new_payments
    FOR EACH STATEMENT EXECUTE FUNCTION check_payments();

-- The rule of 0007, unchanged, now called only for an UPDATE that breaks it: the condition is
-- evaluated without entering PL/pgSQL, once per refunded payment.
DROP TRIGGER payments_refunds_only_grow ON payments;
CREATE TRIGGER payments_refunds_only_grow BEFORE UPDATE ON payments
    FOR EACH ROW
    WHEN (NEW.refunded < OLD.refunded
          OR (NEW.payment_id, NEW.payer_account_id, NEW.merchant_account_id, NEW.currency,
              NEW.amount, NEW.fee, NEW.entry_id)
             IS DISTINCT FROM
             (OLD.payment_id, OLD.payer_account_id, OLD.merchant_account_id, OLD.currency,
              OLD.amount, OLD.fee, OLD.entry_id))
    EXECUTE FUNCTION payments_refunds_only_grow();

-- Holds (0006), the same way: the wallet a hold is placed on, and the entry that settles it.
ALTER TABLE holds
    DROP CONSTRAINT holds_wallet_account_id_fkey,
    DROP CONSTRAINT holds_settle_entry_id_fkey;

CREATE FUNCTION check_holds() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unknown record;
BEGIN
    -- The wallet is checked when a hold is placed: holds_resolve_once refuses to change it.
    SELECT * INTO unknown FROM unknown_reference(
        CASE WHEN TG_OP = 'INSERT'
             THEN ARRAY(SELECT DISTINCT wallet_account_id FROM new_holds) END,
        ARRAY(SELECT settle_entry_id FROM new_holds WHERE settle_entry_id IS NOT NULL));
    IF unknown.id IS NOT NULL THEN
        RAISE EXCEPTION 'hold % names % that does not exist: %',
            (SELECT h.cashout_id FROM new_holds h
              WHERE unknown.id IN (h.wallet_account_id, h.settle_entry_id)
              LIMIT 1),
            unknown.kind, unknown.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER holds_refer_to_rows_when_placed
    AFTER INSERT ON holds
    REFERENCING NEW TABLE AS new_holds
    FOR EACH STATEMENT EXECUTE FUNCTION check_holds();
CREATE TRIGGER holds_refer_to_rows_when_resolved
    AFTER UPDATE ON holds
    REFERENCING NEW TABLE AS new_holds
    FOR EACH STATEMENT EXECUTE FUNCTION check_holds();

-- 0006's rule, unchanged, called only for an UPDATE that breaks it.
DROP TRIGGER holds_resolve_once ON holds;
CREATE TRIGGER holds_resolve_once BEFORE UPDATE ON holds
    FOR EACH ROW
    WHEN (OLD.status <> 'pending'
          OR (NEW.cashout_id, NEW.wallet_account_id, NEW.currency, NEW.amount, NEW.fee,
              NEW.placed_at, NEW.expires_at, NEW.out_day, NEW.command_event_id,
              NEW.correlation_id)
             IS DISTINCT FROM
             (OLD.cashout_id, OLD.wallet_account_id, OLD.currency, OLD.amount, OLD.fee,
              OLD.placed_at, OLD.expires_at, OLD.out_day, OLD.command_event_id,
              OLD.correlation_id))
    EXECUTE FUNCTION holds_resolve_once();
