"""Seal: store a checkpoint of everything up to a horizon, in the snapshot that reconciled it.

``seal`` writes a checkpoint (walletctl_seal, walletctl/sql/seal.sql) hashing every
transaction and its entries from the previous horizon to a new one, chained to the previous
checkpoint (walletctl.core.checkpoints). It seals only what its own reconcile verified:

1. A ticket (walletctl_seal_ticket) records the horizon, the highest committed
   transaction id, and the ledger's writers then in flight. Ids are drawn from a sequence
   before their posting commits, so a posting in flight may hold a lower id than one
   already committed; every id is drawn under a ROW EXCLUSIVE lock on transactions held to
   the end, so every posting that can still commit at or below the horizon is a writer
   then. Waits for them, up to ``wait_seconds``. walletctl_seal checks the same, so a
   caller of the SQL API cannot seal below a posting still in flight either.
2. Then one REPEATABLE READ transaction, whose snapshot is taken after they ended, runs the
   default reconcile (and the full history re-hash if the tripwire fires) and, only if
   every check passes, walletctl_seal up to the horizon. Both read the same rows, and no
   posting can commit at or below the horizon afterwards. The checkpoint records that
   snapshot: a row of a sealed transaction written by anything it did not see (a writer
   that drew its id first, or an edit) is named by the next reconcile's tripwire
   (walletctl.core.tripwire) when it is stored after the seal's last page, and by
   ``reconcile --full`` wherever it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import locks
from walletctl.core.checkpoints import CHECKPOINT_COLUMNS, Checkpoint, checkpoint_from_row
from walletctl.core.models import Connection
from walletctl.core.reconcile import check_ledger
from walletctl.core.sqlerrors import translated
from walletctl.errors import ConcurrentRun, ReconcileFailed

POLL_SECONDS = 0.05


class _NotSettled(Exception):
    """The seal's snapshot still counts a transaction that had ended as running (it was
    taken in the instant between a commit and its publication): take another."""


@on_proxy("seal")
def seal(conn: Connection, *, wait_seconds: float = 60.0) -> Checkpoint | None:
    """Reconcile, then seal everything committed since the last checkpoint, in one
    snapshot. Returns the new checkpoint, or None when nothing is new.

    Raises ReconcileFailed (carrying the report) when a check fails: nothing is sealed.
    Raises ConcurrentRun when another seal runs, or when postings holding lower ids are
    still running after ``wait_seconds``. ``conn`` must not be in a transaction.
    """
    with _sole_sealer(conn):
        deadline = time.monotonic() + wait_seconds
        ticket = _ticket(conn)
        while True:
            _wait_for(conn, ticket.writers, deadline, wait_seconds)
            try:
                return _reconcile_and_seal(conn, ticket)
            except _NotSettled:
                time.sleep(POLL_SECONDS)


@contextmanager
def _sole_sealer(conn: Connection) -> Iterator[None]:
    """One seal at a time: the seal's run lock (walletctl_lock_seal) held, for the whole
    seal, by a transaction open on a connection of its own beside ``conn``
    (walletctl.core.locks: a session-level lock does not survive transaction pooling, and an
    advisory lock can be taken by any role)."""
    with (
        locks.beside(conn) as lock_conn,
        locks.held(lock_conn, "walletctl_lock_seal", (), "another walletctl seal is running"),
    ):
        yield


@dataclass(frozen=True, slots=True)
class _Ticket:
    """A seal ticket (walletctl_seal_ticket, walletctl/sql/seal.sql), as the database
    recorded it: walletctl_seal seals its horizon only once its writers have ended."""

    id: int
    horizon: int
    """The highest committed transaction id when it was taken."""
    writers: list[str]
    """The ledger's writers then in flight, which may still commit an id below the
    horizon (xid8s as text)."""


def _ticket(conn: Connection) -> _Ticket:
    with translated():
        row = conn.execute(
            "SELECT ticket, horizon, writers FROM walletctl_seal_ticket()"
        ).fetchone()
    assert row is not None
    return _Ticket(int(row[0]), int(row[1]), [str(xid) for xid in row[2]])


def _wait_for(conn: Connection, running: list[str], deadline: float, wait_seconds: float) -> None:
    while True:
        left = conn.execute(
            "SELECT count(*) FROM unnest(%s::xid8[]) AS x(xid) "
            "WHERE pg_xact_status(x.xid) = 'in progress'",
            (running,),
        ).fetchone()
        if left is None or left[0] == 0:
            return
        if time.monotonic() > deadline:
            raise ConcurrentRun(
                f"{left[0]} transaction(s) older than the horizon are still running after "
                f"{wait_seconds:g} s; try again later"
            )
        time.sleep(POLL_SECONDS)


def _reconcile_and_seal(conn: Connection, ticket: _Ticket) -> Checkpoint | None:
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The first statement takes the snapshot: every transaction that was running when
        # the horizon was read must have ended in it.
        settled = conn.execute(
            "SELECT coalesce(bool_and(pg_visible_in_snapshot(x.xid, pg_current_snapshot())), "
            "true) FROM unnest(%s::xid8[]) AS x(xid)",
            (ticket.writers,),
        ).fetchone()
        if not settled or not settled[0]:
            raise _NotSettled
        report = check_ledger(conn)
        if not report.passed:
            raise ReconcileFailed(
                "reconcile found discrepancies: "
                + ", ".join(check.name for check in report.failed),
                report=report,
            )
        if ticket.horizon <= report.horizon:
            return None
        return _write_checkpoint(conn, ticket.id)


def _write_checkpoint(conn: Connection, ticket: int) -> Checkpoint:
    # walletctl_seal (walletctl/sql/seal.sql) seals up to the ticket's horizon, once its
    # writers have ended in this snapshot (checked again there), and computes the blocks,
    # the totals, the hash and the tripwire's references itself: the caller chooses only
    # when to seal.
    try:
        with conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM walletctl_seal(%s)", (ticket,)
            ).fetchone()
    except psycopg.errors.UniqueViolation as error:
        # Another sealer (through the SQL API) stored a checkpoint after this snapshot.
        raise ConcurrentRun("another seal stored a checkpoint meanwhile; try again") from error
    assert row is not None
    return checkpoint_from_row(row)
