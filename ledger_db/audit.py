"""Whole-database invariant checks behind `ledgerflow audit`.

Each check is one SQL query returning the violating rows (empty = holds), so the audit reads
the ledger the same way whatever wrote it, and a superuser's tampering shows up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from ledgerflow.contracts.topics import CASHOUT, CASHOUT_RETURN, FLOWS, PAYMENT, REFUND

VIOLATIONS_SHOWN_MAX = 20


def _recorded_results() -> str:
    """What an idempotency record may answer, as a CTE `results (flow, outcome, type, id_field,
    posts)`: each flow's result types from the registry (contracts/topics.py), and whether that
    answer posted a journal entry (its result names one). A cash-out's `cashout.voided` is not
    among them: only an expiry publishes it, and an expiry has no record of its own."""
    rows = []
    for flow in FLOWS:
        for event_type in flow.result_topics:
            if (flow.name, event_type) == (CASHOUT.name, CASHOUT_RETURN.completed_topic):
                continue
            outcome = "rejected" if event_type == flow.rejected_topic else "completed"
            posts = outcome == "completed" and (
                "journal_entry_id" in flow.model_of(event_type).model_fields
            )
            sql_bool = "true" if posts else "false"
            rows.append(
                f"('{flow.name}', '{outcome}', '{event_type}', '{flow.id_field}', {sql_bool})"
            )
    return (
        "results (flow, outcome, type, id_field, posts) AS (VALUES\n    "
        + ",\n    ".join(rows)
        + ")"
    )


_RESULTS = _recorded_results()

# The CloudEvents types (without the deployment prefix) of the answers that leave no entry but a
# hold: placing it, and releasing it on the bank's return (an expiry's answer has no record).
_HELD = "cashout.held"
_VOIDED = CASHOUT_RETURN.completed_topic

CHECKS: dict[str, tuple[str, str]] = {
    "balances_equal_postings": (
        "every account's balance equals the sum of its postings",
        """
        WITH b AS (SELECT account_id, sum(balance)::bigint AS balance FROM balances
                   GROUP BY account_id),
             p AS (SELECT account_id, sum(amount)::bigint AS total FROM postings
                   GROUP BY account_id)
        SELECT b.account_id::text AS account_id, b.balance, coalesce(p.total, 0) AS postings
        FROM b LEFT JOIN p USING (account_id)
        WHERE b.balance <> coalesce(p.total, 0)
        UNION ALL
        SELECT p.account_id::text, NULL, p.total FROM p
        WHERE NOT EXISTS (SELECT 1 FROM balances x WHERE x.account_id = p.account_id)
        """,
    ),
    "running_balances_match_postings": (
        (
            "each wallet posting's stored balance_after is the sum of the wallet's postings up "
            "to it, in the order of its history (where release 0.1 stored none, reads sum)"
        ),
        """
        SELECT account_id::text AS account_id, entry_id::text AS entry_id, balance_after,
               running
        FROM (
            SELECT p.account_id, p.entry_id, p.balance_after,
                   sum(p.amount) OVER (
                       PARTITION BY p.account_id ORDER BY p.posted_at, p.id
                   )::bigint AS running
            FROM postings p JOIN accounts a ON a.id = p.account_id
            WHERE a.kind = 'wallet'
        ) h
        WHERE balance_after IS NOT NULL AND balance_after <> running
        """,
    ),
    "currency_totals_zero": (
        "postings of each currency sum to zero",
        (
            "SELECT currency, sum(amount)::bigint AS total FROM postings GROUP BY currency "
            "HAVING sum(amount) <> 0"
        ),
    ),
    "entries_balanced": (
        "every journal entry has two or more postings summing to zero per currency",
        """
        SELECT e.id::text AS entry_id, count(p.seq) AS postings
        FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id
        GROUP BY e.id
        HAVING count(p.seq) < 2 OR EXISTS (
            SELECT 1 FROM postings q WHERE q.entry_id = e.id
            GROUP BY q.currency HAVING sum(q.amount) <> 0)
        """,
    ),
    "no_negative_wallet": (
        "no wallet's balance, held amount or available balance (balance - held) is below zero",
        (
            "SELECT account_id::text AS account_id, balance, held FROM balances "
            "WHERE kind = 'wallet' AND (balance < 0 OR held < 0 OR balance - held < 0)"
        ),
    ),
    "postings_currency_matches_account": (
        "every posting is in its account's currency",
        (
            "SELECT p.entry_id::text AS entry_id, p.seq FROM postings p "
            "JOIN accounts a ON a.id = p.account_id WHERE a.currency <> p.currency"
        ),
    ),
    "entries_have_records": (
        "every journal entry was recorded against its command's key",
        (
            "SELECT e.id::text AS entry_id FROM journal_entries e LEFT JOIN idempotency_records r "
            "ON r.flow = e.flow AND r.key = e.idempotency_key "
            "WHERE r.key IS NULL OR r.journal_entry_id IS DISTINCT FROM e.id"
        ),
    ),
    "records_have_outcomes": (
        "every completed money command has its journal entry (placing or voiding a hold: none)",
        # By the record's result topic (its suffix: topics may carry a deployment prefix), not
        # its payload, so a payload that cannot be read fails only the checks that read it.
        f"""
        WITH {_RESULTS}
        SELECT r.flow, r.key::text AS key, r.journal_entry_id::text AS entry_id
        FROM idempotency_records r
        LEFT JOIN results k ON k.flow = r.flow AND k.outcome = r.outcome
                           AND right(r.result_topic, length(k.type)) = k.type
        WHERE r.outcome = 'completed' AND CASE
            WHEN coalesce(k.posts, true) THEN NOT EXISTS (
                SELECT 1 FROM journal_entries e WHERE e.id = r.journal_entry_id)
            ELSE r.journal_entry_id IS NOT NULL END
        """,
    ),
    "outgoing_totals_match_debits": (
        "every wallet's outgoing totals equal its debits and holds, less what voids gave back",
        # A day's total is its wallet debits (not a settlement's: its hold counted when it was
        # placed; a reversal debits no wallet and gives nothing back; a refund debits the
        # merchant but counts toward nobody's totals, DESIGN.md §5.2), plus amount + fee of the
        # holds placed that day, less what voids gave back to the day; its month's likewise
        # (month_given_back). The balance row keeps its latest day's and month's: a day some
        # debit or hold counted on, after which no day counts anything (a later day may net to
        # nothing, a hold placed and voided in one batch, which leaves `out_day` where it was).
        """
        WITH counted AS (
            -- The day the debit counted toward, recorded with the entry; entries written before
            -- it was recorded (migration 0004) counted toward their transaction's start day.
            SELECT p.account_id,
                   coalesce(e.out_day, (e.created_at AT TIME ZONE 'UTC')::date) AS day,
                   -p.amount AS day_amount, -p.amount AS month_amount
            FROM postings p
            JOIN journal_entries e ON e.id = p.entry_id
            JOIN balances w ON w.account_id = p.account_id AND w.kind = 'wallet'
            WHERE p.amount < 0 AND e.flow NOT IN ('cashout_settle', 'cashout_return', 'refund')
            UNION ALL
            SELECT wallet_account_id, out_day, amount + fee, amount + fee FROM holds
            UNION ALL
            SELECT wallet_account_id, out_day,
                   CASE WHEN day_given_back THEN -(amount + fee) ELSE 0 END,
                   CASE WHEN month_given_back THEN -(amount + fee) ELSE 0 END
            FROM holds WHERE status = 'voided' AND (day_given_back OR month_given_back)
            UNION ALL
            -- A void that gave its month back moved the row to the day it was decided (its
            -- resolved_at, the batch's clock), with nothing counted that day by it.
            SELECT wallet_account_id, (resolved_at AT TIME ZONE 'UTC')::date, 0, 0
            FROM holds WHERE status = 'voided' AND month_given_back
        ),
        per_day AS (
            SELECT account_id, day, sum(day_amount) AS day_total,
                   sum(month_amount) AS month_part
            FROM counted GROUP BY account_id, day
        ),
        t AS (
            SELECT b.account_id, b.out_day, b.out_day_total, b.out_month_total,
                   coalesce(sum(d.day_total) FILTER (WHERE d.day = b.out_day), 0)::bigint
                       AS day_total,
                   coalesce(sum(d.month_part) FILTER (
                       WHERE date_trunc('month', d.day) = date_trunc('month', b.out_day)
                   ), 0)::bigint AS month_total,
                   coalesce(bool_or(d.day = b.out_day), false) AS counted_on_day,
                   min(d.day) FILTER (
                       WHERE (b.out_day IS NULL OR d.day > b.out_day)
                         AND (d.day_total <> 0 OR d.month_part <> 0)
                   ) AS later_day
            FROM balances b LEFT JOIN per_day d USING (account_id)
            WHERE b.kind = 'wallet'
            GROUP BY b.account_id, b.out_day, b.out_day_total, b.out_month_total
        )
        SELECT account_id::text AS account_id, out_day::text AS day,
               out_day_total AS outgoing_day, day_total AS debits_day,
               out_month_total AS outgoing_month, month_total AS debits_month,
               later_day::text AS later_day
        FROM t
        WHERE out_day_total <> day_total
           OR out_month_total <> month_total
           OR (out_day IS NOT NULL AND NOT counted_on_day)
           OR later_day IS NOT NULL
        """,
    ),
    "entries_match_results": (
        "every journal entry posts what its recorded result says: accounts, amount and fee",
        # The postings each completed result implies (ledger_db/rules.py), compared as sorted
        # lists with the entry's: a wrong amount, a wrong wallet or a fee posted to another
        # house account than fee revenue all differ. A cash-out's entry (at once, or settling
        # its hold) pays amount + fee out of the wallet; a reversal posts its exact negation.
        # A payment: payer -amount, merchant +(amount - fee), fee revenue +fee; a refund: payer
        # +amount, merchant -(amount - fee_returned), fee revenue -fee_returned (a part of 0 is
        # not posted). A result that posts nothing (a hold placed or released) implies none.
        f"""
        WITH {_RESULTS},
        r AS (
            SELECT r.flow, r.key, r.journal_entry_id, k.id_field,
                   coalesce(k.posts, false) AS posts,
                   CASE WHEN r.flow IN ('cashout_return', 'refund') THEN -1 ELSE 1 END AS sign,
                   e.event -> 'data' AS d,
                   -- What of a payment or refund is fee revenue's: its fee, its fee_returned.
                   e.event -> 'data' ->> CASE r.flow WHEN 'refund' THEN 'fee_returned'
                                                     ELSE 'fee' END AS fee_part
            FROM idempotency_records r
            CROSS JOIN LATERAL (
                SELECT convert_from(r.result_payload, 'UTF8')::jsonb AS event) AS e
            LEFT JOIN results k
              ON k.flow = r.flow AND k.outcome = r.outcome AND k.type = e.event ->> 'type'
            WHERE r.outcome = 'completed' AND r.flow <> 'onboarding'
        ),
        implied AS (
            SELECT flow, key, (d ->> 'from_account_id')::uuid AS account_id,
                   -(d ->> 'amount')::numeric AS amount
            FROM r WHERE flow = 'transfer' AND posts
            UNION ALL
            SELECT flow, key, (d ->> 'to_account_id')::uuid, (d ->> 'amount')::numeric
            FROM r WHERE flow = 'transfer' AND posts
            UNION ALL
            SELECT flow, key, (d ->> 'wallet_account_id')::uuid, (d ->> 'amount')::numeric
            FROM r WHERE flow = 'cashin' AND posts
            UNION ALL
            SELECT r.flow, r.key, h.id, -(r.d ->> 'amount')::numeric
            FROM r JOIN accounts h ON h.kind = 'cashin_clearing' AND h.currency = r.d ->> 'currency'
            WHERE r.flow = 'cashin' AND r.posts
            UNION ALL
            SELECT flow, key, (d ->> 'wallet_account_id')::uuid,
                   -sign * ((d ->> 'amount')::numeric + coalesce((d ->> 'fee')::numeric, 0))
            FROM r WHERE flow IN ('cashout', 'cashout_settle', 'cashout_return') AND posts
            UNION ALL
            SELECT r.flow, r.key, h.id, r.sign * (r.d ->> 'amount')::numeric
            FROM r JOIN accounts h
              ON h.kind = 'cashout_clearing' AND h.currency = r.d ->> 'currency'
            WHERE r.flow IN ('cashout', 'cashout_settle', 'cashout_return') AND r.posts
            UNION ALL
            SELECT r.flow, r.key, h.id, r.sign * (r.d ->> 'fee')::numeric
            FROM r JOIN accounts h ON h.kind = 'fee_revenue' AND h.currency = r.d ->> 'currency'
            WHERE r.flow IN ('cashout', 'cashout_settle', 'cashout_return') AND r.posts
              AND (r.d ->> 'fee')::numeric > 0
            UNION ALL
            SELECT flow, key, (d ->> 'from_account_id')::uuid, -(d ->> 'amount')::numeric
            FROM r WHERE flow = 'payment' AND posts
            UNION ALL
            SELECT flow, key, (d ->> 'to_account_id')::uuid, (d ->> 'amount')::numeric
            FROM r WHERE flow = 'refund' AND posts
            UNION ALL
            SELECT flow, key, (d ->> 'merchant_account_id')::uuid,
                   sign * ((d ->> 'amount')::numeric - fee_part::numeric)
            FROM r WHERE flow IN ('payment', 'refund') AND posts
              AND (d ->> 'amount')::numeric <> fee_part::numeric
            UNION ALL
            SELECT r.flow, r.key, h.id, r.sign * r.fee_part::numeric
            FROM r JOIN accounts h ON h.kind = 'fee_revenue' AND h.currency = r.d ->> 'currency'
            WHERE r.flow IN ('payment', 'refund') AND r.posts AND r.fee_part::numeric <> 0
        ),
        i AS (
            SELECT flow, key, string_agg(account_id || ':' || amount, ' '
                                         ORDER BY account_id, amount) AS postings
            FROM implied GROUP BY flow, key
        ),
        p AS (
            SELECT r.flow, r.key, string_agg(q.account_id || ':' || q.amount::numeric, ' '
                                             ORDER BY q.account_id, q.amount) AS postings,
                   bool_or(q.currency <> r.d ->> 'currency') AS other_currency
            FROM r JOIN postings q ON q.entry_id = r.journal_entry_id
            GROUP BY r.flow, r.key
        )
        SELECT r.flow, r.key::text AS key, r.journal_entry_id::text AS entry_id,
               i.postings AS result_implies, p.postings AS posted
        FROM r LEFT JOIN i USING (flow, key) LEFT JOIN p USING (flow, key)
        WHERE i.postings IS DISTINCT FROM p.postings
           OR coalesce(p.other_currency, false)
           OR r.d ->> 'journal_entry_id' IS DISTINCT FROM r.journal_entry_id::text
           OR r.d ->> r.id_field IS DISTINCT FROM r.key::text
        """,
    ),
    "outgoing_totals_within_limits": (
        "every wallet's outgoing totals are within its tier's limits, or a tier change explains it",
        # The bound of a day (month) is the largest limit among the tiers in effect during it:
        # the tier it began with (the old tier of the first change since, else today's) and each
        # tier it was changed to (customer_tier_changes). A tier without a limits row allows
        # nothing (ledger_db/rules.py fails closed); a NULL limit is unbounded. Limits come from
        # the tier_limits table, as the workers load them.
        """
        WITH w AS (
            SELECT b.account_id, a.currency, a.customer_id, c.tier, b.out_day,
                   b.out_day_total, b.out_month, b.out_month_total
            FROM balances b
            JOIN accounts a ON a.id = b.account_id
            JOIN customers c ON c.id = a.customer_id
            WHERE b.kind = 'wallet' AND b.out_day IS NOT NULL
        ),
        period AS (
            SELECT account_id, currency, customer_id, tier, 'day' AS period,
                   out_day::timestamp AT TIME ZONE 'UTC' AS starts,
                   (out_day + 1)::timestamp AT TIME ZONE 'UTC' AS ends,
                   out_day_total AS total
            FROM w
            UNION ALL
            SELECT account_id, currency, customer_id, tier, 'month',
                   out_month::timestamp AT TIME ZONE 'UTC',
                   (out_month + interval '1 month') AT TIME ZONE 'UTC',
                   out_month_total
            FROM w
        ),
        in_effect AS (
            SELECT p.account_id, p.period, p.total, p.currency, t.tier
            FROM period p CROSS JOIN LATERAL (
                SELECT coalesce(
                    (SELECT ch.old_tier FROM customer_tier_changes ch
                     WHERE ch.customer_id = p.customer_id AND ch.changed_at >= p.starts
                     ORDER BY ch.changed_at, ch.id LIMIT 1),
                    p.tier)
                UNION
                SELECT ch.new_tier FROM customer_tier_changes ch
                WHERE ch.customer_id = p.customer_id
                  AND ch.changed_at >= p.starts AND ch.changed_at < p.ends
            ) AS t(tier)
        ),
        bound AS (
            SELECT e.account_id, e.period, e.total,
                   coalesce(bool_or(l.found AND l.bound IS NULL), false) AS unbounded,
                   max(coalesce(l.bound, 0)) AS bound,
                   string_agg(DISTINCT e.tier, ',') AS tiers
            FROM in_effect e
            LEFT JOIN LATERAL (
                SELECT true AS found,
                       CASE e.period WHEN 'day' THEN x.daily_out_max
                                     ELSE x.monthly_out_max END AS bound
                FROM tier_limits x
                WHERE x.tier = e.tier AND x.currency IN (e.currency, '*')
                ORDER BY x.currency = '*'
                LIMIT 1
            ) AS l ON true
            GROUP BY e.account_id, e.period, e.total
        )
        SELECT account_id::text AS account_id, period, total, bound, tiers
        FROM bound WHERE NOT unbounded AND total > bound
        """,
    ),
    "held_equals_pending_holds": (
        "every wallet's held amount equals amount + fee of its pending holds",
        """
        WITH b AS (SELECT account_id, sum(held)::bigint AS held FROM balances
                   GROUP BY account_id),
             h AS (SELECT wallet_account_id AS account_id, sum(amount + fee)::bigint AS pending
                   FROM holds WHERE status = 'pending' GROUP BY wallet_account_id)
        SELECT coalesce(b.account_id, h.account_id)::text AS account_id,
               b.held, coalesce(h.pending, 0) AS pending
        FROM b FULL JOIN h ON h.account_id = b.account_id
        WHERE b.held IS DISTINCT FROM coalesce(h.pending, 0)
        """,
    ),
    "settled_holds_have_their_entry": (
        "every settled hold has one entry: wallet -(amount + fee), clearing +amount, fee +fee",
        """
        WITH s AS (SELECT * FROM holds WHERE status = 'settled'),
        implied AS (
            SELECT cashout_id, wallet_account_id AS account_id, -(amount + fee) AS amount
            FROM s
            UNION ALL
            SELECT s.cashout_id, a.id, s.amount
            FROM s JOIN accounts a ON a.kind = 'cashout_clearing' AND a.currency = s.currency
            UNION ALL
            SELECT s.cashout_id, a.id, s.fee
            FROM s JOIN accounts a ON a.kind = 'fee_revenue' AND a.currency = s.currency
            WHERE s.fee > 0
        ),
        i AS (
            SELECT cashout_id, string_agg(account_id || ':' || amount, ' '
                                          ORDER BY account_id, amount) AS postings
            FROM implied GROUP BY cashout_id
        ),
        p AS (
            SELECT s.cashout_id, string_agg(q.account_id || ':' || q.amount, ' '
                                            ORDER BY q.account_id, q.amount) AS postings,
                   bool_or(q.currency <> s.currency) AS other_currency
            FROM s JOIN postings q ON q.entry_id = s.settle_entry_id
            GROUP BY s.cashout_id
        ),
        n AS (
            SELECT e.idempotency_key AS cashout_id, count(*) AS entries
            FROM journal_entries e JOIN s ON s.cashout_id = e.idempotency_key
            WHERE e.flow = 'cashout_settle'
            GROUP BY e.idempotency_key
        )
        SELECT s.cashout_id::text AS cashout_id, s.settle_entry_id::text AS entry_id,
               coalesce(n.entries, 0) AS settle_entries,
               i.postings AS hold_implies, p.postings AS posted
        FROM s
        LEFT JOIN journal_entries e ON e.id = s.settle_entry_id
        LEFT JOIN i USING (cashout_id) LEFT JOIN p USING (cashout_id) LEFT JOIN n USING (cashout_id)
        WHERE e.id IS NULL
           OR e.flow <> 'cashout_settle'
           OR e.idempotency_key <> s.cashout_id
           OR e.out_day IS NOT NULL
           OR coalesce(n.entries, 0) <> 1
           OR i.postings IS DISTINCT FROM p.postings
           OR coalesce(p.other_currency, false)
        """,
    ),
    "settle_entries_have_settled_holds": (
        "every settlement entry is its settled hold's: no pending or voided hold has one",
        """
        SELECT e.id::text AS entry_id, e.idempotency_key::text AS cashout_id, h.status
        FROM journal_entries e LEFT JOIN holds h ON h.cashout_id = e.idempotency_key
        WHERE e.flow = 'cashout_settle'
          AND (h.cashout_id IS NULL OR h.status <> 'settled'
               OR h.settle_entry_id IS DISTINCT FROM e.id)
        """,
    ),
    "reversals_mirror_their_cashouts": (
        "every reversal is the only one of a completed cash-out and posts its entry negated",
        # The cash-out's entry is the immediate one (flow cashout) or its hold's settlement
        # (cashout_settle): exactly one of them. That it completed is the other checks' word:
        # the entry's record (entries_have_records), the settled hold (the checks above).
        """
        WITH rev AS (
            SELECT id, idempotency_key AS cashout_id,
                   count(*) OVER (PARTITION BY idempotency_key) AS reversals
            FROM journal_entries WHERE flow = 'cashout_return'
        ),
        paid AS (
            SELECT e.idempotency_key AS cashout_id, count(DISTINCT e.id) AS entries,
                   string_agg(p.account_id || ':' || (-p.amount), ' '
                              ORDER BY p.account_id, -p.amount) AS mirrored
            FROM journal_entries e JOIN postings p ON p.entry_id = e.id
            WHERE e.flow IN ('cashout', 'cashout_settle')
              AND e.idempotency_key IN (SELECT cashout_id FROM rev)
            GROUP BY e.idempotency_key
        ),
        posted AS (
            SELECT rev.id, string_agg(p.account_id || ':' || p.amount, ' '
                                      ORDER BY p.account_id, p.amount) AS postings
            FROM rev JOIN postings p ON p.entry_id = rev.id
            GROUP BY rev.id
        )
        SELECT rev.id::text AS entry_id, rev.cashout_id::text AS cashout_id, rev.reversals,
               coalesce(paid.entries, 0) AS cashout_entries,
               paid.mirrored AS cashout_mirrored, posted.postings AS posted
        FROM rev LEFT JOIN paid USING (cashout_id) LEFT JOIN posted USING (id)
        WHERE rev.reversals <> 1
           OR coalesce(paid.entries, 0) <> 1
           OR paid.mirrored IS DISTINCT FROM posted.postings
        """,
    ),
    "holds_match_their_records": (
        "every hold agrees with its records: held by its cash-out, voided by its return",
        # The payload is read only for the records with such results (CASE): one that cannot
        # be read fails this check only if it is theirs. Expiries have no record: the outbox
        # check ties their events to the holds.
        f"""
        WITH k AS (
            SELECT r.flow, r.key,
                   CASE WHEN r.flow IN ('cashout', 'cashout_return')
                        THEN convert_from(r.result_payload, 'UTF8')::jsonb -> 'data' END AS d
            FROM idempotency_records r
            WHERE r.outcome = 'completed'
              AND ((r.flow = 'cashout' AND right(r.result_topic, {len(_HELD)}) = '{_HELD}')
                   OR (r.flow = 'cashout_return'
                       AND right(r.result_topic, {len(_VOIDED)}) = '{_VOIDED}'))
        )
        SELECT 'record' AS side, k.flow, k.key::text AS cashout_id, h.status, h.void_reason
        FROM k LEFT JOIN holds h ON h.cashout_id = k.key
        WHERE h.cashout_id IS NULL
           OR k.d ->> 'cashout_id' IS DISTINCT FROM h.cashout_id::text
           OR k.d ->> 'wallet_account_id' IS DISTINCT FROM h.wallet_account_id::text
           OR k.d ->> 'amount' IS DISTINCT FROM h.amount::text
           OR k.d ->> 'fee' IS DISTINCT FROM h.fee::text
           OR k.d ->> 'currency' IS DISTINCT FROM h.currency::text
           OR (k.flow = 'cashout'
               AND (k.d ->> 'hold_expires_at')::timestamptz IS DISTINCT FROM h.expires_at)
           OR (k.flow = 'cashout_return'
               AND (h.status <> 'voided' OR h.void_reason IS DISTINCT FROM 'returned'
                    OR k.d ->> 'reason' IS DISTINCT FROM 'returned'))
        UNION ALL
        SELECT 'hold', NULL, h.cashout_id::text, h.status, h.void_reason
        FROM holds h LEFT JOIN accounts a ON a.id = h.wallet_account_id
        WHERE a.kind IS DISTINCT FROM 'wallet'
           OR a.currency <> h.currency
           OR NOT EXISTS (SELECT 1 FROM k WHERE k.flow = 'cashout' AND k.key = h.cashout_id)
           OR (h.void_reason = 'returned' AND NOT EXISTS (
               SELECT 1 FROM k WHERE k.flow = 'cashout_return' AND k.key = h.cashout_id))
        """,
    ),
    "payments_have_their_entry": (
        "every payment has one entry: payer -amount, merchant +(amount - fee), fee revenue +fee",
        # From the payments row (what refunds are decided on), compared with its entry and with
        # its record's result: the entry is the payment's own (flow, key), posts exactly what
        # DESIGN.md §5.2 says (a part of 0 not posted), in the payment's currency, from a wallet
        # into a merchant's wallet. And every payment entry has its payments row.
        f"""
        WITH implied AS (
            SELECT payment_id, payer_account_id AS account_id, -amount AS amount FROM payments
            UNION ALL
            SELECT payment_id, merchant_account_id, amount - fee FROM payments
            WHERE amount <> fee
            UNION ALL
            SELECT p.payment_id, a.id, p.fee
            FROM payments p JOIN accounts a ON a.kind = 'fee_revenue' AND a.currency = p.currency
            WHERE p.fee <> 0
        ),
        i AS (
            SELECT payment_id, string_agg(account_id || ':' || amount, ' '
                                          ORDER BY account_id, amount) AS postings
            FROM implied GROUP BY payment_id
        ),
        posted AS (
            SELECT p.payment_id, string_agg(q.account_id || ':' || q.amount, ' '
                                            ORDER BY q.account_id, q.amount) AS postings,
                   bool_or(q.currency <> p.currency) AS other_currency
            FROM payments p JOIN postings q ON q.entry_id = p.entry_id
            GROUP BY p.payment_id
        ),
        rec AS (
            SELECT r.key AS payment_id,
                   convert_from(r.result_payload, 'UTF8')::jsonb -> 'data' AS d
            FROM idempotency_records r
            WHERE r.flow = '{PAYMENT.name}' AND r.outcome = 'completed'
        )
        SELECT 'payment' AS side, p.payment_id::text AS payment_id, p.entry_id::text AS entry_id,
               i.postings AS payment_implies, posted.postings AS posted,
               mc.kind AS merchant_kind
        FROM payments p
        LEFT JOIN journal_entries e ON e.id = p.entry_id
        LEFT JOIN i USING (payment_id) LEFT JOIN posted USING (payment_id)
        LEFT JOIN rec USING (payment_id)
        LEFT JOIN accounts pa ON pa.id = p.payer_account_id
        LEFT JOIN accounts ma ON ma.id = p.merchant_account_id
        LEFT JOIN customers mc ON mc.id = ma.customer_id
        WHERE e.id IS NULL
           OR e.flow <> '{PAYMENT.name}'
           OR e.idempotency_key <> p.payment_id
           OR i.postings IS DISTINCT FROM posted.postings
           OR coalesce(posted.other_currency, false)
           OR pa.kind IS DISTINCT FROM 'wallet' OR pa.currency <> p.currency
           OR ma.kind IS DISTINCT FROM 'wallet' OR ma.currency <> p.currency
           OR mc.kind IS DISTINCT FROM 'merchant'
           OR rec.d IS NULL
           OR rec.d ->> 'from_account_id' IS DISTINCT FROM p.payer_account_id::text
           OR rec.d ->> 'merchant_account_id' IS DISTINCT FROM p.merchant_account_id::text
           OR rec.d ->> 'amount' IS DISTINCT FROM p.amount::text
           OR rec.d ->> 'fee' IS DISTINCT FROM p.fee::text
           OR rec.d ->> 'currency' IS DISTINCT FROM p.currency::text
           OR rec.d ->> 'journal_entry_id' IS DISTINCT FROM p.entry_id::text
        UNION ALL
        SELECT 'entry', e.idempotency_key::text, e.id::text, NULL, NULL, NULL
        FROM journal_entries e
        WHERE e.flow = '{PAYMENT.name}'
          AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.entry_id = e.id)
        """,
    ),
    "refunds_add_up_to_their_payments": (
        "every payment's refunds sum to its refunded (at most its amount), fee back by the floor",
        # A refund belongs to the payment its recorded result names (its entry, keyed by
        # refund_id, does not say), to that payment's merchant and payer. In the order they were
        # decided (by refunded_total: refunds of one payment are serialised by its row's lock),
        # each one's refunded_total is the running sum of the amounts, its fee_returned is
        # floor(fee x total / amount) less the same before it, and its entry counted toward
        # nobody's outgoing totals (no out_day). Per payment: refunded is the sum, never above
        # the amount; fee_returned is floor(fee x refunded / amount), and is what its refunds'
        # entries took out of fee revenue.
        f"""
        WITH rf AS (
            SELECT r.key AS refund_id,
                   convert_from(r.result_payload, 'UTF8')::jsonb -> 'data' AS d
            FROM idempotency_records r
            WHERE r.flow = '{REFUND.name}' AND r.outcome = 'completed'
        ),
        refund AS (
            SELECT rf.refund_id, (rf.d ->> 'payment_id')::uuid AS payment_id, rf.d,
                   (rf.d ->> 'amount')::bigint AS amount,
                   (rf.d ->> 'fee_returned')::bigint AS fee_returned,
                   (rf.d ->> 'refunded_total')::bigint AS refunded_total,
                   e.out_day::text AS counted_on,
                   coalesce((
                       SELECT -sum(q.amount)
                       FROM postings q
                       JOIN accounts a ON a.id = q.account_id AND a.kind = 'fee_revenue'
                       WHERE q.entry_id = e.id
                   ), 0)::bigint AS fee_taken
            FROM rf LEFT JOIN journal_entries e
              ON e.flow = '{REFUND.name}' AND e.idempotency_key = rf.refund_id
        ),
        ordered AS (
            SELECT refund.*,
                   sum(amount) OVER (PARTITION BY payment_id
                                     ORDER BY refunded_total, refund_id)::bigint AS running
            FROM refund
        ),
        per_payment AS (
            SELECT payment_id, sum(amount)::bigint AS refunds,
                   sum(fee_taken)::bigint AS fee_taken
            FROM refund GROUP BY payment_id
        )
        SELECT 'refund' AS side, o.payment_id::text AS payment_id, o.refund_id::text AS refund_id,
               p.amount AS payment_amount, o.refunded_total AS refunded, o.running AS refunds,
               o.fee_returned, (floor(p.fee::numeric * o.running / p.amount)
                                - floor(p.fee::numeric * (o.running - o.amount) / p.amount)
                               )::bigint AS fee_due,
               o.fee_taken, o.counted_on
        FROM ordered o LEFT JOIN payments p USING (payment_id)
        WHERE p.payment_id IS NULL
           OR o.counted_on IS NOT NULL
           OR o.d ->> 'merchant_account_id' IS DISTINCT FROM p.merchant_account_id::text
           OR o.d ->> 'to_account_id' IS DISTINCT FROM p.payer_account_id::text
           OR o.d ->> 'currency' IS DISTINCT FROM p.currency::text
           OR o.refunded_total IS DISTINCT FROM o.running
           OR o.running > p.amount
           OR o.fee_returned IS DISTINCT FROM (
               floor(p.fee::numeric * o.running / p.amount)
               - floor(p.fee::numeric * (o.running - o.amount) / p.amount))
        UNION ALL
        SELECT 'payment', p.payment_id::text, NULL, p.amount, p.refunded,
               coalesce(x.refunds, 0), p.fee_returned,
               floor(p.fee::numeric * p.refunded / p.amount)::bigint,
               coalesce(x.fee_taken, 0), NULL
        FROM payments p LEFT JOIN per_payment x USING (payment_id)
        WHERE p.refunded <> coalesce(x.refunds, 0)
           OR p.refunded > p.amount
           OR coalesce(x.refunds, 0) > p.amount
           OR p.fee_returned <> floor(p.fee::numeric * p.refunded / p.amount)
           OR p.fee_returned <> coalesce(x.fee_taken, 0)
        """,
    ),
    "fee_revenue_matches_payments": (
        "per currency, fee revenue taken by payments less returned by refunds is what payments say",
        # Over the whole journal, not payment by payment: the fee revenue postings of every
        # payment entry sum to sum(fee) over payments, those of every refund entry to
        # -sum(fee_returned), so their net is sum(fee) - sum(fee_returned).
        f"""
        WITH posted AS (
            SELECT q.currency,
                   coalesce(sum(q.amount) FILTER (WHERE e.flow = '{PAYMENT.name}'), 0)::bigint
                       AS taken,
                   coalesce(-sum(q.amount) FILTER (WHERE e.flow = '{REFUND.name}'), 0)::bigint
                       AS returned
            FROM journal_entries e
            JOIN postings q ON q.entry_id = e.id
            JOIN accounts a ON a.id = q.account_id AND a.kind = 'fee_revenue'
            WHERE e.flow IN ('{PAYMENT.name}', '{REFUND.name}')
            GROUP BY q.currency
        ),
        paid AS (
            SELECT currency, sum(fee)::bigint AS fees, sum(fee_returned)::bigint AS returned
            FROM payments GROUP BY currency
        )
        SELECT coalesce(posted.currency, paid.currency)::text AS currency,
               coalesce(posted.taken, 0) AS fee_revenue_taken,
               coalesce(posted.returned, 0) AS fee_revenue_returned,
               coalesce(paid.fees, 0) AS payments_fee,
               coalesce(paid.returned, 0) AS payments_fee_returned
        FROM posted FULL JOIN paid USING (currency)
        WHERE coalesce(posted.taken, 0) <> coalesce(paid.fees, 0)
           OR coalesce(posted.returned, 0) <> coalesce(paid.returned, 0)
        """,
    ),
    "records_keep_their_results": (
        "every recorded outcome keeps its result event: topic, id and payload, which agree",
        # The outbox is pruned after its retention period; the record is where a result lives.
        # Its type is one its flow answers with that outcome (a cash-out completes as
        # `cashout.completed` or `cashout.held`, a return as `cashout.voided` or
        # `cashout.reversed`), its topic that type under the deployment's prefix.
        f"""
        WITH {_RESULTS},
        r AS (
            SELECT flow, key, outcome, result_topic, result_event_id,
                   CASE WHEN length(result_payload) > 0
                        THEN convert_from(result_payload, 'UTF8')::jsonb END AS event
            FROM idempotency_records
        )
        SELECT r.flow, r.key::text AS key, r.result_event_id::text AS event_id
        FROM r LEFT JOIN results k
          ON k.flow = r.flow AND k.outcome = r.outcome AND k.type = r.event ->> 'type'
        WHERE r.event IS NULL
           OR r.event ->> 'id' IS DISTINCT FROM r.result_event_id::text
           OR k.type IS NULL
           OR right(r.result_topic, length(k.type)) <> k.type
        """,
    ),
    "outbox_rows_match_records": (
        "every outbox row is its record's, an unrecorded rejection or its hold's one expiry",
        # Rejections that are not recorded (invalid, unauthorized, id_conflict, hold_not_found)
        # leave only their row. An expiry (no command, no record) publishes `cashout.voided`
        # with reason expired answering the hold's approving command: its row must be that
        # hold's, once. Only those unrecorded rows' payloads are read.
        f"""
        WITH unrecorded AS (
            SELECT o.id, o.key,
                   CASE WHEN right(o.topic, {len(_VOIDED)}) = '{_VOIDED}'
                        THEN convert_from(o.payload, 'UTF8')::jsonb END AS event
            FROM outbox o
            WHERE NOT EXISTS (
                SELECT 1 FROM idempotency_records r WHERE r.result_event_id = o.event_id)
        ),
        expiry AS (
            SELECT u.id, count(*) OVER (PARTITION BY h.cashout_id) AS events
            FROM unrecorded u
            JOIN holds h ON h.cashout_id::text = u.event -> 'data' ->> 'cashout_id'
            WHERE h.status = 'voided' AND h.void_reason = 'expired'
              AND u.event ->> 'type' = '{_VOIDED}'
              AND u.event -> 'data' ->> 'reason' = 'expired'
              AND u.event -> 'data' ->> 'wallet_account_id' = h.wallet_account_id::text
              AND u.event -> 'data' ->> 'amount' = h.amount::text
              AND u.event -> 'data' ->> 'fee' = h.fee::text
              AND u.event -> 'data' ->> 'currency' = h.currency::text
              AND u.event ->> 'causationid' IS NOT DISTINCT FROM h.command_event_id
              AND u.event ->> 'correlationid' IS NOT DISTINCT FROM h.correlation_id
              AND u.key = convert_to(h.wallet_account_id::text, 'UTF8')
        )
        SELECT o.id, o.event_id::text AS event_id, o.topic FROM outbox o
        LEFT JOIN idempotency_records r ON r.result_event_id = o.event_id
        LEFT JOIN expiry x ON x.id = o.id
        WHERE (r.key IS NULL AND right(o.topic, length('.rejected')) <> '.rejected'
               AND x.events IS DISTINCT FROM 1)
           OR o.topic <> r.result_topic OR o.payload <> r.result_payload
        """,
    ),
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    description: str
    violations: int
    examples: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.violations == 0


async def run_audit(conn: asyncpg.Connection) -> list[CheckResult]:
    """Run every check in one repeatable-read snapshot, so they agree with each other."""
    results: list[CheckResult] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, (description, query) in CHECKS.items():
            try:
                # A savepoint each: a value the check cannot read (a payload that is not UTF-8
                # JSON, after tampering) fails that check, and the others still run.
                async with conn.transaction():
                    rows = await conn.fetch(query)
            except asyncpg.DataError as error:
                results.append(
                    CheckResult(name, description, 1, [{"unreadable": type(error).__name__}])
                )
                continue
            examples = [
                {k: (v if isinstance(v, int | str | None) else str(v)) for k, v in row.items()}
                for row in rows[:VIOLATIONS_SHOWN_MAX]
            ]
            results.append(CheckResult(name, description, len(rows), examples))
    return results
