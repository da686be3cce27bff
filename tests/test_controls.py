"""Operator controls, enforced by the database for the identity that logged in: frozen
users, daily issuance budgets, four-eyes approval. Each test logs in as distinct login
roles (create_login_role), as a deployment would, and goes through the SQL API or the core;
the CLI's part is in tests/test_controls_cli.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from walletctl.core import assets, bulk, policy, posting
from walletctl.errors import (
    AlreadyDecided,
    ApprovalRequired,
    BudgetExceeded,
    InvalidInput,
    NotPermitted,
    RequestExpired,
    UserFrozen,
)

from .conftest import create_login_role, drop_login_role, with_user
from .helpers import assert_ledger_consistent, ledger_snapshot

Conn = psycopg.Connection[Any]


def sqlstate(code: str) -> Any:
    """Expect a database error with this SQLSTATE (walletctl's own WL codes included)."""
    return pytest.raises(psycopg.Error, check=lambda exc: exc.sqlstate == code)


PEOPLE = {
    "admin": ("admin",),
    "op1": ("operator", "batch", "finance"),
    "op2": ("operator",),
    "appr1": ("approver",),
    "appr2": ("approver",),
    "opappr": ("operator", "approver"),
}


@pytest.fixture(scope="module")
def people(server_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """Login roles: an admin, two operators, two approvers, one operator who approves."""
    suffix = uuid.uuid4().hex[:6]
    names = {who: f"walletctl_test_{who}_{suffix}" for who in PEOPLE}
    for who, kinds in PEOPLE.items():
        create_login_role(server_url, names[who], *kinds)
    yield names
    for name in names.values():
        drop_login_role(server_url, name)


@pytest.fixture
def login(clean_db: str, people: dict[str, str]) -> Iterator[Callable[[str], Conn]]:
    """Open an autocommit connection as one of ``people``; all are closed at the end."""
    opened: list[Conn] = []

    def open_as(who: str) -> Conn:
        connection = psycopg.connect(with_user(clean_db, people[who]), autocommit=True)
        opened.append(connection)
        return connection

    yield open_as
    for connection in opened:
        connection.close()


@pytest.fixture
def gold(superuser_db: Conn) -> Conn:
    """GOLD exists; alice holds 100 GOLD (transaction 1, posted by a superuser)."""
    assets.add_asset(superuser_db, "GOLD", "Gold Coins")
    posting.topup(superuser_db, "alice", 100, asset="GOLD", idempotency_key="seed", reason="s")
    return superuser_db


# Frozen users.


def test_a_frozen_user_can_neither_spend_nor_be_credited_but_a_reversal_posts(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    admin, op = login("admin"), login("op1")
    credit = posting.topup(op, "alice", 50, asset="GOLD", idempotency_key="before")
    record = policy.freeze(admin, "alice", "chargeback under investigation")
    assert (record.frozen, record.actor) == (True, people["admin"])

    before = ledger_snapshot(gold)
    with pytest.raises(UserFrozen, match="alice is frozen"):
        posting.spend(op, "alice", 10, asset="GOLD", idempotency_key="s1")
    with pytest.raises(UserFrozen):
        posting.topup(op, "alice", 10, asset="GOLD", idempotency_key="t1")
    with pytest.raises(UserFrozen):
        posting.bonus(op, "alice", 10, asset="GOLD", idempotency_key="b1", reason="promo")
    # The same refusals when called as raw SQL, and through a batch.
    with sqlstate("WL015"):
        op.execute("SELECT * FROM walletctl_post('spend', 'alice', 'GOLD', 1, 'raw', NULL)")
    outcomes = list(
        bulk.post_rows(
            op, "spend", [bulk.BulkRow(1, "alice", 5, "GOLD", "bulk-1", None)], on_behalf_of="test"
        )
    )
    assert [(o.outcome, "frozen" in (o.detail or "")) for o in outcomes] == [("invalid", True)]
    assert ledger_snapshot(gold) == before

    # A replay of what was posted before the freeze still replays; a reversal still posts.
    assert posting.topup(op, "alice", 50, asset="GOLD", idempotency_key="before").replayed
    reversal = posting.reverse(op, credit.transaction_id, idempotency_key="r1", reason="fraud")
    assert reversal.balance_after == 100

    policy.unfreeze(admin, "alice", "cleared")
    assert posting.spend(op, "alice", 10, asset="GOLD", idempotency_key="s2").balance_after == 90
    assert [(f.frozen, f.actor) for f in policy.freezes(op, "alice")] == [
        (True, people["admin"]),
        (False, people["admin"]),
    ]
    assert_ledger_consistent(gold)


def test_only_an_admin_may_change_policy_and_policy_is_append_only(
    gold: Conn, login: Callable[[str], Conn]
) -> None:
    admin = login("admin")
    policy.set_approval(admin, "GOLD", 1000)
    for who in ("op1", "appr1"):
        conn = login(who)
        for call in (
            lambda c: policy.freeze(c, "alice", "x"),
            lambda c: policy.set_budget(c, "walletctl_operator", "GOLD", 5),
            lambda c: policy.set_approval(c, "GOLD", None),
        ):
            with pytest.raises(NotPermitted, match="walletctl_admin"):
                call(conn)
        for table in ("asset_policies", "user_freezes", "issuance_budgets", "issuance_usage"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"DELETE FROM {table}")
    # Not even the superuser (with triggers on) may edit or delete a policy record.
    for statement in ("UPDATE asset_policies SET approve_above = NULL", "DELETE FROM user_freezes"):
        with sqlstate("WL010"), gold.transaction():
            gold.execute(statement)


# Issuance budgets.


def test_a_budget_refuses_what_exceeds_it_and_says_what_remains(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    admin, op, other = login("admin"), login("op1"), login("op2")
    policy.set_budget(admin, people["op1"], "GOLD", 100)
    posting.topup(op, "bob", 60, asset="GOLD", idempotency_key="b1")
    posting.spend(op, "alice", 30, asset="GOLD", idempotency_key="sp")  # spends issue nothing
    with pytest.raises(BudgetExceeded, match="40 remains") as refused:
        posting.bonus(op, "bob", 41, asset="GOLD", idempotency_key="b2", reason="promo")
    assert refused.value.remaining == 40
    assert posting.topup(op, "bob", 60, asset="GOLD", idempotency_key="b1").replayed  # free
    posting.bonus(op, "bob", 40, asset="GOLD", idempotency_key="b3", reason="promo")
    posting.topup(other, "bob", 500, asset="GOLD", idempotency_key="o1")  # not op1's budget
    # A batch over the budget is refused whole.
    with pytest.raises(BudgetExceeded):
        list(
            bulk.post_rows(
                op,
                "topup",
                [bulk.BulkRow(1, "carol", 1, "GOLD", "bulk-1", None)],
                on_behalf_of="test",
            )
        )
    [shown] = [b for b in policy.budgets(op) if b.role == people["op1"]]
    assert (shown.daily_limit, shown.used_today, shown.remaining) == (100, 100, 0)
    assert_ledger_consistent(gold)


def test_a_group_budget_is_shared_by_its_members(gold: Conn, login: Callable[[str], Conn]) -> None:
    admin, op1, op2 = login("admin"), login("op1"), login("op2")
    policy.set_budget(admin, "walletctl_operator", "GOLD", 10)
    posting.topup(op1, "bob", 6, asset="GOLD", idempotency_key="k1")
    with pytest.raises(BudgetExceeded, match="4 remains"):
        posting.topup(op2, "bob", 5, asset="GOLD", idempotency_key="k2")
    policy.set_budget(admin, "walletctl_operator", "GOLD", None)  # removed
    posting.topup(op2, "bob", 5, asset="GOLD", idempotency_key="k2")


def test_sixteen_concurrent_postings_by_one_operator_never_exceed_its_budget(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    budget, amount, clients, per_client = 1000, 7, 16, 12
    policy.set_budget(login("admin"), people["op1"], "GOLD", budget)
    connections = [login("op1") for _ in range(clients)]
    start = threading.Barrier(clients)
    refused = [0] * clients
    failures: list[Exception] = []

    def work(index: int) -> None:
        start.wait()
        for n in range(per_client):
            try:
                # Single postings and batches of two, to many users and one hot user.
                if n % 3 == 2:
                    rows = [
                        bulk.BulkRow(1, f"u{index}", amount, "GOLD", f"b{index}-{n}-1", None),
                        bulk.BulkRow(2, "hot", amount, "GOLD", f"b{index}-{n}-2", None),
                    ]
                    list(bulk.post_rows(connections[index], "topup", rows, on_behalf_of="test"))
                else:
                    user = "hot" if n % 2 else f"u{index}"
                    posting.topup(
                        connections[index],
                        user,
                        amount,
                        asset="GOLD",
                        idempotency_key=f"{index}-{n}",
                    )
            except BudgetExceeded:
                refused[index] += 1
            except Exception as exc:  # a deadlock or anything else fails the test below
                failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    issued = gold.execute(
        "SELECT coalesce(sum(amount), 0) FROM transactions WHERE actor = %s AND kind = 'topup'",
        (people["op1"],),
    ).fetchone()
    used = gold.execute(
        "SELECT used FROM issuance_usage WHERE role = %s", (people["op1"],)
    ).fetchone()
    assert failures == []
    assert issued is not None and used is not None
    assert issued[0] == used[0]  # the counter says exactly what was issued
    assert budget - amount < issued[0] <= budget  # filled up to the budget, never past it
    assert sum(refused) > 0
    assert_ledger_consistent(gold)


# Four-eyes approval.


def _file_request(op: Conn, key: str = "big-1", amount: int = 5000) -> int:
    with pytest.raises(ApprovalRequired):
        posting.topup(op, "bob", amount, asset="GOLD", idempotency_key=key)
    filed = policy.request_credit(op, "topup", "bob", amount, asset="GOLD", idempotency_key=key)
    assert not filed.replayed
    return filed.request_id


def test_an_operator_cannot_approve_its_own_request_even_with_raw_sql(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    policy.set_approval(login("admin"), "GOLD", 1000)
    requester = login("opappr")  # an operator who is also an approver
    before = ledger_snapshot(gold)
    with sqlstate("WL017"):
        requester.execute(
            "SELECT * FROM walletctl_post('topup', 'bob', 'GOLD', 5000, 'raw-big', NULL)"
        )
    assert ledger_snapshot(gold) == before
    request_id = _file_request(requester)
    with pytest.raises(NotPermitted, match="four eyes"):
        policy.approve(requester, request_id)
    with sqlstate("WL019"):
        requester.execute("SELECT * FROM walletctl_approve_request(%s)", (request_id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # an operator is no approver
        login("op2").execute("SELECT * FROM walletctl_approve_request(%s)", (request_id,))
    # The internal writers stay out of reach.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        requester.execute("SELECT walletctl_charge_issuance('x', 'GOLD', -5, now())")
    assert gold.execute("SELECT count(*) FROM transactions").fetchone() == (1,)

    receipt = policy.approve(login("appr1"), request_id, reason="checked the invoice")
    assert (receipt.amount, receipt.actor, receipt.idempotency_key) == (
        5000,
        people["appr1"],
        "big-1",
    )
    assert receipt.on_behalf_of == people["opappr"]
    shown = policy.show_request(requester, request_id)
    assert (shown.status, shown.decided_by, shown.transaction_id) == (
        "approved",
        people["appr1"],
        receipt.transaction_id,
    )
    # The requester's retry of its original posting now replays the approved posting.
    assert posting.topup(requester, "bob", 5000, asset="GOLD", idempotency_key="big-1").replayed


def test_two_approvers_racing_on_one_request_post_it_once(
    gold: Conn, login: Callable[[str], Conn]
) -> None:
    policy.set_approval(login("admin"), "GOLD", 1000)
    request_id = _file_request(login("op1"))
    approvers = [login("appr1"), login("appr2")] * 4
    start = threading.Barrier(len(approvers))
    receipts: list[Any] = [None] * len(approvers)

    def work(index: int) -> None:
        start.wait()
        try:
            receipts[index] = policy.approve(approvers[index], request_id)
        except Exception as exc:  # fails the test below
            receipts[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(approvers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.transaction_id for r in receipts}) == 1
    assert sorted(r.replayed for r in receipts) == [False] + [True] * (len(approvers) - 1)
    assert gold.execute(
        "SELECT count(*), sum(amount) FROM transactions WHERE idempotency_key = 'big-1'"
    ).fetchone() == (1, 5000)
    assert_ledger_consistent(gold)


def test_rejection_expiry_and_budgets_of_requests(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    admin, op, approver = login("admin"), login("op1"), login("appr1")
    policy.set_approval(admin, "GOLD", 1000)
    rejected = _file_request(op, "r1")
    decision = policy.reject(approver, rejected, reason="no invoice")
    assert (decision.decision, decision.decided_by) == ("rejected", people["appr1"])
    with pytest.raises(AlreadyDecided):
        policy.approve(login("appr2"), rejected)
    assert policy.show_request(op, rejected).status == "rejected"

    # Expired: made by hand as a superuser, as if a day had passed.
    expired = _file_request(op, "e1")
    gold.execute("SET session_replication_role = replica")
    gold.execute("UPDATE credit_requests SET expires_at = now() - interval '1 hour'")
    gold.execute("SET session_replication_role = DEFAULT")
    assert policy.show_request(op, expired).status == "expired"
    with pytest.raises(RequestExpired):
        policy.approve(approver, expired)
    with pytest.raises(NotPermitted):  # recording expiries is an approver's job
        policy.expire_requests(op)
    [recorded] = policy.expire_requests(approver)  # the rejected one stays rejected
    assert (recorded.request_id, recorded.decision, recorded.decided_by) == (
        expired,
        "expired",
        people["appr1"],
    )
    assert policy.expire_requests(approver) == []
    assert policy.show_request(op, expired).decided_by == people["appr1"]
    with pytest.raises(RequestExpired):
        policy.approve(approver, expired)

    # An approval counts against the requester's budget, not the approver's.
    policy.set_budget(admin, people["op1"], "GOLD", 6000)
    first = _file_request(op, "a1", 4000)
    second = _file_request(op, "a2", 4000)
    policy.approve(approver, first)
    with pytest.raises(BudgetExceeded, match="2000 remains"):
        policy.approve(approver, second)
    assert policy.show_request(op, second).status == "pending"
    with pytest.raises(InvalidInput, match="needs no approval"):
        policy.request_credit(op, "topup", "bob", 10, asset="GOLD", idempotency_key="small")
    assert_ledger_consistent(gold)


# The controls in force when a posting lands, not when it started (found by trying to break
# them: a posting that queued behind a lock, or held an old snapshot, landed after a freeze).


def _wait_until_blocked(watcher: Conn, blocked: Conn) -> None:
    pid = blocked.info.backend_pid
    for _ in range(500):
        row = watcher.execute("SELECT cardinality(pg_blocking_pids(%s))", (pid,)).fetchone()
        if row is not None and row[0] > 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the posting never waited for the lock")


def _change_policy(which: str, admin: Conn, people: dict[str, str]) -> None:
    if which == "freeze":
        policy.freeze(admin, "alice", "under investigation")
    elif which == "threshold":
        policy.set_approval(admin, "GOLD", 10)
    else:
        policy.set_budget(admin, people["op2"], "GOLD", 10)


EXPECTED_REFUSAL = {"freeze": "WL015", "threshold": "WL017", "budget": "WL016"}
LEDGER_TABLES = ("accounts", "balances", "transactions", "ledger_entries", "issuance_usage")


def _ledger(conn: Conn) -> dict[str, Any]:
    """The ledger's tables (not the policy records a test adds on purpose)."""
    return {table: rows for table, rows in ledger_snapshot(conn).items() if table in LEDGER_TABLES}


@pytest.mark.parametrize("which", ["freeze", "threshold", "budget"])
@pytest.mark.parametrize("path", ["single", "batch"])
def test_a_posting_queued_behind_a_lock_obeys_a_policy_committed_while_it_waited(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str], which: str, path: str
) -> None:
    holder, waiter, admin = (
        login("op1"),
        login("op2" if path == "single" else "op1"),
        login("admin"),
    )
    if which == "budget" and path == "batch":
        policy.set_budget(admin, people["op1"], "GOLD", 1_000_000)  # an asset with budgets...
        people = {**people, "op2": people["op1"]}  # ...and the new one binds the batch's role
    before = _ledger(gold)
    holder.execute("BEGIN")
    holder.execute("SELECT * FROM walletctl_post('spend', 'alice', 'GOLD', 1, 'hold', NULL)")
    outcome: list[Any] = []

    def post() -> None:
        try:
            if path == "single":
                waiter.execute(
                    "SELECT * FROM walletctl_post('topup', 'alice', 'GOLD', 50, 'late', 'x')"
                )
                outcome.append("posted")
            else:
                rows = waiter.execute(
                    "SELECT outcome, detail FROM walletctl_post_batch('topup', NULL, "
                    "ARRAY[1::bigint], ARRAY['alice'], ARRAY['GOLD'], ARRAY[50::bigint], "
                    "ARRAY['late'], ARRAY['x'])"
                ).fetchall()
                outcome.append(rows)
        except psycopg.Error as exc:
            outcome.append(exc.sqlstate)

    thread = threading.Thread(target=post)
    thread.start()
    _wait_until_blocked(admin, waiter)
    _change_policy(which, admin, people)
    holder.execute("ROLLBACK")
    thread.join(timeout=30)
    if path == "batch" and which != "budget":
        [(row_outcome, detail)] = outcome[0]
        assert row_outcome == "invalid"
        assert ("frozen" if which == "freeze" else "approval threshold") in detail
    else:
        assert outcome == [EXPECTED_REFUSAL[which]]
    assert _ledger(gold) == before


@pytest.mark.parametrize(
    "call",
    [
        "SELECT * FROM walletctl_post('topup', 'alice', 'GOLD', 5, 'rr', NULL)",
        "SELECT * FROM walletctl_post_batch('topup', NULL, ARRAY[1::bigint], ARRAY['alice'], "
        "ARRAY['GOLD'], ARRAY[5::bigint], ARRAY['rr'], ARRAY['x'])",
    ],
)
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_posting_in_an_old_snapshot_is_refused(
    gold: Conn, login: Callable[[str], Conn], call: str, isolation: str
) -> None:
    # In a REPEATABLE READ transaction begun before a freeze, the freeze is invisible: so
    # the posting functions refuse to run there at all.
    op = login("op1")
    before = _ledger(gold)
    op.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    op.execute("SELECT 1")
    policy.freeze(login("admin"), "alice", "under investigation")
    with sqlstate("WL023"):
        op.execute(call)
    op.execute("ROLLBACK")
    assert _ledger(gold) == before


def test_a_budget_is_charged_to_the_day_of_the_posting_not_of_its_transaction(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    policy.set_budget(login("admin"), people["op1"], "GOLD", 100)
    receipt = posting.topup(login("op1"), "bob", 60, asset="GOLD", idempotency_key="d1")
    day = gold.execute("SELECT (%s::timestamptz AT TIME ZONE 'UTC')::date", (receipt.created_at,))
    assert gold.execute("SELECT day, used FROM issuance_usage").fetchall() == [
        (day.fetchone()[0], 60)  # type: ignore[index]
    ]
    # A transaction that began yesterday and posts today is charged today: the day comes
    # from the posting's time, handed to the charge (here a day ahead, as a superuser).
    with gold.transaction():
        gold.execute(
            "SELECT walletctl_charge_issuance(%s, 'GOLD', 100, now() + interval '1 day')",
            (people["op1"],),
        )
        rows = gold.execute(
            "SELECT day - (now() AT TIME ZONE 'UTC')::date, used FROM issuance_usage ORDER BY day"
        ).fetchall()
        assert rows == [(0, 60), (1, 100)]
        raise psycopg.Rollback()


def test_a_requests_key_posts_only_through_its_approval(
    gold: Conn, login: Callable[[str], Conn]
) -> None:
    policy.set_approval(login("admin"), "GOLD", 1000)
    op, saboteur = login("op1"), login("op2")
    filed = policy.request_credit(op, "topup", "bob", 5000, asset="GOLD", idempotency_key="req")
    before = ledger_snapshot(gold)
    # Another posting with the request's key (a small one, below the threshold) would make
    # the approval conflict: refused, singly and in a batch.
    with sqlstate("WL005"):
        saboteur.execute("SELECT * FROM walletctl_post('topup', 'mallory', 'GOLD', 5, 'req', NULL)")
    [(outcome, transaction_id)] = op.execute(
        "SELECT outcome, transaction_id FROM walletctl_post_batch('topup', NULL, "
        "ARRAY[1::bigint], ARRAY['mallory'], ARRAY['GOLD'], ARRAY[5::bigint], ARRAY['req'], "
        "ARRAY['x'])"
    ).fetchall()
    assert (outcome, transaction_id) == ("conflict", None)
    # The same request sent again still needs the approval; filing it again replays it.
    with pytest.raises(ApprovalRequired):
        posting.topup(op, "bob", 5000, asset="GOLD", idempotency_key="req")
    assert policy.request_credit(
        op, "topup", "bob", 5000, asset="GOLD", idempotency_key="req"
    ).replayed
    assert ledger_snapshot(gold) == before
    receipt = policy.approve(login("appr1"), filed.request_id)
    assert (receipt.user_id, receipt.amount, receipt.replayed) == ("bob", 5000, False)


def test_an_approval_sent_after_the_expiry_is_late_whenever_its_transaction_began(
    gold: Conn, login: Callable[[str], Conn], people: dict[str, str]
) -> None:
    policy.set_approval(login("admin"), "GOLD", 1000)
    [(request_id,)] = gold.execute(
        "INSERT INTO credit_requests (kind, user_id, asset, amount, idempotency_key, "
        "requested_by, expires_at) VALUES ('topup', 'alice', 'GOLD', 5000, 'soon', %s, "
        "clock_timestamp() + interval '300 milliseconds') RETURNING id",
        (people["op1"],),
    ).fetchall()
    approver = login("appr1")
    approver.execute("BEGIN")
    approver.execute("SELECT 1")  # now() is fixed from here on
    approver.execute("SELECT pg_sleep(0.5)")
    with sqlstate("WL022"):
        approver.execute("SELECT * FROM walletctl_approve_request(%s)", (request_id,))
    approver.execute("ROLLBACK")


def test_a_batch_with_arrays_of_different_lengths_is_refused_and_creates_nobody(
    gold: Conn, login: Callable[[str], Conn]
) -> None:
    before = ledger_snapshot(gold)
    accounts = gold.execute("SELECT count(*) FROM accounts").fetchone()
    with sqlstate("22023"):
        login("op1").execute(
            "SELECT * FROM walletctl_post_batch('topup', NULL, ARRAY[1::bigint], "
            "ARRAY['new1', 'new2'], ARRAY['GOLD', 'GOLD'], ARRAY[5::bigint, 6::bigint], "
            "ARRAY['a1', 'a2'], ARRAY['x', 'x'])"
        )
    assert ledger_snapshot(gold) == before
    assert gold.execute("SELECT count(*) FROM accounts").fetchone() == accounts
