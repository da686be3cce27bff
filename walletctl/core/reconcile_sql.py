"""The SQL of reconcile: exact row-by-row passes, and one-pass fingerprints.

Exact passes name the rows that fail; they stream covering indexes in the order each check
needs. Fingerprints check the same invariants with one parallel scan per table and no
joins or sorts: each side of an invariant is reduced to a sum of 64-bit hashes, and the
sums must be equal. A difference sends reconcile to the exact passes.

- shape: the multiset of user entries (transaction, account, asset, amount) and of Treasury
  entries (transaction, asset, amount) equals what the transactions require (and their
  counts match). With at most one entry per account per transaction (a unique index), this
  proves every transaction has its two entries, each of the kind's sign and amount, and so
  that each transaction, and each asset, sums to zero.
- chain: per (account, asset), the multiset {balance_after - amount} of its entries equals
  {0} plus {balance_after} minus the final balance, which is the cached balance. This
  proves each running balance follows from the one before, and that the cache equals the
  sum of the entries.
"""

from __future__ import annotations

EXAMPLES = 5

# The user's entry of a transaction must move this much: + for credits, - for spends, and
# the opposite of the reversed transaction for a reversal.
_EXPECTED_USER_AMOUNT = """
CASE t.kind
    WHEN 'spend' THEN -t.amount
    WHEN 'reversal' THEN CASE target.kind WHEN 'spend' THEN t.amount ELSE -t.amount END
    ELSE t.amount
END
"""

BY_TRANSACTION_SQL = f"""
WITH entries AS (
    SELECT transaction_id,
           sum(amount) AS total,
           count(*) AS entry_count,
           count(*) FILTER (WHERE account_id <> 0) AS user_entries,
           max(account_id) AS user_account,
           sum(amount) FILTER (WHERE account_id <> 0) AS user_amount,
           sum(amount) FILTER (WHERE account_id = 0) AS treasury_amount,
           min(asset_id) AS min_asset,
           max(asset_id) AS max_asset
    FROM ledger_entries
    WHERE transaction_id > %(horizon)s
    GROUP BY transaction_id
),
checked AS (
    SELECT coalesce(t.id, e.transaction_id) AS id,
           coalesce(e.total, 0) <> 0 AS unbalanced,
           t.id IS NULL
             OR e.transaction_id IS NULL
             OR acc.id IS NULL
             OR asset.id IS NULL
             OR e.entry_count <> 2
             OR e.user_entries <> 1
             OR e.user_account <> t.account_id
             OR e.min_asset <> t.asset_id
             OR e.max_asset <> t.asset_id
             OR e.user_amount IS DISTINCT FROM ({_EXPECTED_USER_AMOUNT})
             OR e.treasury_amount IS DISTINCT FROM -({_EXPECTED_USER_AMOUNT}) AS misshapen,
           t.kind = 'reversal' AND (
               target.id IS NULL
               OR target.kind = 'reversal'
               OR target.account_id <> t.account_id
               OR target.asset_id <> t.asset_id
               OR target.amount <> t.amount
               OR target.created_at > t.created_at
           ) AS bad_reversal,
           t.kind = 'reversal' AS is_reversal
    FROM (SELECT * FROM transactions WHERE id > %(horizon)s) t
    FULL JOIN entries e ON e.transaction_id = t.id
    LEFT JOIN transactions target ON target.id = t.reverses
    LEFT JOIN accounts acc ON acc.id = t.account_id
    LEFT JOIN asset_types asset ON asset.id = t.asset_id
)
SELECT count(*) AS transactions,
       count(*) FILTER (WHERE is_reversal) AS reversals,
       count(*) FILTER (WHERE unbalanced) AS unbalanced,
       (array_agg(id ORDER BY id) FILTER (WHERE unbalanced))[1:{EXAMPLES}] AS unbalanced_ids,
       count(*) FILTER (WHERE misshapen) AS misshapen,
       (array_agg(id ORDER BY id) FILTER (WHERE misshapen))[1:{EXAMPLES}] AS misshapen_ids,
       count(*) FILTER (WHERE bad_reversal) AS bad_reversals,
       (array_agg(id ORDER BY id) FILTER (WHERE bad_reversal))[1:{EXAMPLES}] AS bad_reversal_ids
FROM checked
"""

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

