"""Posting: top-ups, bonuses, spends and reversals.

Each call is one round trip to one server-side function of the SQL API (walletctl_post
or walletctl_reverse, in walletctl/sql/posting.sql), which runs as one database transaction on an
autocommit connection and locks only the user's balance row. The SQL is fixed text, so
psycopg prepares it once per connection and reuses the plan; except on a connection opened
with ``prepare_threshold=None``, psycopg's way of saying "no server-side prepared
statements" (behind PgBouncer in transaction pooling, a statement prepared in one
transaction may be gone, or be another statement, in the next).

Who posted is not an argument: the database records the identity that logged in
(session_user). ``on_behalf_of`` is an optional note of whom that identity acted for.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from threading import get_ident
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg.pq import TransactionStatus

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Connection, PostingKind, Receipt
from walletctl.core.sqlerrors import KeyClaimedConcurrently, raise_translated, translate
from walletctl.errors import InvalidInput

POST_SQL = "SELECT * FROM walletctl_post(%s, %s, %s, %s, %s, %s, %s)"
REVERSE_SQL = "SELECT * FROM walletctl_reverse(%s, %s, %s, %s)"

# A posting that loses the race for its key is undone and asked again once; the second
# call finds the winner's row. More than one loss in a row would mean a bug.
_CLAIM_ATTEMPTS = 3


def topup(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    reason: str | None = None,
    on_behalf_of: str | None = None,
) -> Receipt:
    """Credit ``amount`` bought by the user. Creates the user on their first credit."""
    return post(
        conn,
        "topup",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        reason=reason,
        on_behalf_of=on_behalf_of,
    )


def bonus(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    reason: str,
    on_behalf_of: str | None = None,
) -> Receipt:
    """Credit ``amount`` granted for free (referral, promotion). A reason is required."""
    return post(
        conn,
        "bonus",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        reason=reason,
        on_behalf_of=on_behalf_of,
    )


def spend(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    reason: str | None = None,
    on_behalf_of: str | None = None,
) -> Receipt:
    """Debit ``amount``; raises InsufficientFunds (and writes nothing) if the balance is short."""
    return post(
        conn,
        "spend",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        reason=reason,
        on_behalf_of=on_behalf_of,
    )


def post(
    conn: Connection,
    kind: PostingKind,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    reason: str | None = None,
    on_behalf_of: str | None = None,
) -> Receipt:
    """Post a top-up, bonus or spend.

    The same ``idempotency_key`` with the same request returns the first posting's receipt
    with ``replayed=True`` and writes nothing; with a different request it raises
    IdempotencyConflict.
    """
    if kind not in ("topup", "bonus", "spend"):
        raise InvalidInput(f"unknown posting kind {kind!r}")
    params = (
        kind,
        validation.user_id(user_id),
        validation.asset_code(asset),
        validation.amount(amount),
        validation.idempotency_key(idempotency_key),
        validation.reason(reason, required=kind == "bonus"),
        validation.on_behalf_of(on_behalf_of),
    )
    return _call(conn, POST_SQL, params)


def reverse(
    conn: Connection,
    transaction_id: int,
    *,
    idempotency_key: str,
    reason: str,
    on_behalf_of: str | None = None,
) -> Receipt:
    """Post the mirror image of a top-up, bonus or spend. A reason is required.

    Raises AlreadyReversed when it was reversed before (or is itself a reversal), and
    InsufficientFunds when the user has already spent the credit being reversed.
    """
    params = (
        validation.transaction_id(transaction_id),
        validation.idempotency_key(idempotency_key),
        validation.reason(reason, required=True),
        validation.on_behalf_of(on_behalf_of),
    )
    return _call(conn, REVERSE_SQL, params)


@on_proxy("scope")
def scope(conn: Connection, *, dry_run: bool) -> AbstractContextManager[object]:
    """Where postings made inside go: into the ledger, or, for a dry run, into a transaction
    that is rolled back, so the caller sees the exact receipts and refusals and nothing is
    written."""
    return conn.transaction(force_rollback=True) if dry_run else nullcontext()


# One cursor per connection and thread, reused by every posting: creating a cursor costs
# about a fifth of the client's time per posting. Keyed weakly, so it goes with the
# connection; remembered with its thread, so two threads sharing a connection never share
# a cursor (a cursor's result belongs to whoever executed last).
_cursors: WeakKeyDictionary[Connection, tuple[int, psycopg.Cursor[Any]]] = WeakKeyDictionary()


def _cursor(conn: Connection) -> psycopg.Cursor[Any]:
    thread = get_ident()
    cached = _cursors.get(conn)
    if cached is not None and cached[0] == thread and not cached[1].closed:
        return cached[1]
    cursor = conn.cursor()
    _cursors[conn] = (thread, cursor)
    return cursor


def _call(conn: Connection, sql: str, params: tuple[object, ...]) -> Receipt:
    # The hot path of every posting: kept to one execute and one tuple, no context managers
    # (a generator-based one costs as much as the validation above on a slow CPU).
    prepare = conn.prepare_threshold is not None
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            cursor = _cursor(conn)
            if conn.info.transaction_status == TransactionStatus.IDLE:
                row = cursor.execute(sql, params, prepare=prepare).fetchone()
            else:
                # Inside a caller's transaction (a dry run, a batch) a failed call must not
                # abort the whole transaction: give it a savepoint.
                with conn.transaction():
                    row = cursor.execute(sql, params, prepare=prepare).fetchone()
        except psycopg.Error as exc:
            typed = translate(exc)
            if isinstance(typed, KeyClaimedConcurrently):
                continue  # the winner has committed: asking again returns its receipt
            raise_translated(exc, typed)
        assert row is not None
        return Receipt(*row)
    raise RuntimeError("idempotency key kept being claimed concurrently; this is a bug")
