"""The commands end to end through the real entry point, against a real database."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import psycopg
import pytest

from .cli_helpers import Cli
from .helpers import ledger_snapshot


def _json(text: str) -> Any:
    return json.loads(text)


def test_topup_prints_a_receipt_and_the_generated_key(cli: Cli) -> None:
    result = cli("topup", "alice", "100", "--reason", "purchase", "--json")
    assert result.exit_code == 0, result.stderr
    receipt = _json(result.stdout)
    assert receipt["kind"] == "topup" and receipt["balance_after"] == 100
    assert receipt["replayed"] is False
    key = receipt["idempotency_key"]
    assert key.startswith("cli-") and f"--key {key}" in result.stderr


def test_replay_exits_zero_and_says_so(cli: Cli, db: Any) -> None:
    first = _json(cli("topup", "alice", "100", "--key", "k1", "--json").stdout)
    before = ledger_snapshot(db)
    again = cli("topup", "alice", "100", "--key", "k1", "--json")
    assert again.exit_code == 0
    assert "replayed" in again.stderr
    receipt = _json(again.stdout)
    assert receipt["replayed"] is True
    assert receipt["transaction_id"] == first["transaction_id"]
    assert ledger_snapshot(db) == before


def test_exit_codes_of_the_posting_refusals(cli: Cli, db: Any) -> None:
    assert cli("topup", "alice", "100", "--key", "k").exit_code == 0
    before = ledger_snapshot(db)
    assert cli("spend", "alice", "101").exit_code == 3
    assert cli("spend", "nobody", "1").exit_code == 4
    assert cli("topup", "alice", "1", "--asset", "SILVER").exit_code == 4
    assert cli("topup", "alice", "2", "--key", "k").exit_code == 5
    assert cli("bonus", "alice", "2").exit_code == 2
    assert ledger_snapshot(db) == before


def test_bonus_and_spend_record_reason_actor_and_on_behalf_of(
    cli: Cli, db: Any, ops_role: str
) -> None:
    cli("bonus", "alice", "50", "--reason", "referral", "--actor", "mia")
    cli("spend", "alice", "20", "--reason", "shop")
    rows = db.execute(
        "SELECT kind, reason, actor, on_behalf_of FROM transactions ORDER BY id"
    ).fetchall()
    # The actor is the database role logged in, whatever --actor says; --actor is a note.
    assert rows == [
        ("bonus", "referral", ops_role, "mia"),
        ("spend", "shop", ops_role, "tester"),
    ]


def test_large_amounts_need_yes_when_not_interactive(clean_db: str, db: Any) -> None:
    cli = Cli(clean_db, env={"WALLETCTL_CONFIRM_ABOVE": "1000"})
    cli("asset", "add", "GOLD", "Gold Coins")
    before = ledger_snapshot(db)
    refused = cli("topup", "alice", "1001")
    assert refused.exit_code == 8
    assert "--yes" in refused.stderr
    assert ledger_snapshot(db) == before
    assert cli("topup", "alice", "1000").exit_code == 0
    assert cli("topup", "alice", "1001", "--yes").exit_code == 0


def test_dry_run_shows_the_posting_and_writes_nothing(cli: Cli, db: Any) -> None:
    cli("topup", "alice", "100")
    before = ledger_snapshot(db)
    result = cli("spend", "alice", "30", "--dry-run", "--json")
    assert result.exit_code == 0
    preview = _json(result.stdout)
    assert preview["dry_run"] is True and preview["balance_after"] == 70
    assert "nothing was written" in result.stderr
    assert cli("spend", "alice", "300", "--dry-run").exit_code == 3
    assert ledger_snapshot(db) == before


def test_reverse_mirrors_a_transaction(cli: Cli, db: Any) -> None:
    topup = _json(cli("topup", "alice", "100", "--json").stdout)
    reversal = cli("reverse", str(topup["transaction_id"]), "--reason", "wrong user", "--json")
    assert reversal.exit_code == 0, reversal.stderr
    body = _json(reversal.stdout)
    assert body["kind"] == "reversal" and body["balance_after"] == 0
    assert body["reverses"] == topup["transaction_id"]
    again = cli("reverse", str(topup["transaction_id"]), "--reason", "twice")
    assert again.exit_code == 5 and "already reversed" in again.stderr
    assert cli("reverse", "999", "--reason", "x").exit_code == 4
    assert cli("reverse", str(topup["transaction_id"])).exit_code == 2  # no reason


def test_balance_lists_every_asset_and_the_treasury(cli: Cli) -> None:
    cli("asset", "add", "POINTS", "Reward Points")
    cli("topup", "alice", "100")
    cli("topup", "bob", "7", "--asset", "POINTS")
    body = _json(cli("balance", "alice", "--json").stdout)
    assert [(b["asset"], b["balance"]) for b in body["balances"]] == [("GOLD", 100), ("POINTS", 0)]
    assert cli("balance", "alice", "--asset", "POINTS", "--json").exit_code == 0
    treasury = _json(cli("balance", "--treasury", "--json").stdout)["assets"]
    assert {row["asset"]: (row["outstanding"], row["treasury_balance"]) for row in treasury} == {
        "GOLD": (100, -100),
        "POINTS": (7, -7),
    }
    assert cli("balance", "nobody").exit_code == 4
    for extra in ((), ("--as-of", "2026-01-01")):
        unknown = cli("balance", "alice", "--asset", "NOSUCH", *extra)
        assert unknown.exit_code == 4, unknown.output
        assert unknown.stderr == "walletctl: error: asset NOSUCH not found\n"
    unknown = cli("balance", "alice", "--asset", "NOSUCH", "--json")
    assert unknown.exit_code == 4
    assert json.loads(unknown.stderr)["error"]["message"] == "asset NOSUCH not found"


def test_audit_statement_with_filters_json_lines_and_csv(cli: Cli) -> None:
    cli("topup", "alice", "100")
    cli("bonus", "alice", "10", "--reason", "promo")
    cli("spend", "alice", "30")
    lines = cli("audit", "alice", "--json").stdout.splitlines()
    assert [_json(line)["balance_after"] for line in lines] == [100, 110, 80]
    assert [_json(line)["amount"] for line in lines] == [100, 10, -30]
    only_spends = cli("audit", "alice", "--kind", "spend", "--json").stdout.splitlines()
    assert len(only_spends) == 1
    limited = cli("audit", "alice", "--limit", "2", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(limited)))
    assert [row["kind"] for row in rows] == ["topup", "bonus"]
    assert cli("audit", "alice", "--since", "2999-01-01", "--json").stdout == ""


def test_audit_of_a_transaction_shows_entries_summing_to_zero(cli: Cli) -> None:
    topup = _json(cli("topup", "alice", "100", "--key", "the-key", "--json").stdout)
    detail = _json(cli("audit", "--txn", str(topup["transaction_id"]), "--json").stdout)
    assert detail["entries_sum"] == 0
    assert [(e["account"], e["amount"]) for e in detail["entries"]] == [
        ("alice", 100),
        ("Treasury", -100),
    ]
    by_key = _json(cli("audit", "--key", "the-key", "--json").stdout)
    assert by_key["transaction_id"] == topup["transaction_id"]
    unknown = cli("audit", "--key", "never-used")
    assert unknown.exit_code == 4 and "has not posted" in unknown.stderr
    assert unknown.stderr.startswith("walletctl: error: ") and unknown.stdout == ""
    as_json = cli("audit", "--key", "never-used", "--json")
    assert as_json.exit_code == 4 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["code"] == 4


def test_reconcile_passes_on_a_healthy_ledger_and_fails_with_exit_7(
    cli: Cli, clean_db: str, db: Any
) -> None:
    cli("topup", "alice", "100")
    cli("spend", "alice", "40")
    result = cli("reconcile", "--json")
    assert result.exit_code == 0
    report = _json(result.stdout)
    assert report["passed"] is True and len(report["checks"]) >= 7
    # A bad manual fix by a superuser is refused while the triggers are on ...
    with pytest.raises(psycopg.Error, match="cached balance"):
        db.execute("UPDATE balances SET balance = balance + 5")
    # ... and caught by reconcile when they are switched off.
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE balances SET balance = balance + 5")
    failed = cli("reconcile", "--json")
    assert failed.exit_code == 7
    checks = {check["check"]: check for check in _json(failed.stdout)["checks"]}
    assert checks["cached_balances_match_ledger"]["status"] == "FAIL"
    assert "alice/GOLD" in checks["cached_balances_match_ledger"]["examples"]


def test_assets_and_users(cli: Cli) -> None:
    assert cli("asset", "add", "GOLD", "again").exit_code == 5
    assert cli("asset", "add", "gold", "lower").exit_code == 2
    assets = _json(cli("asset", "list", "--json").stdout)["assets"]
    assert [asset["code"] for asset in assets] == ["GOLD"]
    cli("topup", "bob", "5")
    cli("topup", "alice", "7")
    users = [_json(line) for line in cli("user", "list", "--json").stdout.splitlines()]
    # Balances have one shape everywhere: the list `balance` prints.
    assert [(u["user"], [(b["asset"], b["balance"]) for b in u["balances"]]) for u in users] == [
        ("alice", [("GOLD", 7)]),
        ("bob", [("GOLD", 5)]),
    ]
    page = [
        _json(line)
        for line in cli("user", "list", "--after", "alice", "--json").stdout.splitlines()
    ]
    assert [u["user"] for u in page] == ["bob"]
    shown = _json(cli("user", "show", "alice", "--json").stdout)
    balance = _json(cli("balance", "alice", "--json").stdout)
    assert shown["balances"] == balance["balances"] and shown["entries"] == 1
    assert [(b["asset"], b["balance"]) for b in shown["balances"]] == [("GOLD", 7)]
    assert cli("user", "show", "nobody").exit_code == 4


def test_plain_output_in_a_pipe_is_tab_separated_without_colour(cli: Cli) -> None:
    cli("topup", "alice", "100")
    result = cli("balance", "alice")
    assert result.stdout.splitlines()[0] == "user\tasset\tbalance\tupdated_at"
    assert "\x1b[" not in result.stdout
    assert result.stdout.splitlines()[1].startswith("alice\tGOLD\t100\t")
