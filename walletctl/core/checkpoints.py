"""Sealed history: the checkpoints, and proving that what they sealed is unchanged.

A checkpoint (written by walletctl_seal, walletctl/sql/seal.sql; see walletctl.core.seal)
hashes every transaction and its entries up to its horizon (the digests are defined in SQL:
walletctl_seal_digests / walletctl_seal_blocks), and its hash covers the previous
checkpoint's hash.

Verifying has two costs:

- the chain: each checkpoint's hash recomputed from its stored block digests and its
  predecessor: cheap, done by every reconcile, with the tripwire (walletctl.core.tripwire);
- the history: every sealed transaction re-hashed and compared with its block; a changed
  block names its transactions through the stored fingerprints. Done by ``reconcile
  --full``, and by every reconcile whose tripwire fired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from walletctl.core.models import Connection

ZERO_HASH = bytes(32)
BLOCK_SIZE = 1000
CHUNK_IDS = 100 * BLOCK_SIZE  # transactions hashed per statement while sealing/verifying
FINGERPRINT_BYTES = 4
NAMED = 5  # transactions a mismatch names at most


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
    # The tripwire's other references; None in checkpoints sealed before migration 0006.
    ledger_inserts: int | None
    stats_reset: datetime | None
    snapshot: str | None
    transactions_last_page: int | None
    ledger_entries_last_page: int | None


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


CHECKPOINT_COLUMNS = (
    "id, previous_id, previous_horizon, horizon, transactions, entries, previous_hash, hash, "
    "transactions_filenode, ledger_entries_filenode, ledger_changes, created_at, ledger_inserts, "
    "stats_reset, snapshot, transactions_last_page, ledger_entries_last_page"
)


def checkpoints(conn: Connection) -> list[Checkpoint]:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM seal_checkpoints ORDER BY id"
        ).fetchall()
    return [checkpoint_from_row(row) for row in rows]


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM seal_checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return None if row is None else checkpoint_from_row(row)


def checkpoint_from_row(row: dict[str, Any]) -> Checkpoint:
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
        # After a row is added or removed, the rest only shift: name the first that differs,
        # or, when rows are missing, the sealed ids no longer there before it.
        changed = changed[:1]
        if (sealed_count or 0) > (current_count or 0):
            ids = [int(transaction_id) for transaction_id, _ in current]
            if changed:
                at = ids.index(changed[0])
                gap = range((ids[at - 1] if at else (first or low + 1) - 1) + 1, changed[0])
            else:
                gap = range((ids[-1] if ids else low) + 1, (last or high) + 1)
            changed = tuple(gap)[:NAMED] or changed
    elif sealed_entries != current_entries:
        detail = f"{sealed_entries} entries sealed, {current_entries} now"
    else:
        detail = "contents changed"
    return Mismatch(checkpoint.id, first or low + 1, last or high, changed, detail)
