"""Sealed history: checkpoints that make any later change to old transactions evident.

``seal`` hashes every transaction and its entries up to a safe horizon (the digests are
defined in SQL, in migration 0002: walletctl_seal_digests / walletctl_seal_blocks) and
stores a checkpoint whose hash covers the previous checkpoint's hash.

Verifying has two costs:

- the chain: each checkpoint's hash recomputed from its stored block digests and its
  predecessor, plus a tripwire (PostgreSQL's count of rows updated or deleted in the ledger
  tables, and the files behind them): cheap, done by every reconcile;
- the history: every sealed transaction re-hashed and compared with its block; a changed
  block names its transactions through the stored fingerprints. Done by ``reconcile
  --full``, and by every reconcile whose tripwire fired.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core.models import Connection
from walletctl.errors import ConcurrentRun

SEAL_LOCK_ID = 0x7365616C  # "seal": one seal at a time
ZERO_HASH = bytes(32)
BLOCK_SIZE = 1000
CHUNK_IDS = 100 * BLOCK_SIZE  # transactions hashed per statement while sealing/verifying
FINGERPRINT_BYTES = 4


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    previous_id: int | None
    previous_horizon: int
    horizon: int
    transactions: int
    entries: int
    previous_hash: bytes
    hash: bytes
    transactions_filenode: int
    ledger_entries_filenode: int
    ledger_changes: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A sealed block that no longer hashes to what was sealed."""

    checkpoint_id: int
    first_transaction_id: int
    last_transaction_id: int
    transaction_ids: tuple[int, ...]
    detail: str

    def describe(self) -> str:
        named = ", ".join(str(i) for i in self.transaction_ids) or "unknown"
        return (
            f"checkpoint {self.checkpoint_id}: transaction(s) {named} no longer match "
            f"({self.detail}; block {self.first_transaction_id}-{self.last_transaction_id})"
        )


_CHECKPOINT_COLUMNS = (
    "id, previous_id, previous_horizon, horizon, transactions, entries, previous_hash, hash, "
    "transactions_filenode, ledger_entries_filenode, ledger_changes, created_at"
)

# Rows ever updated or deleted in the ledger tables, as far as PostgreSQL's statistics know.
_LEDGER_CHANGES_SQL = """
SELECT coalesce(sum(n_tup_upd + n_tup_del), 0)::bigint
FROM pg_stat_user_tables
WHERE schemaname = 'public' AND relname IN ('transactions', 'ledger_entries')
"""

_FILENODES_SQL = (
    "SELECT pg_relation_filenode('transactions'), pg_relation_filenode('ledger_entries')"
)


def checkpoints(conn: Connection) -> list[Checkpoint]:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM seal_checkpoints ORDER BY id"
        ).fetchall()
    return [_checkpoint(row) for row in rows]


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM seal_checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return None if row is None else _checkpoint(row)


def _checkpoint(row: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        **{**row, "previous_hash": bytes(row["previous_hash"]), "hash": bytes(row["hash"])}
    )


def checkpoint_hash(
    previous_hash: bytes,
    previous_horizon: int,
    horizon: int,
    transactions: int,
    entries: int,
    block_digests: Iterator[bytes],
    asset_totals: list[tuple[int, int, int]],
) -> bytes:
    """The hash a checkpoint stores: its predecessor's hash, what it covers, its blocks'
    digests in order, and the per-asset totals at its horizon."""
    digest = hashlib.sha256(previous_hash)
    digest.update(f"{previous_horizon}:{horizon}:{transactions}:{entries}\n".encode())
    for block_digest in block_digests:
        digest.update(block_digest)
    for asset_id, entries_total, outstanding in sorted(asset_totals):
        digest.update(f"\n{asset_id}:{entries_total}:{outstanding}".encode())
    return digest.digest()


