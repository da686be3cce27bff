"""The SQL of reconcile.

Every check names the rows that fail it (the first few). Three kinds of pass:

- lookups, O(users): each cached balance against the last entry of its account and asset
  (CACHED_BALANCES_SQL: one descent of the statement index each);
- since the last seal's horizon, O(new rows): the new transactions row by row
  (BY_TRANSACTION_SQL), the running balance of every account and asset with new entries,
  from the first new entry to the last entry in (time, id) order, linked to the entry
  before it (NEW_CHAINS_SQL), the per-asset totals from the checkpoint's
  (ASSET_TOTALS_SINCE_SQL);
- the whole ledger (--full, or before the first seal): the running balances in (time, id)
  order, one ordered scan of the covering statement index (CHAINS_SQL); the shape of every
  transaction by fingerprints, one parallel scan per table with no join or sort
  (ENTRIES_FINGERPRINT_SQL, TRANSACTIONS_FINGERPRINT_SQL), and row by row
  (BY_TRANSACTION_SQL) only when a fingerprint differs, to name the transactions.

The shape fingerprint: the multiset of user entries (transaction, account, asset, amount)
and of Treasury entries (transaction, asset, amount) equals what the transactions require
(and their counts match), each side reduced to a sum of 64-bit hashes. With at most one
entry per account per transaction (a unique index), this proves every transaction has its
two entries, each of the kind's sign and amount, and so that each transaction sums to zero.
A shape does not depend on order; running balances do, so they are never fingerprinted.
"""

from __future__ import annotations

EXAMPLES = 5


def label(account: str, asset: str) -> str:
    """SQL naming an account and asset as a person reads them ("alice/GOLD"). Meant for
    the few failing rows: each use is two index lookups."""
    return f"""(coalesce((SELECT a.external_id FROM accounts a WHERE a.id = {account}),
                 CASE WHEN {account} = 0 THEN 'Treasury' END, 'account ' || {account})
        || '/' || coalesce((SELECT s.code FROM asset_types s WHERE s.id = {asset}),
                           'asset ' || {asset}))"""


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

# Every balances row, and every (user, asset) pair that has none, against the balance_after
# of its last entry in (time, id) order (0 with no entry): one backward descent of
# ix_ledger_entries_account_asset_time each, read from the index alone.
_DRIFTED = "coalesce(balance, 0) <> coalesce(ledger, 0)"
CACHED_BALANCES_SQL = f"""
WITH pairs AS (
    SELECT coalesce(b.account_id, x.account_id) AS account_id,
           coalesce(b.asset_id, x.asset_id) AS asset_id, b.balance
    FROM balances b
    FULL JOIN (SELECT a.id AS account_id, s.id AS asset_id
               FROM accounts a CROSS JOIN asset_types s
               WHERE a.id <> 0) x
      ON x.account_id = b.account_id AND x.asset_id = b.asset_id
    ORDER BY 1, 2  -- the lookups in index order touch each index page once
),
compared AS (
    SELECT p.account_id, p.asset_id, p.balance, last.balance_after AS ledger
    FROM pairs p
    LEFT JOIN LATERAL (
        SELECT e.balance_after FROM ledger_entries e
        WHERE e.account_id = p.account_id AND e.asset_id = p.asset_id
        ORDER BY e.created_at DESC, e.id DESC
        LIMIT 1
    ) last ON true
)
SELECT count(*) FILTER (WHERE balance IS NOT NULL OR ledger IS NOT NULL) AS balances,
       count(*) FILTER (WHERE {_DRIFTED}) AS drifted,
       (array_agg({label("account_id", "asset_id")} || ': cached '
                  || coalesce(balance::text, 'none') || ', ledger '
                  || coalesce(ledger::text, 'none') ORDER BY account_id, asset_id)
        FILTER (WHERE {_DRIFTED}))[1:{EXAMPLES}] AS drifted_labels,
       count(*) FILTER (WHERE balance < 0) AS negative,
       (array_agg({label("account_id", "asset_id")} || ': cached ' || balance
                  ORDER BY account_id, asset_id)
        FILTER (WHERE balance < 0))[1:{EXAMPLES}] AS negative_labels
FROM compared
"""

# What a chain pass reports, from a relation "chained" of user entries (id, account_id,
# asset_id, created_at, balance_after, broken).
_CHAIN_REPORT_SQL = f"""
SELECT count(*) AS entries,
       count(*) FILTER (WHERE broken) AS broken,
       (array_agg(id ORDER BY account_id, asset_id, created_at, id)
        FILTER (WHERE broken))[1:{EXAMPLES}] AS broken_ids,
       count(*) FILTER (WHERE balance_after < 0) AS negative,
       (array_agg(id ORDER BY account_id, asset_id, created_at, id)
        FILTER (WHERE balance_after < 0))[1:{EXAMPLES}] AS negative_ids
FROM chained
"""

