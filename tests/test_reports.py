"""Reports by operator and reason, listings people can read, and an accounting export
whose balance sheet and income statement agree with `audit --summary`."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .cli_helpers import Cli
from .conftest import create_login_role, drop_login_role, with_user

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def operators(server_url: str, database_url: str) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    names = (f"walletctl_test_mia_{suffix}", f"walletctl_test_noah_{suffix}")
    for name in names:
        create_login_role(server_url, name, "operator", "batch", "finance")
    yield names
    for name in names:
        drop_login_role(server_url, name)


@pytest.fixture
def two_operators(clean_db: str, operators: tuple[str, str]) -> tuple[Cli, Cli, str, str]:
    mia, noah = operators
    as_mia, as_noah = Cli(with_user(clean_db, mia)), Cli(with_user(clean_db, noah))
    assert as_mia("asset", "add", "GOLD", "Gold Coins").exit_code == 0
    assert as_mia("asset", "add", "POINTS", "Reward Points").exit_code == 0
    as_mia("topup", "alice", "1000", "--reason", "order 1")
    as_mia("bonus", "alice", "50", "--reason", "March promo")
    as_mia("bonus", "bob", "70", "--reason", "March promo", "--asset", "POINTS")
    as_noah("bonus", "bob", "30", "--reason", "March promo", "--actor", "lena")
    as_noah("topup", "carol", "400", "--reason", "order 2")
    spent = json.loads(as_noah("spend", "alice", "120", "--json").stdout)
    as_mia("reverse", str(spent["transaction_id"]), "--reason", "refund")
    return as_mia, as_noah, mia, noah


def _lines(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_by_actor_answers_what_each_operator_issued(
    two_operators: tuple[Cli, Cli, str, str],
) -> None:
    as_mia, _, mia, noah = two_operators
    report = json.loads(as_mia("audit", "--by-actor", "--since", "2000-01-01", "--json").stdout)
    got = {
        (r["actor"], r["asset"], r["kind"]): (r["transactions"], r["amount"])
        for r in report["actors"]
    }
    assert got == {
        (mia, "GOLD", "topup"): (1, 1000),
        (mia, "GOLD", "bonus"): (1, 50),
        (mia, "POINTS", "bonus"): (1, 70),
        (mia, "GOLD", "reversal"): (1, 120),  # gave a spend back: + for the user
        (noah, "GOLD", "bonus"): (1, 30),
        (noah, "GOLD", "topup"): (1, 400),
        (noah, "GOLD", "spend"): (1, -120),
    }
    only_bonuses = json.loads(as_mia("audit", "--by-actor", "--kind", "bonus", "--json").stdout)
    assert {r["kind"] for r in only_bonuses["actors"]} == {"bonus"}
    future = json.loads(as_mia("audit", "--by-actor", "--since", "2999-01-01", "--json").stdout)
    assert future["actors"] == []


def test_actor_reason_and_kind_filter_statements_summaries_and_exports(
    two_operators: tuple[Cli, Cli, str, str],
) -> None:
    as_mia, _, mia, noah = two_operators
    # --actor matches the recorded actor (the database role), not the --actor note ...
    by_noah = _lines(as_mia("audit", "bob", "--actor", noah, "--json"))
    assert [(line["amount"], line["on_behalf_of"]) for line in by_noah] == [(30, "lena")]
    assert _lines(as_mia("audit", "bob", "--actor", "lena", "--json")) == []
    # ... which --on-behalf-of matches.
    assert len(_lines(as_mia("audit", "bob", "--on-behalf-of", "lena", "--json"))) == 1
    promo = _lines(as_mia("audit", "alice", "--reason", "March promo", "--json"))
    assert [line["amount"] for line in promo] == [50]
    summary = json.loads(
        as_mia("audit", "--summary", "--actor", mia, "--reason", "March promo", "--json").stdout
    )
    assert {row["asset"]: row["issued_bonus"] for row in summary["assets"]} == {
        "GOLD": 50,
        "POINTS": 70,
    }
    assert all(row["outstanding_end"] is None for row in summary["assets"])  # a selection
    assert summary["filters"] == {"actor": mia, "reason": "March promo"}
    exported = list(
        csv.DictReader(
            io.StringIO(
                as_mia("export", "--format", "csv", "--kind", "bonus", "--actor", mia).stdout
            )
        )
    )
    assert {row["kind"] for row in exported} == {"bonus"} and len(exported) == 4  # 2 x 2 entries
    assert {row["actor"] for row in exported} == {mia}
    journal = as_mia("export", "--format", "ledger", "--reason", "refund").stdout
    assert journal.count("reverses") == 1


def test_statements_page_newest_first_with_a_cursor_and_totals(clean_db: str) -> None:
    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    ids = [
        json.loads(cli("topup", "alice", str(amount), "--json").stdout)["transaction_id"]
        for amount in range(1, 8)
    ]
    page = json.loads(
        cli("audit", "alice", "--newest-first", "--limit", "3", "--format", "json").stdout
    )
    assert [line["transaction_id"] for line in page["entries"]] == ids[::-1][:3]
    assert page["totals"] == [{"asset": "GOLD", "entries": 7, "amount": 28}]
    assert page["next_after"] == ids[4]
    following = json.loads(
        cli(
            "audit",
            "alice",
            "--newest-first",
            "--limit",
            "3",
            "--after",
            str(page["next_after"]),
            "--format",
            "json",
        ).stdout
    )
    assert [line["transaction_id"] for line in following["entries"]] == ids[::-1][3:6]
    last = json.loads(
        cli(
            "audit",
            "alice",
            "--newest-first",
            "--limit",
            "3",
            "--after",
            str(following["next_after"]),
            "--format",
            "json",
        ).stdout
    )
    assert [line["transaction_id"] for line in last["entries"]] == ids[:1]
    assert last["next_after"] is None
    oldest = json.loads(
        cli("audit", "alice", "--limit", "2", "--after", str(ids[1]), "--format", "json").stdout
    )
    assert [line["transaction_id"] for line in oldest["entries"]] == ids[2:4]
    tsv = cli("audit", "alice", "--limit", "2")
    assert "next page: --after" in tsv.stderr and len(tsv.stdout.splitlines()) == 3
    assert cli("audit", "alice", "--after", "999999").exit_code == 4
    assert cli("audit", "alice", "--all", "--limit", "2").exit_code == 2


def test_user_lists_have_a_default_page_on_a_terminal_and_everything_in_a_pipe(
    clean_db: str,
) -> None:
    from walletctl.cli.options import DEFAULT_TABLE_LIMIT

    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    rows = "user,amount\n" + "".join(f"u{index:04d},{index + 1}\n" for index in range(150))
    assert cli("topup", "--file", "-", "--key-prefix", "many", input=rows).exit_code == 0
    assert len(cli("user", "list").stdout.splitlines()) == 151  # tsv: header + every user
    from typer.testing import CliRunner

    from walletctl.cli.app import app
    from walletctl.cli.env import Environment

    env = Environment(stdout_isatty=True, width=120, height=10_000, no_color=True, pager="")
    shown = CliRunner(env=cli.env).invoke(app, ["user", "list"], obj=env)
    assert shown.exit_code == 0
    assert "u0099" in shown.stdout and "u0100" not in shown.stdout
    assert f"{DEFAULT_TABLE_LIMIT} of 150 users shown" in shown.stdout
    assert "--after u0099" in shown.stdout
    cli("topup", "zz-first", "1")
    cli("topup", "aa-last", "1")
    newest = _lines(cli("user", "list", "--newest-first", "--limit", "2", "--json"))
    assert [user["user"] for user in newest] == ["aa-last", "zz-first"]
    then = _lines(
        cli("user", "list", "--newest-first", "--limit", "2", "--after", "zz-first", "--json")
    )
    assert len(then) == 2 and {user["user"] for user in then} <= {
        f"u{index:04d}" for index in range(150)
    }


def test_balance_all_has_a_row_per_user_and_a_column_per_asset(
    two_operators: tuple[Cli, Cli, str, str],
) -> None:
    as_mia, *_ = two_operators
    rows = list(csv.DictReader(io.StringIO(as_mia("balance", "--all", "--csv").stdout)))
    assert rows == [
        {"user": "alice", "GOLD": "1050", "POINTS": "0"},
        {"user": "bob", "GOLD": "30", "POINTS": "70"},
        {"user": "carol", "GOLD": "400", "POINTS": "0"},
    ]
    lines = _lines(as_mia("balance", "--all", "--json"))
    assert lines[1] == {"user": "bob", "GOLD": 30, "POINTS": 70}
    page = _lines(as_mia("balance", "--all", "--limit", "1", "--after", "alice", "--json"))
    assert [line["user"] for line in page] == ["bob"]


def _hledger(path: Path, report: str) -> dict[str, dict[str, int]]:
    """hledger's report as {account or total: {commodity: amount}}."""
    result = subprocess.run(
        ["hledger", "-f", str(path), report, "--flat", "-O", "csv", "--no-elide"],
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, dict[str, int]] = {}
    for row in csv.reader(io.StringIO(result.stdout)):
        if len(row) < 2 or not row[1] or row[1][0] not in "-0123456789":
            continue
        amounts: dict[str, int] = {}
        for amount in row[-1].split(", "):
            if " " not in amount:  # a zero has no commodity
                continue
            quantity, commodity = amount.rsplit(" ", 1)
            amounts[commodity.strip('"')] = int(quantity)
        found[row[0]] = amounts
    return found


