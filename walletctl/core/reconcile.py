"""Reconcile: prove the ledger is whole, independently of the code that wrote it.

Full (``full=True``, or before the first seal): fingerprints first, one parallel scan of
each table (see walletctl.core.reconcile_sql); if every fingerprint agrees, the checks
pass. If one differs, the exact passes run to name the rows:

- by transaction (uq_ledger_entries_transaction_id_account_id, merged with transactions):
  zero-sum per transaction, the shape each kind requires;
- by account and asset in posting order (ix_ledger_entries_account_asset_time, merged with
  balances): running balances, cached balances, no negatives, zero-sum per asset.

Reversals are few and always checked row by row. A full run also re-hashes all sealed
history.

Incremental (the default once a checkpoint exists): the same checks for the transactions
after the last checkpoint's horizon, each new entry's running balance linked to the last
sealed one, totals per asset from the checkpoint's, and the checkpoint chain with its
tripwire (see walletctl.core.seal); history is re-hashed only when the tripwire fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import reconcile_sql as sql
from walletctl.core import seal
from walletctl.core.models import Connection
from walletctl.core.reconcile_sql import EXAMPLES
from walletctl.core.sqlerrors import translated


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
    """"fingerprint" (one scan per table, all equal) or "exact" (row by row, names rows)."""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)


def _ids(prefix: str, values: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(f"{prefix}{value}" for value in values or ())


@on_proxy("reconcile")
def reconcile(conn: Connection, *, full: bool = False) -> ReconcileReport:
    """Run every check: over what came after the last checkpoint, or the whole ledger.

    The whole ledger is first checked by fingerprints (one scan of each table); only when
    one differs do the exact passes run, to name the rows. Reads only, in one REPEATABLE
    READ transaction, so every pass sees the same committed ledger while postings go on."""
    with translated(), conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # Compiling these scans costs more than it saves up to tens of millions of rows.
        cursor.execute("SET LOCAL jit = off")
        checkpoint = seal.latest_checkpoint(conn)
        incremental = checkpoint is not None and not full
        horizon = checkpoint.horizon if checkpoint else 0
        params = {
            "horizon": horizon if incremental else 0,
            "checkpoint": checkpoint.id if checkpoint else None,
        }
        reversals = cursor.execute(sql.REVERSALS_SQL, params).fetchone()
        fast = None if incremental else _fingerprint_checks(conn, reversals)
        if fast is None:
            by_txn = cursor.execute(sql.BY_TRANSACTION_SQL, params).fetchone()
            by_account = cursor.execute(
                sql.BY_ACCOUNT_SINCE_SQL if incremental else sql.BY_ACCOUNT_SQL, params
            ).fetchone()
        sealed, notes = _sealed_history(conn, checkpoint, full=full)
    if fast is not None:
        checks, method = (*fast, sealed), "fingerprint"
    else:
        assert by_txn is not None and by_account is not None and reversals is not None
        checks, method = (*_exact_checks(by_txn, by_account, reversals), sealed), "exact"
    return ReconcileReport(
        checks=checks,
        mode="incremental" if incremental else "full",
        horizon=horizon,
        method=method,
        notes=notes,
    )


def _fingerprint_checks(
    conn: Connection, reversals: dict[str, Any] | None
) -> tuple[CheckResult, ...] | None:
    """The checks of the whole ledger from one scan per table; None when any fingerprint
    differs (or cannot be computed), so that the exact passes run and name the rows."""
    assert reversals is not None
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            entries = cursor.execute(sql.ENTRIES_FINGERPRINT_SQL).fetchone()
            transactions = cursor.execute(sql.TRANSACTIONS_FINGERPRINT_SQL).fetchone()
            cached = cursor.execute(sql.BALANCES_FINGERPRINT_SQL).fetchone()
    except psycopg.errors.NumericValueOutOfRange:
        return None
    assert entries is not None and transactions is not None and cached is not None
    count = int(transactions["transactions"]) + int(reversals["reversals"])
    required = sum(
        part[key] for part in (transactions, reversals) for key in ("user_shape", "treasury_shape")
    )
    shapes_match = (
        transactions["unresolved"] == 0
        and reversals["unresolved"] == 0
        and entries["user_entries"] == count
        and entries["entries"] == 2 * count
        and entries["shape"] == required
    )
    chains_match = (
        entries["chain_before"] - entries["chain_after"]
        == cached["chain_start"] - cached["chain_end"]
    )
    if not (shapes_match and chains_match) or min(entries["lowest"], cached["lowest"]) < 0:
        return None
    return (
        CheckResult(*_ZERO_SUM_TRANSACTION, count, 0),
        CheckResult(*_ZERO_SUM_ASSET, cached["assets"], 0),
        CheckResult(*_CACHED, cached["balances"], 0),
        CheckResult(*_NO_NEGATIVE, cached["balances"], 0),
        CheckResult(*_RUNNING, int(entries["user_entries"]), 0),
        CheckResult(*_WELL_FORMED, count, 0),
        _reversal_check(reversals),
    )


def _reversal_check(reversals: dict[str, Any]) -> CheckResult:
    return CheckResult(
        *_REVERSALS,
        reversals["reversals"],
        reversals["bad_reversals"],
        _ids("transaction ", reversals["bad_reversal_ids"]),
    )


_ZERO_SUM_TRANSACTION = ("zero_sum_per_transaction", "the entries of each transaction sum to zero")
_ZERO_SUM_ASSET = (
    "zero_sum_per_asset",
    "all entries of each asset sum to zero (Treasury = -users)",
)
_CACHED = (
    "cached_balances_match_ledger",
    "each cached balance, and each asset's total, equals its entries",
)
_NO_NEGATIVE = (
    "no_negative_balances",
    "no user balance, cached or after any entry, is below zero",
)
_RUNNING = (
    "running_balances_consistent",
    "each entry's balance_after = the previous one + its amount",
)
_WELL_FORMED = (
    "transactions_well_formed",
    "one user entry and one Treasury entry, of the kind's sign and amount",
)
_REVERSALS = (
    "reversals_well_formed",
    "each reversal mirrors an earlier non-reversal of the same user and asset",
)


def _exact_checks(
    by_txn: dict[str, Any], by_account: dict[str, Any], reversals: dict[str, Any]
) -> tuple[CheckResult, ...]:
    transactions = int(by_txn["transactions"])
    return (
        CheckResult(
            *_ZERO_SUM_TRANSACTION,
            transactions,
            by_txn["unbalanced"],
            _ids("transaction ", by_txn["unbalanced_ids"]),
        ),
        CheckResult(
            *_ZERO_SUM_ASSET,
            by_account["assets"],
            by_account["unbalanced_assets"],
            tuple(by_account["unbalanced_asset_labels"] or ()),
        ),
        CheckResult(
            *_CACHED,
            by_account["user_balances"] + by_account["assets"],
            by_account["drifted"] + by_account["off_totals"],
            tuple((by_account["drifted_labels"] or []) + (by_account["off_total_labels"] or []))[
                :EXAMPLES
            ],
        ),
        CheckResult(
            *_NO_NEGATIVE,
            by_account["user_balances"],
            by_account["negative"],
            tuple(by_account["negative_labels"] or ()),
        ),
        CheckResult(
            *_RUNNING,
            int(by_account["entries"] or 0),
            by_account["broken_chains"],
            tuple(by_account["broken_chain_labels"] or ()),
        ),
        CheckResult(
            *_WELL_FORMED,
            transactions,
            by_txn["misshapen"],
            _ids("transaction ", by_txn["misshapen_ids"]),
        ),
        _reversal_check(reversals),
    )


def _sealed_history(
    conn: Connection, checkpoint: seal.Checkpoint | None, *, full: bool
) -> tuple[CheckResult, tuple[str, ...]]:
    name = "sealed_history_unchanged"
    description = "checkpoints chain up, and sealed transactions hash as sealed"
    if checkpoint is None:
        return CheckResult(name, description, 0, 0), ()
    problems = seal.verify_chain(conn)
    tripped = seal.tripwire(conn, checkpoint)
    notes = tuple(f"tripwire: {reason}; re-hashed all sealed history" for reason in tripped)
    checked = len(seal.checkpoints(conn))
    if full or tripped:
        checked, mismatches = seal.verify_history(conn)
        problems += [mismatch.describe() for mismatch in mismatches]
    return CheckResult(name, description, checked, len(problems), tuple(problems[:EXAMPLES])), notes
