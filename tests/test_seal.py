"""Sealed history: checkpoints chain up, reconcile checks what is new, and tampering with
sealed rows is caught and named."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from walletctl.core import assets, checkpoints, posting, seal
from walletctl.core.reconcile import reconcile
from walletctl.errors import ConcurrentRun

from .cli_helpers import Cli
from .conftest import through_pgbouncer_too

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def _post_some(conn: Conn, prefix: str, count: int = 30) -> list[int]:
    ids = []
    for index in range(count):
        user = f"user-{index % 7}"
        ids.append(
            posting.topup(
                conn, user, 100 + index, idempotency_key=f"{prefix}t{index}", **OPS
            ).transaction_id
        )
        if index % 3 == 0:
            ids.append(
                posting.spend(
                    conn, user, 50, idempotency_key=f"{prefix}s{index}", **OPS
                ).transaction_id
            )
    return ids


def _checks(report: Any) -> dict[str, Any]:
    return {check.name: check for check in report.checks}


def _tamper(url: str, sql: str) -> None:
    """What a superuser with psql could do: switch the guards off, change history. Its
    session's counts of updated and deleted rows reach PostgreSQL's statistics before this
    returns (a backend flushes them at most once a second, or when it exits, after the
    client has moved on), so the reconcile that follows cannot race them."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute(sql)
        admin.execute("SELECT pg_stat_force_next_flush()")
        admin.execute("SELECT 1")  # flushed before this statement's answer


@through_pgbouncer_too
def test_seal_chains_checkpoints_and_reconcile_goes_incremental(conn: Conn) -> None:
    first_ids = _post_some(conn, "a")
    first = seal.seal(conn)
    assert first is not None
    assert first.horizon == max(first_ids) and first.transactions == len(first_ids)
    assert first.entries == 2 * len(first_ids) and first.previous_id is None
    assert seal.seal(conn) is None  # nothing new

    second_ids = _post_some(conn, "b")
    report = reconcile(conn)
    assert report.passed and report.mode == "incremental" and report.horizon == first.horizon
    assert _checks(report)["zero_sum_per_transaction"].checked == len(second_ids)

    second = seal.seal(conn)
    assert second is not None
    assert second.previous_id == first.id and second.previous_hash == first.hash
    assert second.previous_horizon == first.horizon
    assert checkpoints.verify_chain(conn) == []
    checked, mismatches = checkpoints.verify_history(conn)
    assert mismatches == [] and checked >= len(first_ids) + len(second_ids)
    assert reconcile(conn, full=True).passed


@through_pgbouncer_too
def test_editing_a_sealed_amount_is_named_by_checkpoint_and_transaction(
    conn: Conn, clean_db: str, routed: Callable[[str], str]
) -> None:
    ids = _post_some(conn, "a")
    checkpoint = seal.seal(conn)
    assert checkpoint is not None
    _post_some(conn, "b")
    victim = ids[5]
    _tamper(
        clean_db,
        f"UPDATE ledger_entries SET amount = amount + 1 WHERE transaction_id = "
        f"{victim} AND account_id <> 0",
    )

    result = Cli(routed(clean_db))("reconcile", "--json")
    assert result.exit_code == 7
    body = json.loads(result.stdout)
    sealed = {check["check"]: check for check in body["checks"]}["sealed_history_unchanged"]
    assert sealed["status"] == "FAIL"
    assert (
        f"checkpoint {checkpoint.id}: transaction(s) {victim} no longer match"
        in (sealed["examples"])
    )
    assert "tripwire" in result.stderr


@through_pgbouncer_too
def test_a_consistent_rewrite_of_history_is_still_caught(conn: Conn, clean_db: str) -> None:
    """Both entries, the transaction and the balances changed together: every invariant
    still holds, only the seal knows."""
    ids = _post_some(conn, "a", count=10)
    checkpoint = seal.seal(conn)
    assert checkpoint is not None
    victim = ids[0]
    _tamper(
        clean_db,
        f"""
        UPDATE transactions SET amount = amount + 1000 WHERE id = {victim};
        UPDATE ledger_entries SET amount = amount + 1000 WHERE transaction_id = {victim}
            AND account_id <> 0;
        UPDATE ledger_entries SET amount = amount - 1000 WHERE transaction_id = {victim}
            AND account_id = 0;
        UPDATE ledger_entries SET balance_after = balance_after + 1000
            WHERE account_id = (SELECT account_id FROM transactions WHERE id = {victim})
              AND id >= (SELECT min(id) FROM ledger_entries WHERE transaction_id = {victim});
        UPDATE balances SET balance = balance + 1000
            WHERE account_id = (SELECT account_id FROM transactions WHERE id = {victim});
    """,
    )
    report = reconcile(conn, full=True)
    checks = _checks(report)
    assert [name for name, check in checks.items() if not check.passed] == [
        "sealed_history_unchanged"
    ]
    (example,) = checks["sealed_history_unchanged"].examples
    named = example.split("transaction(s) ")[1].split(" no longer match")[0].split(", ")
    # The victim first, then the later entries of its user, whose balance_after changed.
    assert named[0] == str(victim), example


