-- The relay quarantines an outbox row it cannot publish after bounded attempts, instead of
-- retrying the whole batch forever (docs/decisions/outbox-relay.md), and prunes published rows
-- after their retention period.
--
-- Expand only: the previous release's relay selects `published_at IS NULL` and marks
-- `published_at`, which still works (it ignores the quarantine and retries as before), and its
-- workers COPY the same columns as ever (the new ones take their defaults). Adding a column with
-- a constant default or none rewrites no row, and no index is built: the relay finds pending
-- and quarantined rows through outbox_pending_idx, whose predicate covers both.
ALTER TABLE outbox
    -- Publication attempts that failed for a reason of the row's own (missing topic, ACL, too
    -- large), not the broker's; reset by `ledgerflow outbox retry`.
    ADD COLUMN attempts        integer NOT NULL DEFAULT 0,
    -- Set: the relay skips the row until `ledgerflow outbox retry` clears it.
    ADD COLUMN quarantined_at  timestamptz,
    -- The last such failure, "ErrorClass: message", bounded by the relay.
    ADD COLUMN last_error      text;

-- The relay (and `ledgerflow outbox retry`) write the new columns; UPDATE is granted per column
-- on the outbox (0001), so the application role updates nothing else.
GRANT UPDATE (attempts, quarantined_at, last_error) ON outbox TO ledgerflow_app;
-- The relay prunes published rows after LEDGERFLOW_OUTBOX_RETENTION_S. 0001 granted DELETE on
-- the outbox already; restated here as the right pruning relies on. The journal (journal_entries,
-- postings) stays append-only: no DELETE is granted there and its triggers refuse one anyway.
GRANT DELETE ON outbox TO ledgerflow_app;
