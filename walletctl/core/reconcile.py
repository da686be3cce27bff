"""Reconcile: prove the ledger is whole, independently of the code that wrote it.

Two passes over the ledger, each one streaming read of a covering index in the order the
check needs (no sort, no hash table the size of the ledger):

- by transaction (uq_ledger_entries_transaction_id_account_id, merged with transactions):
  zero-sum per transaction, the shape each kind requires, reversals well-formed;
- by account and asset in posting order (ix_ledger_entries_account_asset_time, merged with
  balances): running balances, cached balances, no negatives, zero-sum per asset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

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
    FROM transactions t
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
           coalesce(p.total, 0) AS total, coalesce(p.entries, 0) AS entries,
           coalesce(p.breaks, 0) AS breaks, p.lowest,
           b.balance,
           coalesce(p.account_id, b.account_id) <> 0
               AND b.balance IS DISTINCT FROM p.total AS drifted
    FROM per_account p
    FULL JOIN balances b ON b.account_id = p.account_id AND b.asset_id = p.asset_id
),
labelled AS (
    SELECT j.*, coalesce(a.external_id, 'account ' || j.account_id) || '/' ||
               coalesce(s.code, 'asset ' || j.asset_id) AS label
    FROM joined j
    LEFT JOIN accounts a ON a.id = j.account_id
    LEFT JOIN asset_types s ON s.id = j.asset_id
),
per_asset AS (
    SELECT asset_id, min(label) FILTER (WHERE account_id = 0) AS label, sum(total) AS total
    FROM labelled
    GROUP BY asset_id
)
SELECT (SELECT sum(entries) FROM labelled)::bigint AS entries,
       (SELECT count(*) FROM labelled WHERE account_id <> 0) AS user_balances,
       (SELECT count(*) FROM per_asset) AS assets,
       (SELECT count(*) FROM labelled WHERE breaks > 0) AS broken_chains,
       (SELECT (array_agg(label ORDER BY label))[1:{EXAMPLES}] FROM labelled WHERE breaks > 0)
           AS broken_chain_labels,
       (SELECT count(*) FROM labelled WHERE drifted) AS drifted,
       (SELECT (array_agg(label || ': cached ' || coalesce(balance::text, 'none') || ', ledger '
                          || total ORDER BY label))[1:{EXAMPLES}]
        FROM labelled WHERE drifted) AS drifted_labels,
       (SELECT count(*) FROM labelled WHERE account_id <> 0 AND (balance < 0 OR lowest < 0))
           AS negative,
       (SELECT (array_agg(label ORDER BY label))[1:{EXAMPLES}] FROM labelled
        WHERE account_id <> 0 AND (balance < 0 OR lowest < 0)) AS negative_labels,
       (SELECT count(*) FROM per_asset WHERE total <> 0) AS unbalanced_assets,
       (SELECT (array_agg(coalesce(label, 'asset ' || asset_id) || ': sums to ' || total
                          ORDER BY asset_id))[1:{EXAMPLES}]
        FROM per_asset WHERE total <> 0) AS unbalanced_asset_labels
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

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)


def _ids(prefix: str, values: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(f"{prefix}{value}" for value in values or ())


def reconcile(conn: Connection) -> ReconcileReport:
    """Run every check over the whole ledger. Reads only; safe beside live postings.

    Runs in one REPEATABLE READ transaction, so both passes see the same committed ledger
    even while postings continue."""
    with translated(), conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        by_txn = cursor.execute(_BY_TRANSACTION_SQL).fetchone()
        by_account = cursor.execute(_BY_ACCOUNT_SQL).fetchone()
    assert by_txn is not None and by_account is not None
    transactions = int(by_txn["transactions"])
    return ReconcileReport(
        checks=(
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
                "each cached balance equals the sum of its entries",
                by_account["user_balances"],
                by_account["drifted"],
                tuple(by_account["drifted_labels"] or ()),
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
        )
    )
