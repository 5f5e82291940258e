-- Who owns a customer, tier limits per currency, and outgoing totals for daily/monthly limits.

-- The identity provider's subject bound at onboarding; debits need a token of this subject.
ALTER TABLE customers ADD COLUMN subject text CHECK (length(subject) BETWEEN 1 AND 255);
CREATE INDEX customers_subject_idx ON customers (subject);

-- Limits per tier and currency, in minor units; NULL = unbounded. currency '*' applies to every
-- currency without a row of its own.
CREATE TABLE tier_limits (
    tier               text   NOT NULL CHECK (tier IN ('basic', 'standard', 'full')),
    currency           text   NOT NULL CHECK (currency = '*' OR currency ~ '^[A-Z]{3}$'),
    single_amount_max  bigint CHECK (single_amount_max > 0),
    balance_max        bigint CHECK (balance_max > 0),
    daily_out_max      bigint CHECK (daily_out_max > 0),
    monthly_out_max    bigint CHECK (monthly_out_max > 0),
    PRIMARY KEY (tier, currency)
);
INSERT INTO tier_limits VALUES
    ('basic',    '*',  1000000,    5000000,    2000000,    10000000),
    ('standard', '*', 10000000,  100000000,   20000000,   200000000),
    ('full',     '*',     NULL,       NULL,       NULL,        NULL);

-- What each wallet sent per UTC day (transfers out, cash-outs with their fee). Written in the
-- same transaction as the debit, under the wallet's balance row lock, so two concurrent
-- debits cannot jointly pass a limit.
CREATE TABLE wallet_outgoing (
    account_id  uuid   NOT NULL,
    day         date   NOT NULL,
    total       bigint NOT NULL CHECK (total >= 0),
    PRIMARY KEY (account_id, day)
);

GRANT SELECT ON tier_limits TO ledgerflow_app;
GRANT SELECT, INSERT, UPDATE ON wallet_outgoing TO ledgerflow_app;