@through_pgbouncer_too
def test_deleting_a_sealed_transaction_is_caught(conn: Conn, clean_db: str) -> None:
    ids = _post_some(conn, "a", count=10)
    assert seal.seal(conn) is not None
    _tamper(
        clean_db,
        f"DELETE FROM ledger_entries WHERE transaction_id = {ids[3]}; "
        f"DELETE FROM transactions WHERE id = {ids[3]}",
    )
    report = reconcile(conn)
    sealed = _checks(report)["sealed_history_unchanged"]
    assert not sealed.passed
    assert "sealed, " in sealed.examples[0]


@through_pgbouncer_too
def test_truncating_the_ledger_trips_the_wire(conn: Conn, clean_db: str) -> None:
    _post_some(conn, "a", count=5)
    assert seal.seal(conn) is not None
    _tamper(clean_db, "TRUNCATE ledger_entries, transactions CASCADE")
    report = reconcile(conn)
    assert not _checks(report)["sealed_history_unchanged"].passed
    assert any("truncated or rewritten" in note for note in report.notes)


@through_pgbouncer_too
def test_editing_a_stored_checkpoint_breaks_the_chain(conn: Conn, clean_db: str) -> None:
    _post_some(conn, "a", count=5)
    assert seal.seal(conn) is not None
    _post_some(conn, "b", count=5)
    assert seal.seal(conn) is not None
    _tamper(clean_db, "UPDATE seal_blocks SET digest = sha256('forged') WHERE checkpoint_id = 1")
    problems = checkpoints.verify_chain(conn)
    assert problems and "checkpoint 1" in problems[0]
    assert not reconcile(conn).passed


@through_pgbouncer_too
def test_incremental_reconcile_checks_new_rows_and_all_totals(conn: Conn, clean_db: str) -> None:
    _post_some(conn, "a", count=10)
    assert seal.seal(conn) is not None
    new_ids = _post_some(conn, "b", count=4)
    # A new entry edited: caught by the incremental passes (no seal covers it yet).
    _tamper(
        clean_db,
        f"UPDATE ledger_entries SET amount = amount + 3 WHERE transaction_id = "
        f"{new_ids[-1]} AND account_id = 0",
    )
    report = reconcile(conn)
    assert report.mode == "incremental"
    assert not _checks(report)["zero_sum_per_transaction"].passed


@through_pgbouncer_too
def test_a_drifted_cache_of_an_untouched_user_fails_the_asset_totals(
    conn: Conn, clean_db: str
) -> None:
    _post_some(conn, "a", count=10)
    assert seal.seal(conn) is not None
    _tamper(
        clean_db,
        "UPDATE balances SET balance = balance + 7 WHERE account_id = "
        "(SELECT min(account_id) FROM balances)",
    )
    report = reconcile(conn)
    assert report.mode == "incremental"
    assert not _checks(report)["cached_balances_match_ledger"].passed


@through_pgbouncer_too
def test_seal_waits_for_a_posting_in_flight_below_the_horizon(
    conn: Conn, clean_db: str, connect: Any
) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    slow = connect()
    slow.execute("BEGIN")
    held = slow.execute(
        "SELECT transaction_id FROM walletctl_post('topup', 'bob', 'GOLD', 5, 'slow', NULL, 'x')"
    ).fetchone()
    later = posting.topup(conn, "carol", 7, idempotency_key="later", **OPS)
    assert held is not None and held[0] < later.transaction_id

    result: dict[str, Any] = {}
    sealer = threading.Thread(
        target=lambda: result.update(cp=seal.seal(connect(), wait_seconds=20))
    )
    sealer.start()
    time.sleep(0.5)
    assert sealer.is_alive(), "seal must wait for the posting holding a lower id"
    slow.execute("COMMIT")
    sealer.join(timeout=30)
    checkpoint = result["cp"]
    assert checkpoint.horizon == later.transaction_id
    assert checkpoint.transactions == 3
    assert checkpoints.verify_history(conn)[1] == []


