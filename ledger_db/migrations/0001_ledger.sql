-- Ledger schema v1. Applied by `ledgerflow migrate` as the owner role (ledgerflow_owner).
-- The application role (ledgerflow_app) owns nothing and gets only the rights it needs, so the
-- journal's append-only rule holds against the application itself.

-- Customers: identity and tier. Personal data lives apart in customer_pii.
CREATE TABLE customers (
    id          uuid        PRIMARY KEY,
    tier        text        NOT NULL DEFAULT 'basic' CHECK (tier IN ('basic', 'standard', 'full')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Personal data, encrypted by the application (AES-256-GCM: nonce || ciphertext+tag) with the
-- key named by key_id (ledger_db/pii.py). No plaintext personal data is stored anywhere.
CREATE TABLE customer_pii (
    customer_id          uuid  PRIMARY KEY REFERENCES customers (id),
    key_id               text  NOT NULL CHECK (length(key_id) BETWEEN 1 AND 64),
    full_name            bytea NOT NULL,
    phone_number         bytea NOT NULL,
    email                bytea,
    national_id          bytea,
    bank_code            text,
    bank_account_number  bytea,
    -- HMAC-SHA256 of the E.164 number under the index key: one wallet customer per number.
    phone_index          bytea NOT NULL UNIQUE CHECK (length(phone_index) = 32)
);

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
    -- Target of the balances' composite foreign key: a balance row's kind is its account's.
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
    entry_id    uuid     NOT NULL,
    seq         smallint NOT NULL CHECK (seq >= 0),
    account_id  uuid     NOT NULL,
    currency    char(3)  NOT NULL,
    amount      bigint   NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, seq)
);
CREATE INDEX postings_account_id_idx ON postings (account_id);

-- Double entry, checked set-based once per INSERT statement (row-level foreign keys and
-- triggers would cost a query per posting): every entry the statement posts to was created in
-- this transaction, gets at least two postings summing to zero per currency, and each posting
-- is in its account's currency. Since each statement is balanced on its own, so is their union.
CREATE FUNCTION check_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    SELECT 'posting to journal entry ' || p.entry_id || ' which was not created with it'
      INTO problem
      FROM new_postings p LEFT JOIN journal_entries e ON e.id = p.entry_id
     WHERE e.id IS NULL OR e.tx_id <> pg_current_xact_id()
     LIMIT 1;
    IF problem IS NULL THEN
        WITH per_currency AS (
            SELECT entry_id, count(*) AS n, sum(amount) AS total
              FROM new_postings GROUP BY entry_id, currency
        )
        SELECT 'journal entry ' || entry_id || ' is not balanced' INTO problem
          FROM per_currency
         GROUP BY entry_id
        HAVING sum(n) < 2 OR bool_or(total <> 0)
         LIMIT 1;
    END IF;
    IF problem IS NULL THEN
        SELECT 'posting ' || p.entry_id || '/' || p.seq || ' is not in its account''s currency'
          INTO problem
          FROM new_postings p LEFT JOIN accounts a ON a.id = p.account_id
         WHERE a.id IS NULL OR a.currency <> p.currency
         LIMIT 1;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_balanced
    AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION check_postings();

-- An entry without postings is refused at commit (one index probe per entry).
CREATE FUNCTION check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM postings WHERE entry_id = NEW.id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'journal entry % is not balanced: it has no postings', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entries_have_postings
    AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_entry_has_postings();

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
    -- No foreign key: a row-level check per record costs a query each; `ledgerflow audit`
    -- proves every recorded entry exists (records_have_outcomes).
    journal_entry_id  uuid,
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
