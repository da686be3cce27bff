"""The reconcile of main before issue 11, kept for bench.finance to compare designs in one
run (never used by walletctl itself).

- default (incremental): the new transactions row by row (BY_TRANSACTION_SQL, unchanged),
  and the new entries' running balances linked to the entry before each, with the cached
  balances of the touched accounts only (BY_ACCOUNT_SINCE_SQL below): no look at the
  untouched users' caches, no look at older entries stored among the new ones;
- full: order-unaware fingerprints of the running balances (ENTRIES_FINGERPRINT_SQL,
  BALANCES_FINGERPRINT_SQL below) beside the shape.
"""

from __future__ import annotations

from typing import Any

import psycopg

from walletctl.core import checkpoints
from walletctl.core.reconcile_sql import (
    BY_TRANSACTION_SQL,
    EXAMPLES,
    REVERSALS_SQL,
    TRANSACTIONS_FINGERPRINT_SQL,
)

# What both by-account passes report, from a relation "labelled" with one row per
# (account, asset) and a relation "per_asset" with the total of each asset's entries.
_ACCOUNT_REPORT_SQL = f"""
SELECT (SELECT coalesce(sum(entries), 0) FROM labelled)::bigint AS entries,
       (SELECT count(*) FROM labelled WHERE account_id <> 0) AS user_balances,
       (SELECT count(*) FROM per_asset) AS assets,
       (SELECT count(*) FROM labelled WHERE breaks > 0) AS broken_chains,
       (SELECT (array_agg(label ORDER BY label))[1:{EXAMPLES}] FROM labelled WHERE breaks > 0)
           AS broken_chain_labels,
       (SELECT count(*) FROM labelled WHERE drifted) AS drifted,
       (SELECT (array_agg(label || ': cached ' || coalesce(balance::text, 'none') || ', ledger '
                          || coalesce(ledger::text, 'none') ORDER BY label))[1:{EXAMPLES}]
        FROM labelled WHERE drifted) AS drifted_labels,
       (SELECT count(*) FROM labelled WHERE account_id <> 0 AND (balance < 0 OR lowest < 0))
           AS negative,
       (SELECT (array_agg(label ORDER BY label))[1:{EXAMPLES}] FROM labelled
        WHERE account_id <> 0 AND (balance < 0 OR lowest < 0)) AS negative_labels,
       (SELECT count(*) FROM per_asset WHERE total <> 0) AS unbalanced_assets,
       (SELECT (array_agg(label || ': entries sum to ' || total ORDER BY label))[1:{EXAMPLES}]
        FROM per_asset WHERE total <> 0) AS unbalanced_asset_labels,
       (SELECT count(*) FROM per_asset WHERE outstanding IS DISTINCT FROM cached) AS off_totals,
       (SELECT (array_agg(label || ': users hold ' || coalesce(cached::text, '0')
                          || ' cached, ' || coalesce(outstanding::text, '0') || ' by the ledger'
                          ORDER BY label))[1:{EXAMPLES}]
        FROM per_asset WHERE outstanding IS DISTINCT FROM cached) AS off_total_labels
"""

_LABEL = """
coalesce(a.external_id, CASE WHEN j.account_id = 0 THEN 'Treasury' END,
         'account ' || j.account_id) || '/' || coalesce(s.code, 'asset ' || j.asset_id)
"""

# Each (account, asset) row of "joined" with a name a person can read.
_LABELLED = f"""labelled AS (
    SELECT j.*, {_LABEL} AS label
    FROM joined j
    LEFT JOIN accounts a ON a.id = j.account_id
    LEFT JOIN asset_types s ON s.id = j.asset_id
),"""

_CACHED_PER_ASSET = "SELECT asset_id, sum(balance) AS cached FROM balances GROUP BY asset_id"

