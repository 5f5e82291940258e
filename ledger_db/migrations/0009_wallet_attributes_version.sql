-- The writers keep what a batch knows of a wallet besides its balance row (its account's
-- currency and status, its customer's tier, subject and kind) from one batch to the next
-- (ledger_db/wallet_attributes.py), so that locking a batch's wallets reads balance rows only.
-- Any change to an account or a customer bumps this one row's version in the same transaction;
-- each batch reads the version with its locks, and a writer whose attributes are of another
-- version forgets them all and reads them again.
CREATE TABLE wallet_attributes_version (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    version  bigint  NOT NULL DEFAULT 0
);
INSERT INTO wallet_attributes_version DEFAULT VALUES;

CREATE FUNCTION bump_wallet_attributes_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE wallet_attributes_version SET version = version + 1;
    RETURN NULL;
END $$;

-- Per statement, whoever changes them (the app's `customers set-tier`, an operator's SQL). New
-- rows change nothing cached: a writer reads a wallet it does not know.
CREATE TRIGGER accounts_attributes_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION bump_wallet_attributes_version();
CREATE TRIGGER customers_attributes_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION bump_wallet_attributes_version();

GRANT SELECT ON wallet_attributes_version TO ledgerflow_app;
-- The trigger runs as whoever changes a tier or a status: the app may.
GRANT UPDATE (version) ON wallet_attributes_version TO ledgerflow_app;
