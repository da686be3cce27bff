"""Reconcile: prove the ledger is whole, independently of the code that wrote it.

Every run (the SQL is in walletctl.core.reconcile_sql):

- each cached balance against the last entry of its account and asset (one index descent
  each, so O(users), whatever the ledger's length): a cache edited for a user with no new
  posting is named;
- the checkpoint chain and its tripwire (walletctl.core.checkpoints, .tripwire).

The default, once a checkpoint exists (incremental), adds what came after its horizon: the
new transactions row by row, the running balance of every account and asset with new
entries in (time, id) order from the first new entry to the last entry, linked to the last
entry before it (an older entry stored among the new ones, a back-dated insert, is caught
there), and the per-asset totals from the checkpoint's. History is re-hashed only when the
tripwire fires.

Full (``full=True``, or before the first seal) adds the whole ledger: the running balances
in (time, id) order in one ordered scan of the covering statement index; the shape of every
transaction by fingerprints, and row by row (naming them) only when a fingerprint differs;
the per-asset totals; and it re-hashes all sealed history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import checkpoints
from walletctl.core import reconcile_sql as sql
from walletctl.core.models import Connection
from walletctl.core.reconcile_sql import EXAMPLES
from walletctl.core.sqlerrors import translated
from walletctl.core.tripwire import tripwire


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
    method: str = "exact"
    """How the transactions' shapes were proven: "fingerprint" (one scan per table, all
    equal) or "exact" (row by row, naming rows: the default's passes, or a full run whose
    fingerprint differed)."""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)


_ZERO_SUM_TRANSACTION = ("zero_sum_per_transaction", "the entries of each transaction sum to zero")
_ZERO_SUM_ASSET = (
    "zero_sum_per_asset",
    "all entries of each asset sum to zero (Treasury = -users)",
)
_CACHED = (
    "cached_balances_match_ledger",
    "each cached balance equals its last entry's balance_after; each asset's total, its entries",
)
_NO_NEGATIVE = (
    "no_negative_balances",
    "no user balance, cached or after any entry, is below zero",
)
_RUNNING = (
    "running_balances_consistent",
    "in (time, id) order, each entry's balance_after = the previous one + its amount",
)
_WELL_FORMED = (
    "transactions_well_formed",
    "one user entry and one Treasury entry, of the kind's sign and amount",
)
_REVERSALS = (
    "reversals_well_formed",
    "each reversal mirrors an earlier non-reversal of the same user and asset",
)


@on_proxy("reconcile")
def reconcile(conn: Connection, *, full: bool = False) -> ReconcileReport:
    """Run every check, in one REPEATABLE READ, READ ONLY transaction of its own (so every
    pass sees the same committed ledger while postings go on). ``conn`` must not be in a
    transaction."""
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return check_ledger(conn, full=full)


def check_ledger(conn: Connection, *, full: bool = False) -> ReconcileReport:
    """Every check, in the caller's transaction and snapshot (walletctl.core.seal seals in
    the snapshot it checked)."""
    # Compiling these scans costs more than it saves up to tens of millions of rows.
    conn.execute("SET LOCAL jit = off")
    checkpoint = checkpoints.latest_checkpoint(conn)
    incremental = checkpoint is not None and not full
    horizon = checkpoint.horizon if checkpoint else 0
    if incremental:
        assert checkpoint is not None
        ledger_checks, method = _since(conn, checkpoint), "exact"
    else:
        ledger_checks, method = _whole(conn)
    sealed, notes = _sealed_history(conn, checkpoint, full=full)
    return ReconcileReport(
        checks=(*ledger_checks, sealed),
        mode="incremental" if incremental else "full",
        horizon=horizon,
        method=method,
        notes=notes,
    )


def _query(conn: Connection, query: str, params: Any = None) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(query, params).fetchone()
    assert row is not None
    return row


def _rows(conn: Connection, query: str, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params).fetchall()


def _since(conn: Connection, checkpoint: checkpoints.Checkpoint) -> tuple[CheckResult, ...]:
    params = {"horizon": checkpoint.horizon, "checkpoint": checkpoint.id}
    reversals = _query(conn, sql.REVERSALS_SQL, params)
    by_txn = _query(conn, sql.BY_TRANSACTION_SQL, params)
    chains = _query(conn, sql.NEW_CHAINS_SQL, params)
    cached = _query(conn, sql.CACHED_BALANCES_SQL)
    totals = _rows(conn, sql.ASSET_TOTALS_SINCE_SQL, params)
    return _assemble(conn, by_txn, reversals, chains, cached, totals)


def _whole(conn: Connection) -> tuple[tuple[CheckResult, ...], str]:
    params = {"horizon": 0, "checkpoint": None}
    reversals = _query(conn, sql.REVERSALS_SQL, params)
    chains = _query(conn, sql.CHAINS_SQL)
    cached = _query(conn, sql.CACHED_BALANCES_SQL)
    shapes, entries = _fingerprints(conn, reversals)
    if shapes is None:
        by_txn, method = _query(conn, sql.BY_TRANSACTION_SQL, params), "exact"
    else:
        by_txn, method = shapes, "fingerprint"
    cached_totals = {row["asset_id"]: row for row in _rows(conn, sql.CACHED_TOTALS_SQL)}
    totals = [
        {
            "code": cached_totals.get(asset_id, {}).get("code") or f"asset {asset_id}",
            "total": entries.get(asset_id, {}).get("total") or 0,
            "outstanding": entries.get(asset_id, {}).get("outstanding") or 0,
            "cached": cached_totals.get(asset_id, {}).get("cached") or 0,
        }
        for asset_id in sorted(set(cached_totals) | set(entries))
    ]
    return _assemble(conn, by_txn, reversals, chains, cached, totals), method


def _fingerprints(
    conn: Connection, reversals: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
    """The transactions' checks from one scan of each table, as the exact pass reports them
    when all is well (None when the fingerprints differ, or cannot be computed: an overflow,
    so that the exact pass names the rows), and the entries' totals per asset."""
    try:
        with conn.transaction():
            entries = _rows(conn, sql.ENTRIES_FINGERPRINT_SQL)
            transactions = _query(conn, sql.TRANSACTIONS_FINGERPRINT_SQL)
    except psycopg.errors.NumericValueOutOfRange:
        totals = _rows(conn, sql.ENTRIES_TOTALS_SQL)
        return None, {row["asset_id"]: row for row in totals}
    by_asset = {row["asset_id"]: row for row in entries}
    count = int(transactions["transactions"]) + int(reversals["reversals"])
    required = sum(
        part[key] for part in (transactions, reversals) for key in ("user_shape", "treasury_shape")
    )
    if not (
        transactions["unresolved"] == 0
        and reversals["unresolved"] == 0
        and sum(row["user_entries"] for row in entries) == count
        and sum(row["entries"] for row in entries) == 2 * count
        and sum(row["shape"] for row in entries) == required
    ):
        return None, by_asset
    return {"transactions": count, "unbalanced": 0, "misshapen": 0}, by_asset


