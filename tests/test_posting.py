"""The posting contract of the core: receipts, idempotency, refusals that write nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from walletctl.core import assets, posting
from walletctl.errors import (
    AlreadyExists,
    AlreadyReversed,
    AssetNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    TransactionNotFound,
    UserNotFound,
)

from .helpers import assert_ledger_consistent, balance_of, ledger_snapshot

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def test_topup_creates_the_user_and_returns_a_receipt(conn: Conn, ops_role: str) -> None:
    receipt = posting.topup(conn, "alice", 100, idempotency_key="k1", reason="purchase", **OPS)
    assert (receipt.kind, receipt.user_id, receipt.asset, receipt.amount) == (
        "topup",
        "alice",
        "GOLD",
        100,
    )
    assert receipt.balance_after == 100
    assert receipt.replayed is False
    assert receipt.idempotency_key == "k1"
    # The actor is the role that logged in; --actor's name is only a note beside it.
    assert (receipt.actor, receipt.on_behalf_of) == (ops_role, "ops")
    row = conn.execute(
        "SELECT kind, reason, actor, on_behalf_of FROM transactions WHERE id = %s",
        (receipt.transaction_id,),
    ).fetchone()
    assert row == ("topup", "purchase", ops_role, "ops")
    assert_ledger_consistent(conn)


def test_entries_are_double_entry_against_the_treasury(conn: Conn) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    receipt = posting.spend(conn, "alice", 30, idempotency_key="s", **OPS)
    entries = conn.execute(
        "SELECT account_id, amount, balance_after FROM ledger_entries "
        "WHERE transaction_id = %s ORDER BY id",
        (receipt.transaction_id,),
    ).fetchall()
    assert entries == [(1, -30, 70), (0, 30, None)]


def test_bonus_requires_a_reason(conn: Conn) -> None:
    with pytest.raises(InvalidInput, match="reason is required"):
        posting.bonus(conn, "alice", 5, idempotency_key="b", reason="", **OPS)
    receipt = posting.bonus(conn, "alice", 5, idempotency_key="b", reason="referral", **OPS)
    assert receipt.kind == "bonus" and receipt.balance_after == 5


def test_replay_returns_the_original_receipt_and_writes_nothing(conn: Conn) -> None:
    first = posting.topup(conn, "alice", 100, idempotency_key="k", **OPS)
    before = ledger_snapshot(conn)
    again = posting.topup(
        conn, "alice", 100, idempotency_key="k", on_behalf_of="someone-else", asset="GOLD"
    )
    assert again.replayed is True
    assert again.transaction_id == first.transaction_id
    assert again.balance_after == first.balance_after
    assert again.created_at == first.created_at
    assert ledger_snapshot(conn) == before


def test_replay_keeps_the_balance_after_of_its_time(conn: Conn) -> None:
    first = posting.topup(conn, "alice", 100, idempotency_key="k", **OPS)
    posting.topup(conn, "alice", 50, idempotency_key="k2", **OPS)
    assert posting.topup(conn, "alice", 100, idempotency_key="k", **OPS).balance_after == 100
    assert first.balance_after == 100


@pytest.mark.parametrize(
    ("kind", "user", "amount", "asset"),
    [
        ("topup", "alice", 101, "GOLD"),
        ("topup", "bob", 100, "GOLD"),
        ("bonus", "alice", 100, "GOLD"),
        ("spend", "alice", 100, "GOLD"),
        ("topup", "alice", 100, "POINTS"),
    ],
)
def test_same_key_for_a_different_request_is_a_conflict(
    conn: Conn, kind: str, user: str, amount: int, asset: str
) -> None:
    assets.add_asset(conn, "POINTS", "Reward Points")
    first = posting.topup(conn, "alice", 100, idempotency_key="k", **OPS)
    before = ledger_snapshot(conn)
    with pytest.raises(IdempotencyConflict) as raised:
        posting.post(
            conn,
            kind,
            user,
            amount,
            asset=asset,
            idempotency_key="k",  # type: ignore[arg-type]
            on_behalf_of="ops",
            reason="r",
        )
    assert raised.value.transaction_id == first.transaction_id
    assert ledger_snapshot(conn) == before


def test_spend_refuses_when_balance_would_go_negative(conn: Conn) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    before = ledger_snapshot(conn)
    with pytest.raises(InsufficientFunds) as raised:
        posting.spend(conn, "alice", 101, idempotency_key="s", **OPS)
    assert raised.value.balance == 100
    assert ledger_snapshot(conn) == before
    # The refused key was not consumed: it can be used once the funds are there.
    posting.topup(conn, "alice", 1, idempotency_key="t2", **OPS)
    assert posting.spend(conn, "alice", 101, idempotency_key="s", **OPS).balance_after == 0


def test_spend_for_an_unknown_user_is_not_found(conn: Conn) -> None:
    before = ledger_snapshot(conn)
    with pytest.raises(UserNotFound):
        posting.spend(conn, "nobody", 1, idempotency_key="s", **OPS)
    assert ledger_snapshot(conn) == before


def test_spend_of_an_asset_the_user_never_held_is_insufficient(conn: Conn) -> None:
    assets.add_asset(conn, "POINTS", "Reward Points")
    posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    with pytest.raises(InsufficientFunds):
        posting.spend(conn, "alice", 1, idempotency_key="s", asset="POINTS", on_behalf_of="ops")


def test_unknown_asset_is_not_found_and_creates_no_user(conn: Conn) -> None:
    before = ledger_snapshot(conn)
    with pytest.raises(AssetNotFound):
        posting.topup(conn, "alice", 1, idempotency_key="t", asset="SILVER", on_behalf_of="ops")
    assert ledger_snapshot(conn) == before


@pytest.mark.parametrize("amount", [0, -1, 2**63, True, 1.5, "10", None])
def test_invalid_amounts_are_refused_before_the_database(conn: Conn, amount: Any) -> None:
    with pytest.raises(InvalidAmount):
        posting.topup(conn, "alice", amount, idempotency_key="t", **OPS)


def test_largest_amount_is_accepted_and_overflow_is_refused(conn: Conn) -> None:
    biggest = 2**63 - 1
    assert (
        posting.topup(conn, "alice", biggest, idempotency_key="t", **OPS).balance_after == biggest
    )
    before = ledger_snapshot(conn)
    with pytest.raises(InvalidAmount, match="largest amount"):
        posting.topup(conn, "alice", 1, idempotency_key="t2", **OPS)
    assert ledger_snapshot(conn) == before


@pytest.mark.parametrize(
    "user_id", ["", " alice", "a" * 201, "al\x00ice", "al\nice", "bob\x1b[31m"]
)
def test_malformed_user_ids_are_refused(conn: Conn, user_id: str) -> None:
    with pytest.raises(InvalidInput):
        posting.topup(conn, user_id, 1, idempotency_key="t", **OPS)


def test_sql_looking_ids_are_just_ids(conn: Conn) -> None:
    user = "alice'); DROP TABLE balances; --"
    receipt = posting.topup(conn, user, 7, idempotency_key="'; DELETE FROM accounts; --", **OPS)
    assert receipt.user_id == user
    assert balance_of(conn, user) == 7


def test_reversal_of_a_topup_debits_the_user(conn: Conn) -> None:
    topup = posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    reversal = posting.reverse(
        conn, topup.transaction_id, idempotency_key="r", on_behalf_of="ops", reason="wrong user"
    )
    assert (reversal.kind, reversal.reverses, reversal.amount) == (
        "reversal",
        topup.transaction_id,
        100,
    )
    assert reversal.user_id == "alice" and reversal.balance_after == 0
    assert_ledger_consistent(conn)


def test_reversal_of_a_spend_credits_the_user(conn: Conn) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    spend = posting.spend(conn, "alice", 40, idempotency_key="s", **OPS)
    reversal = posting.reverse(
        conn, spend.transaction_id, idempotency_key="r", on_behalf_of="ops", reason="refund"
    )
    assert reversal.balance_after == 100


def test_a_transaction_is_reversed_at_most_once(conn: Conn) -> None:
    topup = posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    first = posting.reverse(
        conn, topup.transaction_id, idempotency_key="r1", on_behalf_of="ops", reason="x"
    )
    replay = posting.reverse(
        conn, topup.transaction_id, idempotency_key="r1", on_behalf_of="ops", reason="x"
    )
    assert replay.replayed and replay.transaction_id == first.transaction_id
    before = ledger_snapshot(conn)
    with pytest.raises(AlreadyReversed) as raised:
        posting.reverse(
            conn, topup.transaction_id, idempotency_key="r2", on_behalf_of="ops", reason="x"
        )
    assert raised.value.transaction_id == first.transaction_id
    with pytest.raises(AlreadyReversed, match="cannot be reversed"):
        posting.reverse(
            conn, first.transaction_id, idempotency_key="r3", on_behalf_of="ops", reason="x"
        )
    assert ledger_snapshot(conn) == before


def test_reversing_a_spent_credit_is_insufficient_funds(conn: Conn) -> None:
    topup = posting.topup(conn, "alice", 100, idempotency_key="t", **OPS)
    posting.spend(conn, "alice", 60, idempotency_key="s", **OPS)
    before = ledger_snapshot(conn)
    with pytest.raises(InsufficientFunds):
        posting.reverse(
            conn, topup.transaction_id, idempotency_key="r", on_behalf_of="ops", reason="x"
        )
    assert ledger_snapshot(conn) == before


def test_reversal_of_an_unknown_transaction_is_not_found(conn: Conn) -> None:
    with pytest.raises(TransactionNotFound):
        posting.reverse(conn, 999, idempotency_key="r", on_behalf_of="ops", reason="x")


def test_reversal_key_reused_for_another_target_is_a_conflict(conn: Conn) -> None:
    a = posting.topup(conn, "alice", 100, idempotency_key="a", **OPS)
    b = posting.topup(conn, "alice", 100, idempotency_key="b", **OPS)
    posting.reverse(conn, a.transaction_id, idempotency_key="r", on_behalf_of="ops", reason="x")
    with pytest.raises(IdempotencyConflict):
        posting.reverse(conn, b.transaction_id, idempotency_key="r", on_behalf_of="ops", reason="x")
    with pytest.raises(IdempotencyConflict):
        posting.topup(conn, "alice", 100, idempotency_key="r", **OPS)


def test_asset_codes_are_unique_and_well_formed(conn: Conn) -> None:
    with pytest.raises(AlreadyExists):
        assets.add_asset(conn, "GOLD", "Gold again")
    for code in ["gold", "", "G-1", "1GOLD", "G" * 25, "GOLD_"]:
        with pytest.raises(InvalidInput):
            assets.add_asset(conn, code, "x")
    assert [asset.code for asset in assets.list_assets(conn)] == ["GOLD"]