def safe_horizon(conn: Connection, *, wait_seconds: float) -> int:
    """The highest transaction id below which nothing can still appear.

    Ids are taken from a sequence before their transaction commits, so a posting still in
    flight may hold an id lower than one already committed. Every id at or below the
    highest committed one was taken by a transaction running at that moment (walletctl's
    writers take their transaction id before their posting id); once all of those have
    ended, the ids below are final. Waits for them, up to ``wait_seconds``.
    """
    row = conn.execute(
        "SELECT pg_current_snapshot()::text, coalesce(max(id), 0) FROM transactions"
    ).fetchone()
    assert row is not None
    snapshot, horizon = str(row[0]), int(row[1])
    deadline = time.monotonic() + wait_seconds
    while True:
        running = conn.execute(
            "SELECT count(*) FROM pg_snapshot_xip(%s::pg_snapshot) AS x(xid) "
            "WHERE pg_xact_status(x.xid) = 'in progress'",
            (snapshot,),
        ).fetchone()
        if running is None or running[0] == 0:
            return horizon
        if time.monotonic() > deadline:
            raise ConcurrentRun(
                f"{running[0]} transaction(s) older than the horizon are still running after "
                f"{wait_seconds:g} s; try again later"
            )
        time.sleep(0.05)


@on_proxy("seal")
def seal(conn: Connection, *, wait_seconds: float = 60.0) -> Checkpoint | None:
    """Seal everything committed since the last checkpoint. None when nothing is new.

    The caller should reconcile first: a seal records what is there, right or wrong.
    """
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (SEAL_LOCK_ID,)).fetchone()
    if not locked or not locked[0]:
        raise ConcurrentRun("another walletctl seal is running")
    try:
        previous = latest_checkpoint(conn)
        previous_horizon = previous.horizon if previous else 0
        horizon = safe_horizon(conn, wait_seconds=wait_seconds)
        if horizon <= previous_horizon:
            return None
        with conn.transaction():
            return _write_checkpoint(conn, horizon)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (SEAL_LOCK_ID,))


def _write_checkpoint(conn: Connection, horizon: int) -> Checkpoint:
    # walletctl_seal (walletctl/sql/seal.sql) computes the blocks, the totals and the hash
    # itself: the caller chooses only how far to seal.
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM walletctl_seal(%s)", (horizon,)
        ).fetchone()
    assert row is not None
    return _checkpoint(row)