# Since the horizon: the new entries of each touched (account, asset) in posting order,
# the first one linked to the last entry before it; cached balances of the touched rows
# compared exactly; per-asset totals from the checkpoint's plus the new entries.
BY_ACCOUNT_SINCE_SQL = f"""
WITH fresh AS MATERIALIZED (
    SELECT id, account_id, asset_id, amount, balance_after, created_at
    FROM ledger_entries
    WHERE transaction_id > %(horizon)s
),
chained AS (
    SELECT f.*, lag(f.balance_after) OVER posting_order AS previous_after,
           row_number() OVER posting_order AS position,
           count(*) OVER (PARTITION BY f.account_id, f.asset_id) AS touched
    FROM fresh f
    WHERE f.account_id <> 0
    WINDOW posting_order AS (PARTITION BY f.account_id, f.asset_id ORDER BY f.created_at, f.id)
),
linked AS (
    SELECT c.*,
           CASE WHEN c.position = 1 THEN (
               SELECT p.balance_after FROM ledger_entries p
               WHERE p.account_id = c.account_id AND p.asset_id = c.asset_id
                 AND (p.created_at, p.id) < (c.created_at, c.id)
               ORDER BY p.created_at DESC, p.id DESC
               LIMIT 1)
           ELSE c.previous_after END AS before
    FROM chained c
),
per_account AS (
    SELECT account_id, asset_id, count(*) AS entries,
           count(*) FILTER (WHERE balance_after IS DISTINCT FROM coalesce(before, 0) + amount)
               AS breaks,
           min(balance_after) AS lowest,
           min(balance_after) FILTER (WHERE position = touched) AS last_after
    FROM linked
    GROUP BY account_id, asset_id
),
joined AS (
    SELECT coalesce(p.account_id, b.account_id) AS account_id,
           coalesce(p.asset_id, b.asset_id) AS asset_id,
           p.last_after AS ledger, coalesce(p.entries, 0) AS entries,
           coalesce(p.breaks, 0) AS breaks, p.lowest, b.balance,
           p.account_id IS NOT NULL AND b.balance IS DISTINCT FROM p.last_after AS drifted
    FROM per_account p
    FULL JOIN (SELECT * FROM balances WHERE balance < 0
               UNION
               SELECT b.* FROM balances b
               JOIN per_account t ON t.account_id = b.account_id AND t.asset_id = b.asset_id) b
      ON b.account_id = p.account_id AND b.asset_id = p.asset_id
),
{_LABELLED}
fresh_per_asset AS (
    SELECT asset_id, sum(amount) AS total,
           sum(amount) FILTER (WHERE account_id <> 0) AS outstanding
    FROM fresh
    GROUP BY asset_id
),
per_asset AS (
    SELECT s.id AS asset_id, s.code AS label,
           coalesce(sealed.entries_total, 0) + coalesce(n.total, 0) AS total,
           coalesce(sealed.outstanding, 0) + coalesce(n.outstanding, 0) AS outstanding,
           coalesce(c.cached, 0) AS cached
    FROM asset_types s
    LEFT JOIN seal_asset_totals sealed
      ON sealed.asset_id = s.id AND sealed.checkpoint_id = %(checkpoint)s
    LEFT JOIN fresh_per_asset n ON n.asset_id = s.id
    LEFT JOIN ({_CACHED_PER_ASSET}) c ON c.asset_id = s.id
)
{_ACCOUNT_REPORT_SQL}
"""

_ACCOUNT_KEY = "account_id * 65536 + asset_id"

ENTRIES_FINGERPRINT_SQL = f"""
SELECT count(*) AS entries,
       count(*) FILTER (WHERE account_id <> 0) AS user_entries,
       coalesce(sum(CASE WHEN account_id <> 0
                         THEN hashint8extended(amount,
                                               hashint8extended({_ACCOUNT_KEY}, transaction_id))
                         ELSE hashint8extended(amount, transaction_id * 65536 + asset_id)
                    END), 0) AS shape,
       coalesce(sum(hashint8extended(balance_after - amount, {_ACCOUNT_KEY})), 0) AS chain_before,
       coalesce(sum(hashint8extended(balance_after, {_ACCOUNT_KEY})), 0) AS chain_after,
       coalesce(min(balance_after), 0) AS lowest
FROM ledger_entries
"""

BALANCES_FINGERPRINT_SQL = f"""
SELECT count(*) AS balances,
       coalesce(sum(hashint8extended(0, {_ACCOUNT_KEY})), 0) AS chain_start,
       coalesce(sum(hashint8extended(balance, {_ACCOUNT_KEY})), 0) AS chain_end,
       coalesce(min(balance), 0) AS lowest,
       (SELECT count(*) FROM asset_types) AS assets
FROM balances
"""


def default_reconcile(conn: psycopg.Connection[Any]) -> None:
    """The old default's passes, in one REPEATABLE READ snapshot (the tripwire then read two
    counters: negligible)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL jit = off")
        checkpoint = checkpoints.latest_checkpoint(conn)
        assert checkpoint is not None
        params = {"horizon": checkpoint.horizon, "checkpoint": checkpoint.id}
        for query in (REVERSALS_SQL, BY_TRANSACTION_SQL, BY_ACCOUNT_SINCE_SQL):
            conn.execute(query, params).fetchall()
        assert checkpoints.verify_chain(conn) == []


def full_reconcile(conn: psycopg.Connection[Any]) -> None:
    """The old full run's fingerprints (when they agree, nothing else ran)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL jit = off")
        conn.execute(REVERSALS_SQL, {"horizon": 0}).fetchall()
        for query in (
            ENTRIES_FINGERPRINT_SQL,
            TRANSACTIONS_FINGERPRINT_SQL,
            BALANCES_FINGERPRINT_SQL,
        ):
            conn.execute(query).fetchall()
