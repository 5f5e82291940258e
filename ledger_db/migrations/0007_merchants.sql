-- Merchants: payments with a fee split, partial and full refunds (DESIGN.md §5.2). Expand only:
-- release 0.1's workers keep working on this schema (a customer is a consumer by default).

ALTER TABLE customers
    ADD COLUMN kind text NOT NULL DEFAULT 'consumer' CHECK (kind IN ('consumer', 'merchant'));
-- `ledgerflow merchants list` reads the few merchants among the many customers.
CREATE INDEX customers_merchants ON customers (created_at, id) WHERE kind = 'merchant';

-- A merchant's fee schedule, with its history: the row in force is the latest. Set by operations
-- (`ledgerflow merchants set-fee`), never by a command; a merchant without a row pays the
-- deployment's default (LEDGERFLOW_MERCHANT_FEE_BPS, 150, fixed 0).
CREATE TABLE merchant_fees (
    id           bigserial   PRIMARY KEY,
    customer_id  uuid        NOT NULL REFERENCES customers (id),
    bps          integer     NOT NULL CHECK (bps >= 0 AND bps <= 10000),
    fixed        bigint      NOT NULL CHECK (fixed >= 0),
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by   text        NOT NULL CHECK (length(changed_by) BETWEEN 1 AND 200)
);
CREATE INDEX merchant_fees_in_force ON merchant_fees (customer_id, changed_at DESC, id DESC);
CREATE TRIGGER merchant_fees_append_only
    BEFORE UPDATE OR DELETE ON merchant_fees
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

-- One row per completed payment, locked by its refunds: what was paid, the fee taken, and how
-- much has been refunded and how much fee returned so far. The floor rule holds at every step,
-- so a full refund returns exactly the fee.
CREATE TABLE payments (
    payment_id           uuid    PRIMARY KEY,
    payer_account_id     uuid    NOT NULL REFERENCES accounts (id),
    merchant_account_id  uuid    NOT NULL REFERENCES accounts (id),
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount               bigint  NOT NULL CHECK (amount > 0),
    fee                  bigint  NOT NULL CHECK (fee >= 0 AND fee <= amount),
    refunded             bigint  NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
    fee_returned         bigint  NOT NULL DEFAULT 0,
    entry_id             uuid    NOT NULL UNIQUE REFERENCES journal_entries (id),
    CHECK (payer_account_id <> merchant_account_id),
    -- numeric: fee × refunded can pass bigint (both up to 10^15).
    CHECK (fee_returned = floor(fee::numeric * refunded / amount))
);
CREATE INDEX payments_merchant ON payments (merchant_account_id);

-- Refunds only add up: what was refunded never shrinks, and nothing else of a payment changes.
CREATE FUNCTION payments_refunds_only_grow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.refunded < OLD.refunded
       OR (NEW.payment_id, NEW.payer_account_id, NEW.merchant_account_id, NEW.currency,
           NEW.amount, NEW.fee, NEW.entry_id)
          IS DISTINCT FROM
          (OLD.payment_id, OLD.payer_account_id, OLD.merchant_account_id, OLD.currency,
           OLD.amount, OLD.fee, OLD.entry_id) THEN
        RAISE EXCEPTION 'payment % may only be refunded further', OLD.payment_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER payments_refunds_only_grow BEFORE UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_refunds_only_grow();
CREATE TRIGGER payments_never_deleted BEFORE DELETE OR TRUNCATE ON payments
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_flow_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_flow_check
    CHECK (flow IN ('cashin', 'transfer', 'cashout', 'cashout_settle', 'cashout_return',
                    'payment', 'refund'));
ALTER TABLE idempotency_records DROP CONSTRAINT idempotency_records_flow_check;
ALTER TABLE idempotency_records ADD CONSTRAINT idempotency_records_flow_check
    CHECK (flow IN ('onboarding', 'cashin', 'transfer', 'cashout', 'cashout_settle',
                    'cashout_return', 'payment', 'refund'));

GRANT SELECT, INSERT ON merchant_fees TO ledgerflow_app;
GRANT USAGE ON SEQUENCE merchant_fees_id_seq TO ledgerflow_app;
GRANT SELECT, INSERT ON payments TO ledgerflow_app;
GRANT UPDATE (refunded, fee_returned) ON payments TO ledgerflow_app;
