"""Locks that last longer than one transaction, made of one that does not.

A bulk run (one per file at a time) and a seal (one at a time) each need a lock for their
whole length, across many transactions. A session-level lock would do directly, but not
behind PgBouncer in transaction pooling: the lock stays in whichever server session ran
the statement, its unlock may run in another, and a client that goes away leaves it held
for whoever is given that session next. So the lock is held by a transaction kept open on
a connection of its own for as long as the work runs: an open transaction keeps its one
server session under any pooling, and ends, lock and all, with the client (rolled back
when it finishes, and by the server when it dies).

The lock itself is a row of the table run_locks that the transaction inserted and never
commits (or a committed row it locked), taken by walletctl_lock_seal or walletctl_lock_file
(walletctl/sql/locks.sql; on a cluster's proxy, plproxy.walletctl_run_locks), not an
advisory lock: any role that can connect may take any advisory lock, and so could keep
every seal, or a file, out for as long as it likes. No login role holds a privilege on
run_locks, and only walletctl_batch may execute those functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import LiteralString

import psycopg

from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import ConcurrentRun


@contextmanager
def held(
    conn: Connection, function: LiteralString, args: tuple[object, ...], refusal: str
) -> Iterator[None]:
    """Hold a run lock for the block, in a transaction opened on ``conn``: ``function``
    (walletctl_lock_seal or walletctl_lock_file) called with ``args`` takes it and says
    whether it did; ConcurrentRun(``refusal``) when another run holds it.

    ``conn`` must be used for nothing else meanwhile (the work runs on other connections).
    """
    placeholders = ", ".join(["%s"] * len(args))
    # Rolled back, never committed: the lock is a row the transaction inserted, which must
    # not outlive the run (a dry run writes nothing, not even that).
    with conn.transaction(force_rollback=True):
        # The transaction is idle while the work runs elsewhere: a server-wide
        # idle_in_transaction_session_timeout must not end it (and the lock) midway.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        with translated():
            row = conn.execute(f"SELECT {function}({placeholders})", args).fetchone()
        if not (row and row[0]):
            raise ConcurrentRun(refusal)
        yield


@contextmanager
def beside(conn: Connection) -> Iterator[Connection]:
    """A new autocommit connection to the same server, database and role as ``conn``
    (libpq's parameters of ``conn``, its password included), to hold a lock beside it."""
    from psycopg.conninfo import make_conninfo

    password = conn.info.password
    dsn = make_conninfo(conn.info.dsn, password=password) if password else conn.info.dsn
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as lock_conn:
        yield lock_conn