def _chunks(after: int, through: int) -> Iterator[tuple[int, int]]:
    """(after, through] in pieces that end on block boundaries, so no block is split."""
    start = after
    while start < through:
        end = min(through, (start // CHUNK_IDS + 1) * CHUNK_IDS)
        yield start, end
        start = end


def verify_chain(conn: Connection) -> list[str]:
    """Problems with the checkpoints themselves: each hash recomputed from its stored
    blocks and totals, and each linked to its predecessor."""
    problems: list[str] = []
    expected_previous: Checkpoint | None = None
    for checkpoint in checkpoints(conn):
        if expected_previous is None:
            if checkpoint.previous_id is not None or checkpoint.previous_hash != ZERO_HASH:
                problems.append(
                    f"checkpoint {checkpoint.id}: the first checkpoint has a predecessor"
                )
        elif (
            checkpoint.previous_id != expected_previous.id
            or checkpoint.previous_hash != expected_previous.hash
            or checkpoint.previous_horizon != expected_previous.horizon
        ):
            problems.append(
                f"checkpoint {checkpoint.id}: does not continue checkpoint {expected_previous.id}"
            )
        with conn.cursor() as cursor:
            digests = (
                bytes(row[0])
                for row in cursor.stream(
                    "SELECT digest FROM seal_blocks WHERE checkpoint_id = %s ORDER BY block",
                    (checkpoint.id,),
                )
            )
            totals = [
                (int(a), int(t), int(o))
                for a, t, o in conn.execute(
                    "SELECT asset_id, entries_total, outstanding FROM seal_asset_totals "
                    "WHERE checkpoint_id = %s",
                    (checkpoint.id,),
                )
            ]
            recomputed = checkpoint_hash(
                checkpoint.previous_hash,
                checkpoint.previous_horizon,
                checkpoint.horizon,
                checkpoint.transactions,
                checkpoint.entries,
                digests,
                totals,
            )
        if recomputed != checkpoint.hash:
            problems.append(
                f"checkpoint {checkpoint.id}: its stored blocks no longer hash to its hash"
            )
        expected_previous = checkpoint
    return problems


def tripwire(conn: Connection, checkpoint: Checkpoint | None) -> list[str]:
    """Signs, readable without touching the history, that sealed rows may have changed."""
    if checkpoint is None:
        return []
    reasons = []
    filenodes = conn.execute(_FILENODES_SQL).fetchone()
    changes = conn.execute(_LEDGER_CHANGES_SQL).fetchone()
    assert filenodes is not None and changes is not None
    if (filenodes[0], filenodes[1]) != (
        checkpoint.transactions_filenode,
        checkpoint.ledger_entries_filenode,
    ):
        reasons.append("a ledger table was truncated or rewritten since the last seal")
    if int(changes[0]) != checkpoint.ledger_changes:
        reasons.append(
            f"PostgreSQL counted {int(changes[0]) - checkpoint.ledger_changes:+} updated or "
            "deleted ledger rows since the last seal (or its statistics were reset)"
        )
    return reasons


def verify_history(conn: Connection) -> tuple[int, list[Mismatch]]:
    """Re-hash every sealed transaction; returns (transactions checked, mismatches)."""
    checked = 0
    mismatches: list[Mismatch] = []
    for checkpoint in checkpoints(conn):
        for after, through in _chunks(checkpoint.previous_horizon, checkpoint.horizon):
            first_block = after // BLOCK_SIZE
            last_block = (through - 1) // BLOCK_SIZE
            rows = conn.execute(
                """
                SELECT coalesce(s.block, c.block), s.first_transaction_id, s.last_transaction_id,
                       s.transactions, c.transactions, s.entries, c.entries, s.fingerprints
                FROM (SELECT * FROM seal_blocks
                      WHERE checkpoint_id = %s AND block BETWEEN %s AND %s) s
                FULL JOIN walletctl_seal_blocks(%s, %s) c ON c.block = s.block
                WHERE s.digest IS DISTINCT FROM c.digest
                """,
                (checkpoint.id, first_block, last_block, after, through),
            ).fetchall()
            checked += through - after
            for row in rows:
                mismatches.append(_locate(conn, checkpoint, after, through, row))
    return checked, mismatches


def _locate(
    conn: Connection, checkpoint: Checkpoint, after: int, through: int, row: tuple[Any, ...]
) -> Mismatch:
    block, first, last, sealed_count, current_count, sealed_entries, current_entries, prints = row
    low = max(after, block * BLOCK_SIZE)
    high = min(through, (block + 1) * BLOCK_SIZE)
    current = conn.execute(
        "SELECT transaction_id, digest FROM walletctl_seal_digests(%s, %s) ORDER BY 1",
        (low, high),
    ).fetchall()
    sealed = bytes(prints or b"")
    sealed_prints = [
        sealed[i : i + FINGERPRINT_BYTES] for i in range(0, len(sealed), FINGERPRINT_BYTES)
    ]
    changed = tuple(
        int(transaction_id)
        for (transaction_id, digest), sealed_print in zip(current, sealed_prints, strict=False)
        if bytes(digest)[:FINGERPRINT_BYTES] != sealed_print
    )
    if sealed_count != current_count:
        detail = f"{sealed_count or 0} transactions sealed, {current_count or 0} now"
        changed = changed[:1]  # after a row is added or removed, the rest only shifts
    elif sealed_entries != current_entries:
        detail = f"{sealed_entries} entries sealed, {current_entries} now"
    else:
        detail = "contents changed"
    return Mismatch(checkpoint.id, first or low + 1, last or high, changed, detail)
