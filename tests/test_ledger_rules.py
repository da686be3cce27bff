"""The ledger rules added with least privilege, tried as a superuser with triggers on: the
database refuses each, and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walletctl.core import assets, posting, validation
from walletctl.errors import InvalidInput
from walletctl.textrules import identifier_check

from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]

INSERT_TRANSACTION = (
    "INSERT INTO transactions (id, kind, account_id, asset_id, amount, idempotency_key, "
    "reason, actor, reverses, created_at) VALUES (100, %s, 1, 1, %s, %s, %s, %s, %s, now())"
)
INSERT_ENTRIES = (
    "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, balance_after, "
    "created_at) SELECT 100, 1, 1, %s, %s, created_at FROM transactions WHERE id = 100 "
    "UNION ALL SELECT 100, 0, 1, -(%s), NULL, created_at FROM transactions WHERE id = 100"
)


@pytest.fixture
def su(clean_db: str) -> Iterator[Conn]:
    """A superuser; alice holds 100 GOLD (transaction 1)."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        assets.add_asset(conn, "GOLD", "Gold Coins")
        posting.topup(conn, "alice", 100, asset="GOLD", idempotency_key="t1", reason="seed")
        yield conn


def _refused(conn: Conn, statements: list[tuple[str, tuple[Any, ...]]], sqlstate: str) -> None:
    before = ledger_snapshot(conn)
    with pytest.raises(psycopg.Error) as raised, conn.transaction():
        for sql, params in statements:
            conn.execute(sql, params)
    assert raised.value.sqlstate == sqlstate, raised.value
    assert ledger_snapshot(conn) == before


def _posting(kind: str, amount: int, user_amount: int, balance_after: int, **over: Any) -> Any:
    values = {"key": "raw", "reason": "r", "actor": "postgres", "reverses": None, **over}
    return [
        (
            INSERT_TRANSACTION,
            (kind, amount, values["key"], values["reason"], values["actor"], values["reverses"]),
        ),
        (INSERT_ENTRIES, (user_amount, balance_after, user_amount)),
    ]


def test_a_well_formed_raw_posting_is_accepted(su: Conn) -> None:
    # The control: what the tests below break, one thing each, is otherwise acceptable.
    with su.transaction():
        for sql, params in _posting("topup", 5, 5, 105):
            su.execute(sql, params)
        su.execute("UPDATE balances SET balance = 105")


def test_a_spend_that_credits_is_refused(su: Conn) -> None:
    _refused(su, _posting("spend", 5, 5, 105), "WL011")


def test_a_reversal_that_does_not_mirror_its_target_is_refused(su: Conn) -> None:
    _refused(su, _posting("reversal", 5, 5, 105, reverses=1), "WL011")


def test_a_balance_after_that_breaks_the_chain_is_refused(su: Conn) -> None:
    _refused(su, _posting("topup", 5, 5, 999), "WL011")


def test_a_back_dated_entry_is_refused(su: Conn) -> None:
    statements = _posting("topup", 5, 5, 105)
    statements[0] = (
        statements[0][0].replace("now())", "now() - interval '1 day')"),
        statements[0][1],
    )
    _refused(su, statements, "WL011")


def test_a_transaction_without_its_entries_is_refused_at_commit(su: Conn) -> None:
    _refused(su, _posting("topup", 5, 5, 105)[:1], "WL012")


def test_an_actor_other_than_the_logged_in_role_is_refused(su: Conn) -> None:
    statements = _posting("topup", 5, 5, 105, actor="someone-else")
    statements.append(("UPDATE balances SET balance = 105", ()))
    _refused(su, statements, "WL012")


def test_a_cached_balance_cannot_move_without_its_entry(su: Conn) -> None:
    _refused(su, [("UPDATE balances SET balance = balance + 50", ())], "WL013")


def test_a_balance_row_out_of_nothing_is_refused(su: Conn) -> None:
    su.execute("INSERT INTO accounts (external_id) VALUES ('bob')")
    _refused(
        su,
        [
            (
                "INSERT INTO balances SELECT id, 1, 50, now() FROM accounts "
                "WHERE external_id = 'bob'",
                (),
            )
        ],
        "WL013",
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("key", "k" * 100_000),
        ("key", ""),
        ("key", "a\rb"),
        ("key", " padded"),
        ("actor", ""),
        ("reason", ""),
        ("reason", "line\rbreak"),
        ("reason", "c1\u0085control"),
        ("reason", "r" * 1001),
        ("key", "a\u200bb"),  # zero-width space
        ("key", "Treasury\u200b"),
        ("key", "h1\u00a0"),  # trailing no-break space
        ("actor", "x\u202ey"),  # right-to-left override
        ("key", "e\u0301"),  # not in normal form C (é as e plus a combining accent)
    ],
)
def test_text_rules_hold_in_the_database(su: Conn, column: str, value: str) -> None:
    _refused(su, _posting("bonus", 5, 5, 105, **{column: value}), "23514")


def test_a_bonus_needs_a_reason_in_the_database(su: Conn) -> None:
    _refused(su, _posting("bonus", 5, 5, 105, reason=None), "23514")


def test_no_user_may_be_called_treasury(su: Conn) -> None:
    _refused(su, [("INSERT INTO accounts (external_id) VALUES ('treasury')", ())], "23514")
    # Nor anything that would look like it, or like another user.
    for lookalike in ("Treasury\u200b", "\u2060Treasury", "ali\u00adce", "alice\u3000"):
        _refused(su, [("INSERT INTO accounts (external_id) VALUES (%s)", (lookalike,))], "23514")
        with pytest.raises(InvalidInput, match="invisible"):
            validation.user_id(lookalike)
    with pytest.raises(InvalidInput, match="normal form C"):
        validation.user_id("Zoe\u0308")
    with pytest.raises(InvalidInput, match="Treasury"):
        validation.user_id("TREASURY")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=210))
def test_the_core_and_the_database_apply_the_same_text_rules(su: Conn, text: str) -> None:
    # One rule, two checkers: validation.py in Python, the CHECK constraints in SQL.
    try:
        validation.identifier(text, "key")
        python_accepts = True
    except InvalidInput:
        python_accepts = False
    row = su.execute(f"SELECT {identifier_check('%(t)s')}", {"t": text}).fetchone()
    assert row is not None and row[0] == python_accepts


TRICKY = [*"aeZ ", "\u0301", "\u0308", "\u00e9", "\u00a0", "\u200b", "\u2060", "\ufeff"]
TRICKY += ["\u3000", "\u202e", "\U000e0041", "\u1160", "\u1100", "\u0041\u030a", "\u212b"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.lists(st.sampled_from(TRICKY), min_size=1, max_size=8).map("".join))
def test_the_core_and_the_database_agree_on_invisible_and_unnormalised_text(
    su: Conn, text: str
) -> None:
    # The same property, on the characters the rules for look-alikes are about: invisible
    # ones, combining marks, and precomposed letters with their decomposed twins.
    try:
        validation.identifier(text, "key")
        python_accepts = True
    except InvalidInput:
        python_accepts = False
    row = su.execute(f"SELECT {identifier_check('%(t)s')}", {"t": text}).fetchone()
    assert row is not None and row[0] == python_accepts
