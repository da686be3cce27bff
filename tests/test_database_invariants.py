"""The database enforces the invariants itself: raw SQL that tries to break each is refused.

Every statement here runs as a superuser with the triggers on: the rules hold even for the
most privileged role that does not switch them off (tests/test_roles.py tries the same as
the roles a deployment grants, which cannot even reach the tables).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg

from walletctl.core import assets, posting

from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


@pytest.fixture
def conn(clean_db: str) -> Iterator[Conn]:
    """A superuser's connection to an empty ledger with the asset GOLD."""
    with psycopg.connect(clean_db, autocommit=True) as connection:
        assets.add_asset(connection, "GOLD", "Gold Coins")
        yield connection


@pytest.fixture
def booked(conn: Conn) -> int:
    """A ledger holding one top-up of 100 to alice; returns its transaction id."""
    return posting.topup(conn, "alice", 100, idempotency_key="t", **OPS).transaction_id


def _new_transaction(conn: Conn, key: str = "raw", amount: int = 5) -> int:
    row = conn.execute(
        "INSERT INTO transactions (kind, account_id, asset_id, amount, idempotency_key, actor, "
        "created_at) VALUES ('topup', 1, 1, %s, %s, 'postgres', now()) RETURNING id",
        (amount, key),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _refused(conn: Conn, sql: str, params: tuple[Any, ...] = (), *, sqlstate: str) -> None:
    before = ledger_snapshot(conn)
    with pytest.raises(psycopg.Error) as raised, conn.transaction():
        conn.execute(sql, params)
    assert raised.value.sqlstate == sqlstate, raised.value
    assert ledger_snapshot(conn) == before


# Invariant 1: zero-sum per transaction.


def test_entries_that_do_not_sum_to_zero_are_refused(booked: int, conn: Conn) -> None:
    with conn.transaction():
        txn = _new_transaction(conn)
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
                "balance_after, created_at) VALUES (%s, 1, 1, 5, 105, now()), "
                "(%s, 0, 1, -4, NULL, now())",
                (txn, txn),
            )
        assert raised.value.sqlstate == "WL011"
        raise psycopg.Rollback


def test_a_lone_entry_is_refused_even_if_its_partner_would_follow(booked: int, conn: Conn) -> None:
    with conn.transaction():
        txn = _new_transaction(conn)
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
                "balance_after, created_at) VALUES (%s, 1, 1, 5, 105, now())",
                (txn,),
            )
        assert raised.value.sqlstate == "WL011"
        raise psycopg.Rollback


@pytest.mark.parametrize(
    "bad_pair",
    [
        "(%(t)s, 1, 2, 5, 105, now()), (%(t)s, 0, 2, -5, NULL, now())",  # other asset
        "(%(t)s, 1, 1, 6, 106, now()), (%(t)s, 0, 1, -6, NULL, now())",  # other amount
        "(%(t)s, 2, 1, 5, 5, now()), (%(t)s, 0, 1, -5, NULL, now())",  # other user
        "(999, 1, 1, 5, 105, now()), (999, 0, 1, -5, NULL, now())",  # no such transaction
    ],
)
def test_balanced_entries_must_still_match_their_transaction(
    booked: int, conn: Conn, bad_pair: str
) -> None:
    conn.execute("INSERT INTO asset_types (code, name) VALUES ('POINTS', 'Points')")
    conn.execute("INSERT INTO accounts (external_id) VALUES ('bob')")
    with conn.transaction():
        txn = _new_transaction(conn)
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
                f"balance_after, created_at) VALUES {bad_pair}",
                {"t": txn},
            )
        assert raised.value.sqlstate == "WL011"
        raise psycopg.Rollback


# Invariant 2: append-only.


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE transactions SET amount = 1000",
        "UPDATE transactions SET reason = 'edited' WHERE id = -1",  # even touching no row
        "DELETE FROM transactions",
        "TRUNCATE transactions CASCADE",
        "UPDATE ledger_entries SET amount = amount * 2",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries",
        "DELETE FROM accounts WHERE external_id = 'alice'",
        "UPDATE accounts SET external_id = 'mallory' WHERE external_id = 'alice'",
        "TRUNCATE accounts CASCADE",
        "DELETE FROM asset_types",
        "UPDATE asset_types SET code = 'SILVER'",
        "DELETE FROM balances",
        "TRUNCATE balances",
    ],
)
def test_history_cannot_be_changed(booked: int, conn: Conn, sql: str) -> None:
    _refused(conn, sql, sqlstate="WL010")


# Invariant 3: user balances never go below zero.


def test_a_balance_cannot_be_set_below_zero(booked: int, conn: Conn) -> None:
    _refused(conn, "UPDATE balances SET balance = -1", sqlstate=pg.CheckViolation.sqlstate)


def test_a_negative_balance_cannot_be_inserted(booked: int, conn: Conn) -> None:
    conn.execute("INSERT INTO accounts (external_id) VALUES ('bob')")
    _refused(
        conn,
        "INSERT INTO balances (account_id, asset_id, balance, updated_at) VALUES (2, 1, -5, now())",
        sqlstate=pg.CheckViolation.sqlstate,
    )


def test_an_entry_cannot_record_a_negative_balance_after(booked: int, conn: Conn) -> None:
    with conn.transaction():
        txn = _new_transaction(conn)
        with pytest.raises(pg.CheckViolation):
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
                "balance_after, created_at) VALUES (%s, 1, 1, 5, -1, now()), "
                "(%s, 0, 1, -5, NULL, now())",
                (txn, txn),
            )
        raise psycopg.Rollback


# Invariant 4: amounts.


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_transaction_amounts_must_be_positive(booked: int, conn: Conn, amount: str) -> None:
    _refused(
        conn,
        "INSERT INTO transactions (kind, account_id, asset_id, amount, idempotency_key, actor, "
        f"created_at) VALUES ('topup', 1, 1, {amount}, 'raw', 'psql', now())",
        sqlstate=pg.CheckViolation.sqlstate,
    )


def test_amounts_beyond_bigint_are_refused(booked: int, conn: Conn) -> None:
    _refused(
        conn,
        "INSERT INTO transactions (kind, account_id, asset_id, amount, idempotency_key, actor, "
        "created_at) VALUES ('topup', 1, 1, 9223372036854775808, 'raw', 'psql', now())",
        sqlstate=pg.NumericValueOutOfRange.sqlstate,
    )


def test_zero_entries_are_refused(booked: int, conn: Conn) -> None:
    with conn.transaction():
        txn = _new_transaction(conn)
        with pytest.raises(pg.CheckViolation):
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
                "balance_after, created_at) VALUES (%s, 1, 1, 0, 100, now()), "
                "(%s, 0, 1, 0, NULL, now())",
                (txn, txn),
            )
        raise psycopg.Rollback


def test_the_treasury_never_holds_a_cached_balance(booked: int, conn: Conn) -> None:
    _refused(
        conn,
        "INSERT INTO balances (account_id, asset_id, balance, updated_at) VALUES (0, 1, 5, now())",
        sqlstate=pg.CheckViolation.sqlstate,
    )


def test_idempotency_keys_are_unique_in_the_database(booked: int, conn: Conn) -> None:
    _refused(
        conn,
        "INSERT INTO transactions (kind, account_id, asset_id, amount, idempotency_key, actor, "
        "created_at) VALUES ('topup', 1, 1, 5, 't', 'psql', now())",
        sqlstate=pg.UniqueViolation.sqlstate,
    )