@pytest.mark.skipif(shutil.which("hledger") is None, reason="hledger is not installed")
def test_hledger_balance_sheet_and_income_statement_agree_with_the_summary(
    two_operators: tuple[Cli, Cli, str, str], tmp_path: Path
) -> None:
    as_mia, as_noah, *_ = two_operators
    topup = json.loads(as_noah("topup", "dave", "90", "--json").stdout)
    as_mia("reverse", str(topup["transaction_id"]), "--reason", "wrong user")
    bonus = json.loads(as_noah("bonus", "dave", "5", "--reason", "oops", "--json").stdout)
    as_mia("reverse", str(bonus["transaction_id"]), "--reason", "not due")
    journal = tmp_path / "ledger.journal"
    assert as_mia("export", "--format", "ledger", "--output", str(journal)).exit_code == 0
    summary = {
        row["asset"]: row
        for row in json.loads(as_mia("audit", "--summary", "--json").stdout)["assets"]
    }
    sheet = _hledger(journal, "bs")
    income = _hledger(journal, "is")
    for asset, row in summary.items():
        # The balance sheet: what users hold is a liability; credits sold are the asset.
        liabilities = sum(
            amounts.get(asset, 0)
            for name, amounts in sheet.items()
            if name.startswith("Liabilities:")
        )
        assert liabilities == row["outstanding_end"], asset
        assert sheet.get("Assets:Clearing:Topups", {}).get(asset, 0) == (
            row["issued_topup"] - row["reversed_topup"]
        )
        # The income statement: spends are revenue, bonuses an expense.
        assert income.get("Income:Spends", {}).get(asset, 0) == row["spent"] - row["reversed_spend"]
        assert income.get("Expenses:Bonuses", {}).get(asset, 0) == (
            row["issued_bonus"] - row["reversed_bonus"]
        )
    assert summary["GOLD"]["reversed_topup"] == 90 and summary["GOLD"]["reversed_spend"] == 120
    assert summary["GOLD"]["reversed_bonus"] == 5