@through_pgbouncer_too
def test_seal_gives_up_on_a_posting_that_stays_in_flight(conn: Conn, connect: Any) -> None:
    slow = connect()
    slow.execute("BEGIN")
    slow.execute("SELECT walletctl_post('topup', 'bob', 'GOLD', 5, 'slow', NULL, 'x')")
    posting.topup(conn, "carol", 7, idempotency_key="later", **OPS)
    with pytest.raises(ConcurrentRun, match="still running"):
        seal.seal(conn, wait_seconds=0.3)
    slow.execute("ROLLBACK")


@through_pgbouncer_too
def test_seal_waits_for_a_posting_with_a_lower_id_but_a_later_xid(conn: Conn, connect: Any) -> None:
    # T1 takes its xid after T2 but draws the lower transaction id; T2 commits. The
    # snapshot then lists no running transaction below its xmax (T1's xid is above it), yet
    # T1 may still commit an id below the horizon: the seal must wait for it all the same.
    first, second = connect(), connect()
    second.execute("BEGIN")
    second.execute("SELECT pg_current_xact_id()")
    first.execute("BEGIN")
    first.execute("SELECT walletctl_post('topup', 'bob', 'GOLD', 5, 'lower-id', NULL, 'x')")
    second.execute("SELECT walletctl_post('topup', 'carol', 'GOLD', 7, 'higher-id', NULL, 'x')")
    second.execute("COMMIT")
    with pytest.raises(ConcurrentRun, match="still running"):
        seal.seal(conn, wait_seconds=0.3)
    first.execute("COMMIT")
    checkpoint = seal.seal(conn, wait_seconds=5)
    assert checkpoint is not None and checkpoint.transactions == 2
    assert reconcile(conn).passed


def test_a_long_transaction_in_another_database_does_not_hold_the_seal(
    conn: Conn, server_url: str
) -> None:
    # It cannot write this ledger, so the seal does not wait for it (on a shared server a
    # reporting job elsewhere would otherwise block every seal).
    posting.topup(conn, "carol", 7, idempotency_key="c1", **OPS)
    with psycopg.connect(server_url) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")  # holds an xid, stays open
        with psycopg.connect(server_url, autocommit=True) as later:  # a later xid completes,
            later.execute("SELECT pg_current_xact_id()")  # so the snapshot lists the open one
        checkpoint = seal.seal(conn, wait_seconds=0.3)
        elsewhere.rollback()
    assert checkpoint is not None and checkpoint.transactions == 1


@through_pgbouncer_too
def test_seal_cli_refuses_to_seal_a_broken_ledger(
    clean_db: str, routed: Callable[[str], str]
) -> None:
    cli = Cli(routed(clean_db))
    cli("asset", "add", "GOLD", "Gold Coins")
    cli("topup", "alice", "10")
    sealed = cli("seal", "--json")
    assert sealed.exit_code == 0, sealed.stderr
    assert json.loads(sealed.stdout)["sealed_through"] >= 1
    assert "keep the hash" in sealed.stderr
    assert json.loads(cli("seal", "--json").stdout) == {"checkpoint": None}
    cli("topup", "alice", "5")
    _tamper(clean_db, "UPDATE balances SET balance = balance + 1")
    refused = cli("seal")
    assert refused.exit_code == 7 and "refused" in refused.stderr


CORRUPTIONS = [
    ("ledger_entries", "amount", "amount + 1"),
    ("ledger_entries", "amount", "-amount"),
    ("ledger_entries", "balance_after", "balance_after + 1"),
    ("ledger_entries", "account_id", "CASE WHEN account_id = 0 THEN 0 ELSE account_id + 1 END"),
    ("ledger_entries", "transaction_id", "transaction_id + 1"),
    ("ledger_entries", "asset_id", "2"),
    ("transactions", "amount", "amount + 1"),
    ("transactions", "kind", "CASE kind WHEN 'spend' THEN 'topup' ELSE 'spend' END"),
    ("transactions", "account_id", "account_id + 1"),
    ("transactions", "asset_id", "2"),
    ("balances", "balance", "balance + 1"),
    ("balances", "balance", "balance - 1"),
]


