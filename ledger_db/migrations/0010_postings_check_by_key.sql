-- The double-entry check of each INSERT into postings (0001) looks up the journal entries and the
-- accounts its rows name by primary key, instead of joining the whole tables. The planner had
-- costed one probe per row above a scan of either table while they were small (tens of
-- thousands of rows), so every statement read both tables through: 1.3-1.9 ms a statement at
-- 10,000 accounts and entries, growing with the journal, paid by every chunk of every batch.
-- A scalar subquery is never turned into a join: the check now costs one probe per entry and
-- per posting of the statement, whatever the journal's size. Same rules, same messages.
CREATE OR REPLACE FUNCTION check_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    SELECT 'posting to journal entry ' || p.entry_id || ' which was not created with it'
      INTO problem
      FROM (SELECT DISTINCT entry_id FROM new_postings) p
     WHERE (SELECT e.tx_id FROM journal_entries e WHERE e.id = p.entry_id)
           IS DISTINCT FROM pg_current_xact_id()
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
          FROM new_postings p
         WHERE (SELECT a.currency FROM accounts a WHERE a.id = p.account_id)
               IS DISTINCT FROM p.currency
         LIMIT 1;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
