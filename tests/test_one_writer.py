"""One writer: single postings and batches share every rule (walletctl/sql/posting.sql and
batch.sql), so the same requests through either path leave identical ledgers and give the
same receipts and refusals. Also: batches refuse duplicated line numbers, and an atomic
batch posts all of its rows or none."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walletctl.core import assets, bulk, posting
from walletctl.core.bulk import BulkRow
from walletctl.errors import (
    AssetNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    UserNotFound,
    WalletError,
)

from .cli_helpers import Cli
from .conftest import truncate_everything, with_user
from .helpers import assert_ledger_consistent, balance_of

Conn = psycopg.Connection[Any]
USERS = ["ann", "ben"]
OUTCOME_OF = {
    InsufficientFunds: "insufficient",
    UserNotFound: "not_found",
    IdempotencyConflict: "conflict",
    AssetNotFound: "invalid",
}

request = st.tuples(
    st.sampled_from(["topup", "bonus", "spend"]),
    st.sampled_from(USERS),
    st.sampled_from(["GOLD", "GOLD", "NOPE"]),
    st.integers(1, 300),
    st.sampled_from([f"k{index}" for index in range(8)]),
)


def _ledger(conn: Conn) -> list[tuple[Any, ...]]:
    """The ledger without what differs by nature between two runs (times)."""
    return conn.execute(
        """
        SELECT t.id, t.kind, a.external_id, t.amount, t.idempotency_key, t.reason, t.actor,
               t.on_behalf_of, e.amount, e.balance_after, b.balance
        FROM transactions t
        JOIN accounts a ON a.id = t.account_id
        JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
        JOIN balances b ON b.account_id = t.account_id AND b.asset_id = t.asset_id
        ORDER BY t.id
        """
    ).fetchall()


def _single(conn: Conn, kind: str, user: str, asset: str, amount: int, key: str) -> tuple[Any, ...]:
    try:
        receipt = posting.post(
            conn,
            kind,
            user,
            amount,
            asset=asset,
            idempotency_key=key,
            reason="r",  # type: ignore[arg-type]
            on_behalf_of="same",
        )
    except WalletError as error:
        prior = error.transaction_id if isinstance(error, IdempotencyConflict) else None
        return (OUTCOME_OF[type(error)], prior, None, str(error))
    outcome = "replayed" if receipt.replayed else "posted"
    return (outcome, receipt.transaction_id, receipt.balance_after, None)


def _batch(conn: Conn, kind: str, user: str, asset: str, amount: int, key: str) -> tuple[Any, ...]:
    row = BulkRow(1, user, amount, asset, key, "r")
    (outcome,) = bulk.post_rows(conn, kind, [row], on_behalf_of="same")  # type: ignore[arg-type]
    return (outcome.outcome, outcome.transaction_id, outcome.balance_after, outcome.detail)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=st.lists(request, min_size=1, max_size=12))
def test_single_postings_and_batches_of_one_give_the_same_ledger_and_receipts(
    clean_db: str, ops_url: str, requests: list[tuple[Any, ...]]
) -> None:
    results = {}
    for path, post in (("single", _single), ("batch", _batch)):
        truncate_everything(clean_db)
        with psycopg.connect(ops_url, autocommit=True) as conn:
            assets.add_asset(conn, "GOLD", "Gold Coins")
            receipts = [post(conn, *one) for one in requests]
            results[path] = (receipts, _ledger(conn))
    single_receipts, single_ledger = results["single"]
    batch_receipts, batch_ledger = results["batch"]
    for single, batched in zip(single_receipts, batch_receipts, strict=True):
        assert single[:3] == batched[:3]
        if single[3] is not None:  # the same refusal, in the same words
            assert batched[3] is not None and single[3].startswith(batched[3]), (single, batched)
    assert single_ledger == batch_ledger


def _rows(*rows: tuple[str, int, str]) -> list[BulkRow]:
    return [
        BulkRow(line, user, amount, "GOLD", key, "r")
        for line, (user, amount, key) in enumerate(rows, start=1)
    ]


def test_a_batch_that_repeats_a_line_number_is_refused(conn: Conn) -> None:
    rows = [BulkRow(7, "ann", 5, "GOLD", "a", "r"), BulkRow(7, "ben", 5, "GOLD", "b", "r")]
    with pytest.raises(InvalidInput, match="line numbers"):
        list(bulk.post_rows(conn, "topup", rows))
    assert conn.execute("SELECT count(*) FROM transactions").fetchone() == (0,)


def test_an_atomic_batch_posts_every_row_or_none(conn: Conn) -> None:
    list(bulk.post_rows(conn, "topup", _rows(("ann", 100, "f1"), ("ben", 10, "f2"))))
    spends = _rows(("ann", 60, "s1"), ("ben", 5, "s2"), ("ben", 50, "s3"))
    with pytest.raises(InsufficientFunds, match="line 3"):
        list(bulk.post_rows(conn, "spend", spends, atomic=True))
    assert (balance_of(conn, "ann"), balance_of(conn, "ben")) == (100, 10)
    outcomes = list(bulk.post_rows(conn, "spend", spends[:2], atomic=True))
    assert [o.outcome for o in outcomes] == ["posted", "posted"]
    assert (balance_of(conn, "ann"), balance_of(conn, "ben")) == (40, 5)
    assert_ledger_consistent(conn)


def test_atomic_batches_in_opposite_orders_never_deadlock(conn: Conn, connect: Any) -> None:
    users = [f"u{index:02}" for index in range(20)]
    list(bulk.post_rows(conn, "topup", _rows(*((u, 1000, f"fund-{u}") for u in users))))
    errors: list[BaseException] = []

    def run(order: list[str], tag: str) -> None:
        worker = connect()
        try:
            for round_number in range(15):
                rows = _rows(*((u, 1, f"{tag}-{round_number}-{u}") for u in order))
                list(bulk.post_rows(worker, "spend", rows, atomic=True))
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(users, "up")),
        threading.Thread(target=run, args=(users[::-1], "down")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(balance_of(conn, u) == 1000 - 30 for u in users)
    assert_ledger_consistent(conn)


def test_atomic_files_through_the_cli(cli: Cli, tmp_path: Any, db: Conn) -> None:
    file = tmp_path / "spends.csv"
    cli("topup", "ann", "100", "--key", "f")
    file.write_text("user,amount,key\nann,60,a\nann,60,b\n")
    refused = cli("spend", "--file", str(file), "--atomic")
    assert refused.exit_code == 3, refused.output
    assert "line 3" in refused.output
    assert db.execute("SELECT count(*) FROM transactions").fetchone() == (1,)
    file.write_text("user,amount,key\nann,60,a\nann,40,b\n")
    assert cli("spend", "--file", str(file), "--atomic").exit_code == 0
    assert balance_of(db, "ann") == 0
    assert cli("spend", "--file", str(file), "--atomic", "--skip-invalid").exit_code == 2


def test_a_lock_timeout_is_busy_and_retrying_is_safe(
    conn: Conn, connect: Any, clean_db: str, ops_role: str
) -> None:
    posting.topup(conn, "ann", 100, asset="GOLD", idempotency_key="t")
    holder = connect()
    with holder.transaction():
        posting.spend(holder, "ann", 1, asset="GOLD", idempotency_key="hold")
        result = Cli(with_user(clean_db, ops_role), env={"PGOPTIONS": "-c lock_timeout=200"})(
            "spend", "ann", "5", "--key", "retry-me"
        )
        assert result.exit_code == 11, result.output
        assert "retrying with the same" in result.output
    retried = Cli(with_user(clean_db, ops_role))("spend", "ann", "5", "--key", "retry-me")
    assert retried.exit_code == 0
    assert balance_of(conn, "ann") == 94