@pytest.mark.parametrize(("table", "column", "value"), CORRUPTIONS)
def test_any_single_corruption_fails_the_full_reconcile(
    conn: Conn, clean_db: str, table: str, column: str, value: str
) -> None:
    assets.add_asset(conn, "POINTS", "Points")
    ids = _post_some(conn, "a", count=12)
    posting.reverse(conn, ids[4], idempotency_key="rev", on_behalf_of="ops", reason="x")
    healthy = reconcile(conn, full=True)
    assert healthy.passed and healthy.method == "fingerprint"
    key = (
        "transaction_id"
        if table == "ledger_entries"
        else ("id" if table == "transactions" else "account_id")
    )
    victim = ids[7] if key != "account_id" else 2
    _tamper(
        clean_db,
        f"UPDATE {table} SET {column} = {value} WHERE {key} = {victim} AND "
        f"ctid = (SELECT min(ctid) FROM {table} WHERE {key} = {victim})",
    )
    report = reconcile(conn, full=True)
    assert not report.passed
    # Every failing check names what fails (the exact pass runs when a shape is off).
    assert all(check.examples for check in report.failed), report.failed


def test_the_sql_api_cannot_seal_below_a_posting_in_flight(
    conn: Conn, connect: Any, db: Conn
) -> None:
    """A walletctl_batch login calling the SQL API itself, not `walletctl seal`: it seals
    only a ticket the database recorded (the horizon and the postings then in flight), and
    only once each of those postings has ended before its snapshot. It cannot forge or edit
    a ticket."""
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    slow = connect()
    slow.execute("BEGIN")
    slow.execute("SELECT walletctl_post('topup', 'late', 'GOLD', 7, 'late', NULL, 'x')")
    later = posting.topup(conn, "ontime", 3, idempotency_key="ontime", **OPS)
    ticket = conn.execute("SELECT ticket, horizon, writers FROM walletctl_seal_ticket()").fetchone()
    assert ticket is not None and ticket[1] == later.transaction_id and len(ticket[2]) == 1
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="had not ended"):
        conn.execute(f"SELECT * FROM walletctl_seal({int(ticket[0])})")
    for forgery in (
        "INSERT INTO seal_tickets (horizon, writers, requested_by) VALUES (99, '{}', 'x')",
        f"UPDATE seal_tickets SET writers = '{{}}' WHERE id = {int(ticket[0])}",
        "SELECT * FROM seal_tickets",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(forgery)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no seal ticket"):
        conn.execute("SELECT * FROM walletctl_seal(424242)")
    slow.execute("COMMIT")
    sealed = conn.execute(f"SELECT horizon FROM walletctl_seal({int(ticket[0])})").fetchone()
    assert sealed == (later.transaction_id,)
    assert reconcile(conn).passed
    assert db.execute("SELECT requested_by FROM seal_tickets").fetchall() == [(conn.info.user,)]


def test_a_ticket_sees_every_posting_in_flight_whatever_its_transaction_read_before(
    conn: Conn, connect: Any
) -> None:
    """pg_stat_activity is copied once per transaction: a ticket built from it, in a
    transaction that had read it before the posting began, would list no writer. And in a
    REPEATABLE READ transaction the horizon would come from an older snapshot than the
    writers: refused."""
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    sealer = connect()
    sealer.execute("BEGIN")
    sealer.execute("SELECT count(*) FROM pg_stat_activity")
    slow = connect()
    slow.execute("BEGIN")
    slow.execute("SELECT walletctl_post('topup', 'late', 'GOLD', 7, 'late', NULL, 'x')")
    later = posting.topup(conn, "ontime", 3, idempotency_key="ontime", **OPS)
    ticket = sealer.execute(
        "SELECT ticket, horizon, writers FROM walletctl_seal_ticket()"
    ).fetchone()
    sealer.execute("COMMIT")
    assert ticket is not None and ticket[1] == later.transaction_id and len(ticket[2]) == 1
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute(f"SELECT * FROM walletctl_seal({int(ticket[0])})")
    slow.execute("COMMIT")

    sealer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    sealer.execute("SELECT 1")
    with pytest.raises(psycopg.Error, match="READ COMMITTED") as refused:
        sealer.execute("SELECT * FROM walletctl_seal_ticket()")
    assert refused.value.sqlstate == "WL023"
    sealer.execute("ROLLBACK")
