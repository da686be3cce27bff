"""Locks that last longer than one transaction, made of one that does not.

A bulk run (one per file at a time) and a seal (one at a time) each need a lock for their
whole length, across many transactions. A session-level advisory lock would do directly,
but not behind PgBouncer in transaction pooling: the lock stays in whichever server session
ran the statement, its unlock may run in another, and a client that goes away leaves it
held for whoever is given that session next. So the lock is a transaction-level advisory
lock, held by a transaction kept open on a connection of its own for as long as the work
runs: an open transaction keeps its one server session under any pooling, and ends, lock
and all, with the client (committed or rolled back when it finishes, rolled back by the
server when it dies).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from walletctl.core.models import Connection
from walletctl.errors import ConcurrentRun


@contextmanager
def held(conn: Connection, key: tuple[int, ...], refusal: str) -> Iterator[None]:
    """Hold the advisory lock ``key`` (one or two integers) for the block, in a transaction
    opened on ``conn``; ConcurrentRun(``refusal``) when someone else holds it.

    ``conn`` must be used for nothing else meanwhile (the work runs on other connections).
    """
    placeholders = ", ".join(["%s"] * len(key))
    with conn.transaction():
        # The transaction is idle while the work runs elsewhere: a server-wide
        # idle_in_transaction_session_timeout must not end it (and the lock) midway.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        row = conn.execute(f"SELECT pg_try_advisory_xact_lock({placeholders})", key).fetchone()
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
