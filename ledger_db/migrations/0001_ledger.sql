-- Ledger schema v1. Applied by `ledgerflow migrate` as the owner role (ledgerflow_owner).
-- The application role (ledgerflow_app) owns nothing and gets only the rights it needs, so the
-- journal's append-only rule holds against the application itself.

-- Customers: identity and tier. Personal data lives apart in customer_pii.
CREATE TABLE customers (
    id          uuid        PRIMARY KEY,
    tier        text        NOT NULL DEFAULT 'basic' CHECK (tier IN ('basic', 'standard', 'full')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_pii (
    customer_id          uuid PRIMARY KEY REFERENCES customers (id),
    full_name            text NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    phone_number         text NOT NULL CHECK (phone_number ~ '^\+[1-9][0-9]{1,14}$'),
    email                text,
    national_id          text,
    bank_code            text,
    bank_account_number  text
);
-- One wallet customer per phone number.
CREATE UNIQUE INDEX customer_pii_phone_number_key ON customer_pii (phone_number);

-- Accounts: customer wallets and the house accounts of each currency.
CREATE TABLE accounts (
    id           uuid        PRIMARY KEY,
    kind         text        NOT NULL
        CHECK (kind IN ('wallet', 'cashin_clearing', 'cashout_clearing', 'fee_revenue')),
    currency     char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    customer_id  uuid        REFERENCES customers (id),
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'wallet') = (customer_id IS NOT NULL)),
    -- Targets of the composite foreign keys below: a posting's currency and a balance row's kind
    -- must be those of the account.
    UNIQUE (id, currency),
    UNIQUE (id, kind)
);
-- One house account of each kind per currency.
CREATE UNIQUE INDEX accounts_house_kind_currency_key ON accounts (kind, currency)
    WHERE kind <> 'wallet';

-- Balances, kept current in the same transaction as the postings. A wallet has one row
-- (shard 0); a house account has several shards summed on read, so that concurrent writers
-- update different rows instead of queueing on one (docs/decisions/hot-house-accounts.md).
CREATE TABLE balances (
    account_id  uuid     NOT NULL,
    kind        text     NOT NULL,
    shard       smallint NOT NULL CHECK (shard >= 0 AND shard < 64),
    balance     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, shard),
    FOREIGN KEY (account_id, kind) REFERENCES accounts (id, kind),
    CHECK (kind <> 'wallet' OR (shard = 0 AND balance >= 0))
);

-- The journal: append-only.
CREATE TABLE journal_entries (
    id               uuid        PRIMARY KEY,
    flow             text        NOT NULL
        CHECK (flow IN ('cashin', 'transfer', 'cashout')),
    idempotency_key  uuid        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- The transaction that wrote the entry: postings may only be added in that transaction.
    tx_id            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (flow, idempotency_key)
);

CREATE TABLE postings (
    entry_id    uuid     NOT NULL REFERENCES journal_entries (id),
    seq         smallint NOT NULL CHECK (seq >= 0),
    account_id  uuid     NOT NULL,
    currency    char(3)  NOT NULL,
    amount      bigint   NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, seq),
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
);
CREATE INDEX postings_account_id_idx ON postings (account_id);

-- Double entry, checked at commit: every entry has at least two postings and they sum to zero
-- per currency. One check per entry (not per posting) keeps the cost at one index probe.
CREATE FUNCTION check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n_postings  bigint;
    n_unbalanced bigint;
BEGIN
    SELECT count(*) INTO n_postings FROM postings WHERE entry_id = NEW.id;
    SELECT count(*) INTO n_unbalanced FROM (
        SELECT currency FROM postings WHERE entry_id = NEW.id
        GROUP BY currency HAVING sum(amount) <> 0
    ) AS unbalanced;
    IF n_postings < 2 OR n_unbalanced > 0 THEN
        RAISE EXCEPTION 'journal entry % is not balanced (% postings, % unbalanced currencies)',
            NEW.id, n_postings, n_unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entries_balanced
    AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_entry_balanced();

-- Postings may only be added to an entry in the transaction that created it, so a balanced
-- entry cannot be unbalanced later by an extra posting.
CREATE FUNCTION check_postings_same_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM new_postings p JOIN journal_entries e ON e.id = p.entry_id
        WHERE e.tx_id <> pg_current_xact_id()
    ) THEN
        RAISE EXCEPTION 'postings can only be added with their journal entry'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_same_transaction
    AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION check_postings_same_transaction();

-- Append-only: no UPDATE, DELETE or TRUNCATE of the journal, whoever asks.
CREATE FUNCTION refuse_journal_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER journal_entries_append_only
    BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER journal_entries_no_truncate
    BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER postings_append_only
    BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER postings_no_truncate
    BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();

-- Idempotency records: the outcome of every command that was decided, by its key. A retried key
-- is graded against content_hash; the stored result event is replayed byte for byte.
CREATE TABLE idempotency_records (
    flow              text        NOT NULL
        CHECK (flow IN ('onboarding', 'cashin', 'transfer', 'cashout')),
    key               uuid        NOT NULL,
    content_hash      bytea       NOT NULL CHECK (length(content_hash) = 32),
    outcome           text        NOT NULL CHECK (outcome IN ('completed', 'rejected')),
    reason            text,
    journal_entry_id  uuid        REFERENCES journal_entries (id),
    result_topic      text        NOT NULL,
    result_event_id   uuid        NOT NULL,
    result_payload    bytea       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow, key),
    CHECK ((outcome = 'rejected') = (reason IS NOT NULL)),
    CHECK (outcome = 'completed' OR journal_entry_id IS NULL),
    CHECK (flow = 'onboarding' OR outcome = 'rejected' OR journal_entry_id IS NOT NULL)
);

-- Transactional outbox: result events written with the money, published by the relay.
CREATE TABLE outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid        NOT NULL,
    topic         text        NOT NULL,
    key           bytea       NOT NULL,
    payload       bytea       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;

-- Least privilege for the application role.
GRANT USAGE ON SCHEMA public TO ledgerflow_app;
GRANT SELECT, INSERT ON customers, customer_pii, accounts, journal_entries, postings,
    idempotency_records TO ledgerflow_app;
GRANT UPDATE (tier) ON customers TO ledgerflow_app;
GRANT UPDATE (status) ON accounts TO ledgerflow_app;
GRANT SELECT, INSERT, UPDATE ON balances TO ledgerflow_app;
GRANT SELECT, INSERT, DELETE ON outbox TO ledgerflow_app;
GRANT UPDATE (published_at) ON outbox TO ledgerflow_app;