def test_one_name_and_one_sign_per_concept_in_every_view(clean_db: str, tmp_path: Path) -> None:
    """A spend of 120 is -120 in its receipt, the statement, audit --txn, audit --by-actor and
    the bulk report; the bulk report says idempotency_key like everything else; user list
    has a column per asset."""
    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    cli("asset", "add", "POINTS", "Reward Points")
    cli("topup", "alice", "500")
    receipt = json.loads(cli("spend", "alice", "120", "--key", "s-120", "--json").stdout)
    statement = _lines(cli("audit", "alice", "--kind", "spend", "--json"))
    detail = json.loads(cli("audit", "--txn", str(receipt["transaction_id"]), "--json").stdout)
    by_actor = json.loads(cli("audit", "--by-actor", "--kind", "spend", "--json").stdout)
    spends = tmp_path / "spends.csv"
    spends.write_text("user,amount,key\nalice,120,b-120\n")
    report = tmp_path / "report.jsonl"
    assert cli("spend", "--file", str(spends), "--report", str(report)).exit_code == 0
    (row,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert receipt["amount"] == statement[0]["amount"] == detail["amount"] == -120
    assert by_actor["actors"][0]["amount"] == -120 and row["amount"] == -120
    assert row["idempotency_key"] == "b-120" and "key" not in row
    assert receipt["user"] == detail["user"] == row["user"] == "alice"
    listed = list(csv.DictReader(io.StringIO(cli("user", "list", "--csv").stdout)))
    assert listed[0]["GOLD"] == "260" and listed[0]["POINTS"] == "0"
    assert "balances" not in listed[0]