# The whole ledger: every user entry in (time, id) order per account and asset, one
# ordered scan of the covering index (no sort), each balance_after = the one before + its
# amount, the first = its amount. Entries of account ids below 1 are not users' (the shape
# fingerprint finds any such entry).
CHAINS_SQL = f"""
WITH chained AS (
    SELECT id, account_id, asset_id, created_at, balance_after,
           balance_after IS DISTINCT FROM coalesce(lag(balance_after) OVER posting_order, 0)
                                          + amount AS broken
    FROM ledger_entries
    WHERE account_id > 0
    WINDOW posting_order AS (PARTITION BY account_id, asset_id ORDER BY created_at, id)
)
{_CHAIN_REPORT_SQL}
"""

# Since the horizon: for each account and asset with an entry of a transaction after it,
# every entry from the first such one to the last, in (time, id) order (the new entries,
# and any older one stored among them: a back-dated entry breaks the chain of what follows
# it), the first linked to the entry before it. Two index descents per account and asset,
# plus the entries read.
NEW_CHAINS_SQL = f"""
WITH starts AS MATERIALIZED (
    SELECT DISTINCT ON (account_id, asset_id) account_id, asset_id, created_at, id
    FROM ledger_entries
    WHERE transaction_id > %(horizon)s AND account_id <> 0
    ORDER BY account_id, asset_id, created_at, id
),
chained AS (
    SELECT s.account_id, s.asset_id, r.id, r.created_at, r.balance_after,
           r.balance_after IS DISTINCT FROM r.previous + r.amount AS broken
    FROM starts s
    LEFT JOIN LATERAL (
        SELECT p.balance_after FROM ledger_entries p
        WHERE p.account_id = s.account_id AND p.asset_id = s.asset_id
          AND (p.created_at, p.id) < (s.created_at, s.id)
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT 1
    ) before ON true
    CROSS JOIN LATERAL (
        SELECT e.id, e.created_at, e.amount, e.balance_after,
               lag(e.balance_after, 1, coalesce(before.balance_after, 0))
                   OVER (ORDER BY e.created_at, e.id) AS previous
        FROM ledger_entries e
        WHERE e.account_id = s.account_id AND e.asset_id = s.asset_id
          AND (e.created_at, e.id) >= (s.created_at, s.id)
    ) r
)
{_CHAIN_REPORT_SQL}
"""

# The entries a chain pass named, for the report.
ENTRY_LABELS_SQL = f"""
SELECT e.id, e.transaction_id, e.amount, e.balance_after,
       {label("e.account_id", "e.asset_id")} AS label
FROM ledger_entries e
WHERE e.id = ANY(%s)
"""

# Per asset: every entry's total (zero) and the users' (what they hold) against the
# cached balances' total. Since the horizon: the checkpoint's totals plus the new entries'.
ASSET_TOTALS_SINCE_SQL = """
WITH fresh AS (
    SELECT asset_id, sum(amount) AS total,
           sum(amount) FILTER (WHERE account_id <> 0) AS outstanding
    FROM ledger_entries
    WHERE transaction_id > %(horizon)s
    GROUP BY asset_id
),
cached AS (SELECT asset_id, sum(balance) AS cached FROM balances GROUP BY asset_id)
SELECT s.id AS asset_id, s.code,
       coalesce(sealed.entries_total, 0) + coalesce(n.total, 0) AS total,
       coalesce(sealed.outstanding, 0) + coalesce(n.outstanding, 0) AS outstanding,
       coalesce(c.cached, 0) AS cached
FROM asset_types s
LEFT JOIN seal_asset_totals sealed
  ON sealed.asset_id = s.id AND sealed.checkpoint_id = %(checkpoint)s
LEFT JOIN fresh n ON n.asset_id = s.id
LEFT JOIN cached c ON c.asset_id = s.id
ORDER BY s.code
"""

# The whole ledger's totals come with the entries' fingerprint; the cached side is this.
CACHED_TOTALS_SQL = """
SELECT s.id AS asset_id, s.code, coalesce(sum(b.balance), 0) AS cached
FROM asset_types s
LEFT JOIN balances b ON b.asset_id = s.id
GROUP BY s.id, s.code
ORDER BY s.code
"""

# Keys of the hashes: an account and an asset (asset ids are smallints, below 65536), or a
# transaction and an asset. Both stay far inside bigint for any real ledger; an overflow
# raises, and reconcile falls back to the exact passes.
_ACCOUNT_KEY = "account_id * 65536 + asset_id"

# One parallel scan of ledger_entries: per asset, the shape hashes, the counts and the totals.
ENTRIES_FINGERPRINT_SQL = f"""
SELECT asset_id,
       count(*) AS entries,
       count(*) FILTER (WHERE account_id <> 0) AS user_entries,
       coalesce(sum(CASE WHEN account_id <> 0
                         THEN hashint8extended(amount,
                                               hashint8extended({_ACCOUNT_KEY}, transaction_id))
                         ELSE hashint8extended(amount, transaction_id * 65536 + asset_id)
                    END), 0) AS shape,
       sum(amount) AS total,
       coalesce(sum(amount) FILTER (WHERE account_id <> 0), 0) AS outstanding
FROM ledger_entries
GROUP BY asset_id
"""

# The same totals without the hashes, for when a hash key overflows bigint.
ENTRIES_TOTALS_SQL = """
SELECT asset_id, sum(amount) AS total,
       coalesce(sum(amount) FILTER (WHERE account_id <> 0), 0) AS outstanding
FROM ledger_entries
GROUP BY asset_id
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