BY_ACCOUNT_SQL = f"""
WITH chained AS (
    SELECT account_id, asset_id, amount, balance_after,
           account_id <> 0 AND balance_after IS DISTINCT FROM
               coalesce(lag(balance_after) OVER posting_order, 0) + amount AS broken
    FROM ledger_entries
    WINDOW posting_order AS (PARTITION BY account_id, asset_id ORDER BY created_at, id)
),
per_account AS (
    SELECT account_id, asset_id, sum(amount) AS total, count(*) AS entries,
           count(*) FILTER (WHERE broken) AS breaks, min(balance_after) AS lowest
    FROM chained
    GROUP BY account_id, asset_id
),
joined AS (
    SELECT coalesce(p.account_id, b.account_id) AS account_id,
           coalesce(p.asset_id, b.asset_id) AS asset_id,
           coalesce(p.total, 0) AS ledger, coalesce(p.entries, 0) AS entries,
           coalesce(p.breaks, 0) AS breaks, p.lowest, b.balance,
           coalesce(p.account_id, b.account_id) <> 0
               AND b.balance IS DISTINCT FROM p.total AS drifted
    FROM per_account p
    FULL JOIN balances b ON b.account_id = p.account_id AND b.asset_id = p.asset_id
),
{_LABELLED}
per_asset AS (
    SELECT l.asset_id, split_part(min(l.label), '/', 2) AS label, sum(l.ledger) AS total,
           sum(l.ledger) FILTER (WHERE l.account_id <> 0) AS outstanding, min(c.cached) AS cached
    FROM labelled l
    LEFT JOIN ({_CACHED_PER_ASSET}) c ON c.asset_id = l.asset_id
    GROUP BY l.asset_id
)
{_ACCOUNT_REPORT_SQL}
"""

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

# Keys of the hashes: an account and an asset (asset ids are smallints, below 65536), or a
# transaction and an asset. Both stay far inside bigint for any real ledger; an overflow
# raises, and reconcile falls back to the exact passes.
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

# What the transactions require: the user's entry (+ for credits, - for spends) and the
# Treasury's, its negation. Reversals are left to REVERSALS_SQL, which looks up what each
# one reverses.
TRANSACTIONS_FINGERPRINT_SQL = """
SELECT count(*) AS transactions,
       coalesce(sum(hashint8extended(x.expected,
                                     hashint8extended(t.account_id * 65536 + t.asset_id, t.id))),
                0) AS user_shape,
       coalesce(sum(hashint8extended(-x.expected, t.id * 65536 + t.asset_id)), 0)
           AS treasury_shape,
       count(*) FILTER (WHERE x.expected IS NULL) AS unresolved
FROM transactions t,
LATERAL (SELECT CASE t.kind WHEN 'topup' THEN t.amount
                            WHEN 'bonus' THEN t.amount
                            WHEN 'spend' THEN -t.amount END AS expected) x
WHERE t.reverses IS NULL
"""

BALANCES_FINGERPRINT_SQL = f"""
SELECT count(*) AS balances,
       coalesce(sum(hashint8extended(0, {_ACCOUNT_KEY})), 0) AS chain_start,
       coalesce(sum(hashint8extended(balance, {_ACCOUNT_KEY})), 0) AS chain_end,
       coalesce(min(balance), 0) AS lowest,
       (SELECT count(*) FROM asset_types) AS assets
FROM balances
"""

# Reversals are few and indexed (uq_transactions_reverses): always checked row by row, and
# their part of the shape fingerprint (the opposite of what the reversed one moved).
REVERSALS_SQL = f"""
SELECT count(*) AS reversals,
       count(*) FILTER (WHERE bad) AS bad_reversals,
       (array_agg(id ORDER BY id) FILTER (WHERE bad))[1:{EXAMPLES}] AS bad_reversal_ids,
       coalesce(sum(hashint8extended(expected, hashint8extended(account_key, id))), 0)
           AS user_shape,
       coalesce(sum(hashint8extended(-expected, id * 65536 + asset_id)), 0) AS treasury_shape,
       count(*) FILTER (WHERE expected IS NULL) AS unresolved
FROM (
    SELECT r.id, r.asset_id, r.account_id * 65536 + r.asset_id AS account_key,
           CASE target.kind WHEN 'spend' THEN r.amount
                            WHEN 'reversal' THEN NULL
                            ELSE -r.amount END AS expected,
           target.id IS NULL
           OR target.kind = 'reversal'
           OR target.account_id <> r.account_id
           OR target.asset_id <> r.asset_id
           OR target.amount <> r.amount
           OR target.created_at > r.created_at AS bad
    FROM transactions r
    LEFT JOIN transactions target ON target.id = r.reverses
    WHERE r.reverses IS NOT NULL AND r.id > %(horizon)s
) reversal
"""
