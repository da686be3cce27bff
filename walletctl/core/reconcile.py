"""Reconcile: prove the ledger is whole, independently of the code that wrote it.

Full (``full=True``, or before the first seal): two passes over the whole ledger, each one
streaming read of a covering index in the order its checks need, plus a re-hash of all
sealed history:

- by transaction (uq_ledger_entries_transaction_id_account_id, merged with transactions):
  zero-sum per transaction, the shape each kind requires, reversals well-formed;
- by account and asset in posting order (ix_ledger_entries_account_asset_time, merged with
  balances): running balances, cached balances, no negatives, zero-sum per asset.

Incremental (the default once a checkpoint exists): the same checks for the transactions
after the last checkpoint's horizon, each new entry's running balance linked to the last
sealed one, totals per asset from the checkpoint's, and the checkpoint chain with its
tripwire (see walletctl.core.seal); history is re-hashed only when the tripwire fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from walletctl.core import seal
from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated

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

_BY_TRANSACTION_SQL = f"""
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

_CACHED_PER_ASSET = "SELECT asset_id, sum(balance) AS cached FROM balances GROUP BY asset_id"

_BY_ACCOUNT_SQL = f"""
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
labelled AS (
    SELECT j.*, {_LABEL} AS label
    FROM joined j
    LEFT JOIN accounts a ON a.id = j.account_id
    LEFT JOIN asset_types s ON s.id = j.asset_id
),
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
_BY_ACCOUNT_SINCE_SQL = f"""
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
labelled AS (
    SELECT j.*, {_LABEL} AS label
    FROM joined j
    LEFT JOIN accounts a ON a.id = j.account_id
    LEFT JOIN asset_types s ON s.id = j.asset_id
),
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


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One named check: how many rows it examined, how many failed, and a few of them."""

    name: str
    description: str
    checked: int
    failures: int
    examples: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.failures == 0


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    checks: tuple[CheckResult, ...]
    mode: str
    """"full", or "incremental" (only what came after the last checkpoint)."""
    horizon: int
    """The last checkpoint's horizon (0 when none): a full run still reports it."""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)


def _ids(prefix: str, values: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(f"{prefix}{value}" for value in values or ())


def reconcile(conn: Connection, *, full: bool = False) -> ReconcileReport:
    """Run every check: over what came after the last checkpoint, or the whole ledger.

    Reads only, in one REPEATABLE READ transaction, so every pass sees the same committed
    ledger even while postings continue."""
    with translated(), conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        checkpoint = seal.latest_checkpoint(conn)
        incremental = checkpoint is not None and not full
        horizon = checkpoint.horizon if checkpoint else 0
        params = {
            "horizon": horizon if incremental else 0,
            "checkpoint": checkpoint.id if checkpoint else None,
        }
        by_txn = cursor.execute(_BY_TRANSACTION_SQL, params).fetchone()
        by_account = cursor.execute(
            _BY_ACCOUNT_SINCE_SQL if incremental else _BY_ACCOUNT_SQL, params
        ).fetchone()
        sealed, notes = _sealed_history(conn, checkpoint, full=full)
    assert by_txn is not None and by_account is not None
    transactions = int(by_txn["transactions"])
    checks = (
        CheckResult(
            "zero_sum_per_transaction",
            "the entries of each transaction sum to zero",
            transactions,
            by_txn["unbalanced"],
            _ids("transaction ", by_txn["unbalanced_ids"]),
        ),
        CheckResult(
            "zero_sum_per_asset",
            "all entries of each asset sum to zero (Treasury = -users)",
            by_account["assets"],
            by_account["unbalanced_assets"],
            tuple(by_account["unbalanced_asset_labels"] or ()),
        ),
        CheckResult(
            "cached_balances_match_ledger",
            "each cached balance, and each asset's total, equals its entries",
            by_account["user_balances"] + by_account["assets"],
            by_account["drifted"] + by_account["off_totals"],
            tuple((by_account["drifted_labels"] or []) + (by_account["off_total_labels"] or []))[
                :EXAMPLES
            ],
        ),
        CheckResult(
            "no_negative_balances",
            "no user balance, cached or after any entry, is below zero",
            by_account["user_balances"],
            by_account["negative"],
            tuple(by_account["negative_labels"] or ()),
        ),
        CheckResult(
            "running_balances_consistent",
            "each entry's balance_after = the previous one + its amount",
            int(by_account["entries"] or 0),
            by_account["broken_chains"],
            tuple(by_account["broken_chain_labels"] or ()),
        ),
        CheckResult(
            "transactions_well_formed",
            "one user entry and one Treasury entry, of the kind's sign and amount",
            transactions,
            by_txn["misshapen"],
            _ids("transaction ", by_txn["misshapen_ids"]),
        ),
        CheckResult(
            "reversals_well_formed",
            "each reversal mirrors an earlier non-reversal of the same user and asset",
            by_txn["reversals"],
            by_txn["bad_reversals"],
            _ids("transaction ", by_txn["bad_reversal_ids"]),
        ),
        sealed,
    )
    return ReconcileReport(
        checks=checks,
        mode="incremental" if incremental else "full",
        horizon=horizon,
        notes=notes,
    )


def _sealed_history(
    conn: Connection, checkpoint: seal.Checkpoint | None, *, full: bool
) -> tuple[CheckResult, tuple[str, ...]]:
    name = "sealed_history_unchanged"
    description = "checkpoints chain up, and sealed transactions hash as sealed"
    if checkpoint is None:
        return CheckResult(name, description, 0, 0), ("nothing sealed yet (walletctl seal)",)
    problems = seal.verify_chain(conn)
    tripped = seal.tripwire(conn, checkpoint)
    notes = tuple(f"tripwire: {reason}; re-hashed all sealed history" for reason in tripped)
    checked = len(seal.checkpoints(conn))
    if full or tripped:
        checked, mismatches = seal.verify_history(conn)
        problems += [mismatch.describe() for mismatch in mismatches]
    return CheckResult(name, description, checked, len(problems), tuple(problems[:EXAMPLES])), notes
