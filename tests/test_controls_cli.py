"""The operator controls through the CLI, each person logged in as its own login role: the
admin sets policy, the operator's large credit becomes a request, another person approves;
budgets and frozen users refuse with exit 8; the dry run shows what approval and budget
would do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .cli_helpers import Cli
from .conftest import create_login_role, drop_login_role, with_user
from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]
PEOPLE = {"admin": ("admin",), "op": ("operator", "finance"), "approver": ("approver",)}


@pytest.fixture(scope="module")
def people(server_url: str, database_url: str) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    names = {who: f"walletctl_test_cli_{who}_{suffix}" for who in PEOPLE}
    for who, kinds in PEOPLE.items():
        create_login_role(server_url, names[who], *kinds)
    yield names
    for name in names.values():
        drop_login_role(server_url, name)


@pytest.fixture
def as_(clean_db: str, people: dict[str, str], superuser_db: Conn) -> dict[str, Cli]:
    """A Cli per person, on an empty ledger with GOLD."""
    superuser_db.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
    return {who: Cli(with_user(clean_db, name)) for who, name in people.items()}


def test_four_eyes_through_the_cli(as_: dict[str, Cli], people: dict[str, str], db: Conn) -> None:
    admin, op, approver = as_["admin"], as_["op"], as_["approver"]
    assert op("policy", "set", "GOLD", "--approve-above", "1000").exit_code == 10
    result = admin("policy", "set", "GOLD", "--approve-above", "1,000")
    assert result.exit_code == 0, result.output

    before = ledger_snapshot(db)
    dry = op("topup", "bob", "5000", "--key", "big", "--yes", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would create a request awaiting approval" in dry.stderr
    assert ledger_snapshot(db) == before

    filed = op("topup", "bob", "5000", "--key", "big", "--yes", "--json")
    assert filed.exit_code == 0, filed.output
    request = json.loads(filed.stdout)
    first = str(request["request_id"])  # the dry run used an id too: sequences do not roll back
    assert f"request {first} created, awaiting approval" in filed.stderr
    assert request["status"] == "pending"
    assert db.execute("SELECT count(*) FROM transactions").fetchone() == (0,)
    again = op("topup", "bob", "5000", "--key", "big", "--yes")
    assert again.exit_code == 0 and f"already filed request {first}" in again.stderr
    # The README's next line: a dry run of the request already filed says so.
    dry_again = op("topup", "bob", "5000", "--key", "big", "--dry-run", "--json")
    assert dry_again.exit_code == 0, dry_again.output
    assert f"already filed request {first}" in dry_again.stderr
    assert str(json.loads(dry_again.stdout)["request_id"]) == first

    own = op("request", "approve", first)
    assert own.exit_code == 10, own.output  # an operator is not an approver
    listed = approver("request", "list", "--status", "pending", "--json")
    assert [str(json.loads(line)["request_id"]) for line in listed.stdout.splitlines()] == [first]

    preview = approver("request", "approve", first, "--dry-run")
    assert preview.exit_code == 0 and "would post" in preview.stderr
    assert db.execute("SELECT count(*) FROM transactions").fetchone() == (0,)
    approved = approver("request", "approve", first, "--reason", "invoice 7", "--json")
    assert approved.exit_code == 0, approved.output
    receipt = json.loads(approved.stdout)
    assert (receipt["amount"], receipt["actor"], receipt["on_behalf_of"]) == (
        5000,
        people["approver"],
        "tester",  # the requester's --actor (WALLETCTL_ACTOR) note
    )
    twice = approver("request", "approve", first)
    assert twice.exit_code == 0 and "replayed" in twice.stderr
    assert db.execute("SELECT count(*) FROM transactions").fetchone() == (1,)

    shown = json.loads(op("request", "show", first, "--json").stdout)
    assert (shown["status"], shown["requested_by"], shown["decided_by"]) == (
        "approved",
        people["op"],
        people["approver"],
    )
    second = str(
        json.loads(op("topup", "bob", "2000", "-k", "big-2", "--json").stdout)["request_id"]
    )
    assert approver("request", "reject", second).exit_code == 2  # --reason required
    rejected = approver("request", "reject", second, "--reason", "duplicate")
    assert rejected.exit_code == 0, rejected.output
    assert approver("request", "approve", second).exit_code == 5
    # audit shows who asked and who decided.
    posted = json.loads(op("audit", "--key", "big", "--json").stdout)
    assert (posted["requested_by"], posted["approved_by"], posted["actor"]) == (
        people["op"],
        people["approver"],
        people["approver"],
    )
    refused = op("audit", "--key", "big-2", "--json")
    assert refused.exit_code == 0 and f"filed request {second} (rejected)" in refused.stderr
    assert json.loads(refused.stdout)["decided_by"] == people["approver"]
    assert approver("request", "approve", "99").exit_code == 4
    expire = approver("request", "expire")  # nothing is overdue yet
    assert expire.exit_code == 0 and "0 request(s) recorded as expired" in expire.stderr
    assert op("request", "expire").exit_code == 10
    assert approver("request", "approve", "x").exit_code == 2


def test_budgets_and_frozen_users_through_the_cli(
    as_: dict[str, Cli], people: dict[str, str], db: Conn
) -> None:
    admin, op = as_["admin"], as_["op"]
    assert admin("policy", "budget", people["op"], "GOLD", "100").exit_code == 0
    assert admin("policy", "budget", "no_such_role_x", "GOLD", "100").exit_code == 4
    assert admin("policy", "budget", people["op"], "GOLD", "-5").exit_code == 2
    assert op("topup", "alice", "70").exit_code == 0

    dry = op("topup", "alice", "20", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "90 of 100 GOLD used today (UTC) with this posting, 10 would remain" in dry.stderr
    refused = op("topup", "alice", "31")
    assert refused.exit_code == 8 and "30 remains" in refused.stderr, refused.output
    shown = json.loads(op("policy", "show", "--json").stdout)
    assert [(b["role"], b["used_today"], b["remaining"]) for b in shown["budgets"]] == [
        (people["op"], 70, 30)
    ]

    assert op("user", "freeze", "alice", "--reason", "x").exit_code == 10
    assert admin("user", "freeze", "alice").exit_code == 2  # --reason required
    assert admin("user", "freeze", "ghost", "--reason", "x").exit_code == 4
    frozen = admin("user", "freeze", "alice", "--reason", "chargeback")
    assert frozen.exit_code == 0, frozen.output
    spend = op("spend", "alice", "5")
    assert spend.exit_code == 8 and "alice is frozen" in spend.stderr
    assert op("topup", "alice", "5").exit_code == 8
    reverse = op("reverse", "1", "--reason", "chargeback")
    assert reverse.exit_code == 0, reverse.output
    balance = op("balance", "alice", "--json")
    assert json.loads(balance.stdout)["frozen"] is True and "is frozen" in balance.stderr
    assert json.loads(op("user", "show", "alice", "--json").stdout)["frozen"] is True
    assert admin("user", "unfreeze", "alice", "--reason", "cleared").exit_code == 0
    assert json.loads(op("user", "show", "alice", "--json").stdout)["frozen"] is False
    assert db.execute("SELECT count(*) FROM user_freezes").fetchone() == (2,)


def test_a_bulk_file_refuses_rows_for_frozen_users_and_above_the_threshold_alone(
    as_: dict[str, Cli],
    people: dict[str, str],
    db: Conn,
    server_url: str,
    clean_db: str,
    tmp_path: Any,
) -> None:
    admin = as_["admin"]
    batch_name = f"walletctl_test_cli_batch_{uuid.uuid4().hex[:6]}"
    create_login_role(server_url, batch_name, "batch")
    try:
        batch = Cli(with_user(clean_db, batch_name))
        assert as_["op"]("topup", "alice", "5").exit_code == 0
        assert admin("user", "freeze", "alice", "--reason", "fraud").exit_code == 0
        assert admin("policy", "set", "GOLD", "--approve-above", "100").exit_code == 0
        path = tmp_path / "promo.csv"
        path.write_text("user,amount,key\nalice,5,p1\nbob,500,p2\ncarol,50,p3\n")
        report = tmp_path / "report.csv"
        result = batch("bonus", "--file", str(path), "--reason", "promo", "--report", str(report))
        assert result.exit_code == 9, result.output
        details = report.read_text()
        assert "alice is frozen" in details and "above the approval threshold" in details
        posted = db.execute("SELECT idempotency_key FROM transactions WHERE kind = 'bonus'")
        assert posted.fetchall() == [("p3",)]

        assert admin("policy", "budget", batch_name, "GOLD", "60").exit_code == 0
        path.write_text("user,amount,key\ncarol,50,q1\ndan,50,q2\n")
        refused = batch("bonus", "--file", str(path), "--reason", "promo")
        assert refused.exit_code == 8, refused.output
        assert "60 remains, this needs 100" in refused.stderr  # use counts from the budget on
        assert db.execute("SELECT count(*) FROM transactions").fetchone() == (2,)
    finally:
        drop_login_role(server_url, batch_name)