def _assemble(
    conn: Connection,
    by_txn: dict[str, Any],
    reversals: dict[str, Any],
    chains: dict[str, Any],
    cached: dict[str, Any],
    totals: Sequence[dict[str, Any]],
) -> tuple[CheckResult, ...]:
    transactions = int(by_txn["transactions"])
    unbalanced = [row for row in totals if row["total"] != 0]
    off = [row for row in totals if row["outstanding"] != row["cached"]]
    entries = _entry_labels(conn, [*(chains["broken_ids"] or ()), *(chains["negative_ids"] or ())])
    negative_entries = [
        f"{entries[i]['label']}: transaction {entries[i]['transaction_id']} left "
        f"{entries[i]['balance_after']}"
        for i in chains["negative_ids"] or ()
    ]
    return (
        CheckResult(
            *_ZERO_SUM_TRANSACTION,
            transactions,
            by_txn["unbalanced"],
            _ids("transaction ", by_txn.get("unbalanced_ids")),
        ),
        CheckResult(
            *_ZERO_SUM_ASSET,
            len(totals),
            len(unbalanced),
            tuple(f"{row['code']}: entries sum to {row['total']}" for row in unbalanced),
        ),
        CheckResult(
            *_CACHED,
            int(cached["balances"]) + len(totals),
            int(cached["drifted"]) + len(off),
            (
                *(cached["drifted_labels"] or ()),
                *(
                    f"{row['code']}: users hold {row['cached']} cached, {row['outstanding']} "
                    "by the ledger"
                    for row in off
                ),
            )[:EXAMPLES],
        ),
        CheckResult(
            *_NO_NEGATIVE,
            int(cached["balances"]),
            int(cached["negative"]) + int(chains["negative"]),
            (*(cached["negative_labels"] or ()), *negative_entries)[:EXAMPLES],
        ),
        CheckResult(
            *_RUNNING,
            int(chains["entries"]),
            int(chains["broken"]),
            tuple(
                f"{entries[i]['label']}: transaction {entries[i]['transaction_id']} (entry {i}) "
                "does not continue the balance before it"
                for i in chains["broken_ids"] or ()
            ),
        ),
        CheckResult(
            *_WELL_FORMED,
            transactions,
            by_txn["misshapen"],
            _ids("transaction ", by_txn.get("misshapen_ids")),
        ),
        CheckResult(
            *_REVERSALS,
            reversals["reversals"],
            reversals["bad_reversals"],
            _ids("transaction ", reversals["bad_reversal_ids"]),
        ),
    )


def _ids(prefix: str, values: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(f"{prefix}{value}" for value in values or ())


def _entry_labels(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    return {row["id"]: row for row in _rows(conn, sql.ENTRY_LABELS_SQL, (list(ids),))}


def _sealed_history(
    conn: Connection, checkpoint: checkpoints.Checkpoint | None, *, full: bool
) -> tuple[CheckResult, tuple[str, ...]]:
    name = "sealed_history_unchanged"
    description = "checkpoints chain up, and sealed transactions hash as sealed"
    if checkpoint is None:
        return CheckResult(name, description, 0, 0), ()
    problems = checkpoints.verify_chain(conn)
    tripped = tripwire(conn, checkpoint)
    notes = tuple(f"tripwire: {reason}; re-hashed all sealed history" for reason in tripped)
    checked = len(checkpoints.checkpoints(conn))
    if full or tripped:
        checked, mismatches = checkpoints.verify_history(conn)
        problems += [mismatch.describe() for mismatch in mismatches]
    return CheckResult(name, description, checked, len(problems), tuple(problems[:EXAMPLES])), notes
