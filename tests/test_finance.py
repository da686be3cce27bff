"""Finance: past balances, period summaries, exports other tools agree with, metrics."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import assets, balances, posting, summary
from walletctl.core.export import COUNTER_ACCOUNTS, OPENING_ACCOUNT, account_name, export
from walletctl.core.models import Receipt
from walletctl.errors import WalletError

from .cli_helpers import Cli

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}
AWKWARD_USERS = [
    "alice",
    "bob smith",
    "carol@example.com",
    "dörte",
    "0042",
    "x-y_z",
    'quote"me',
    "semi;colon",
    "comma,here",
    "日本",
    "UPPER lower",
    "tab\tless".replace("\t", " "),
]


def random_ledger(conn: Conn, seed: int, operations: int = 400) -> list[Receipt]:
    """A ledger of random top-ups, bonuses, spends and reversals over awkward user ids."""
    rng = random.Random(seed)
    assets.add_asset(conn, "POINTS", "Reward Points")
    assets.add_asset(conn, "GEMS_2", "Gems, second edition")
    posted: list[Receipt] = []
    for step in range(operations):
        user = rng.choice(AWKWARD_USERS)
        asset = rng.choice(["GOLD", "POINTS", "GEMS_2"])
        roll = rng.random()
        try:
            if roll < 0.45:
                receipt = posting.topup(
                    conn,
                    user,
                    rng.randint(1, 10_000),
                    asset=asset,
                    idempotency_key=f"r{seed}-{step}",
                    on_behalf_of="gen",
                )
            elif roll < 0.6:
                receipt = posting.bonus(
                    conn,
                    user,
                    rng.randint(1, 500),
                    asset=asset,
                    idempotency_key=f"r{seed}-{step}",
                    on_behalf_of="gen",
                    reason=rng.choice(["promo", 'say "hi"; ok', "a, b"]),
                )
            elif roll < 0.92:
                receipt = posting.spend(
                    conn,
                    user,
                    rng.randint(1, 3000),
                    asset=asset,
                    idempotency_key=f"r{seed}-{step}",
                    on_behalf_of="gen",
                )
            elif posted:
                receipt = posting.reverse(
                    conn,
                    rng.choice(posted).transaction_id,
                    idempotency_key=f"r{seed}-{step}",
                    on_behalf_of="gen",
                    reason="undo",
                )
            else:
                continue
        except WalletError:
            continue
        posted.append(receipt)
    return posted


def walletctl_balances(conn: Conn, since: Any = None) -> dict[tuple[str, str], int]:
    """(account in the journal formats, asset) -> balance, as walletctl knows it, by the
    chart of accounts (README "Exports"): a user's account is a liability, so it holds
    minus what the user holds; each kind's account holds what postings of that kind (net of
    their reversals) did to users' balances since ``since``; with ``since`` the opening
    balances' account holds what users held then."""
    found: dict[tuple[str, str], int] = {}
    for user, asset, amount in conn.execute(
        "SELECT a.external_id, s.code, b.balance FROM balances b "
        "JOIN accounts a ON a.id = b.account_id JOIN asset_types s ON s.id = b.asset_id"
    ):
        if amount:
            found[(account_name(user), asset)] = -int(amount)
    for kind, asset, amount in conn.execute(
        "SELECT coalesce(target.kind, t.kind), s.code, sum(e.amount) FROM transactions t "
        "JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id "
        "JOIN asset_types s ON s.id = t.asset_id "
        "LEFT JOIN transactions target ON target.id = t.reverses "
        "WHERE %(since)s::timestamptz IS NULL OR t.created_at >= %(since)s GROUP BY 1, 2",
        {"since": since},
    ):
        if amount:
            found[(COUNTER_ACCOUNTS[kind], asset)] = int(amount)
    if since is not None:
        for asset, amount in conn.execute(
            "SELECT s.code, sum(e.amount) FROM ledger_entries e "
            "JOIN asset_types s ON s.id = e.asset_id "
            "WHERE e.account_id <> 0 AND e.created_at < %s GROUP BY 1",
            (since,),
        ):
            if amount:
                found[(OPENING_ACCOUNT, asset)] = int(amount)
    return found


def test_balance_as_of_reads_the_past(conn: Conn) -> None:
    first = posting.topup(conn, "alice", 100, idempotency_key="a", **OPS)
    second = posting.spend(conn, "alice", 30, idempotency_key="b", **OPS)
    third = posting.topup(conn, "alice", 5, idempotency_key="c", **OPS)

    def at(moment: Any) -> int:
        return balances.balances(conn, "alice", asset="GOLD", as_of=moment)[0].balance

    assert at(first.created_at - timedelta(microseconds=1)) == 0
    assert at(first.created_at) == 100
    assert at(second.created_at) == 70
    assert at(third.created_at - timedelta(microseconds=1)) == 70
    assert at(third.created_at + timedelta(days=1)) == 75


def test_entry_times_never_go_back_for_a_user(conn: Conn, connect: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    posting.topup(conn, "alice", 10_000, idempotency_key="fund", **OPS)
    connections = [connect() for _ in range(8)]

    def work(index: int) -> None:
        for step in range(50):
            posting.spend(connections[index], "alice", 1, idempotency_key=f"{index}.{step}", **OPS)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    rows = conn.execute(
        "SELECT created_at, balance_after FROM ledger_entries WHERE account_id = 1 ORDER BY id"
    ).fetchall()
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert [row[1] for row in rows] == [10_000 - step for step in range(len(rows))]


def test_period_summary_adds_up(conn: Conn) -> None:
    topup = posting.topup(conn, "alice", 1000, idempotency_key="t", **OPS)
    posting.bonus(conn, "bob", 50, idempotency_key="b", reason="promo", **OPS)
    spend = posting.spend(conn, "alice", 300, idempotency_key="s", **OPS)
    posting.reverse(
        conn, spend.transaction_id, idempotency_key="r1", on_behalf_of="ops", reason="x"
    )
    late = posting.topup(conn, "carol", 7, idempotency_key="late", **OPS)
    posting.reverse(conn, late.transaction_id, idempotency_key="r2", on_behalf_of="ops", reason="x")

    (everything,) = summary.period_summary(conn)
    assert (everything.issued_topup, everything.issued_bonus, everything.spent) == (1007, 50, 300)
    assert everything.reversed == 300 - 7
    assert everything.net_change == 1007 + 50 - 300 + 293 == everything.outstanding_end
    assert everything.outstanding_start == 0 and everything.transactions == 6

    (early,) = summary.period_summary(conn, since=topup.created_at, until=late.created_at)
    assert (early.issued_topup, early.spent, early.reversed, early.transactions) == (
        1000,
        300,
        300,
        4,
    )
    assert early.outstanding_start == 0
    assert early.outstanding_end == 1000 + 50 == early.net_change
    (rest,) = summary.period_summary(conn, since=late.created_at)
    assert rest.outstanding_start == early.outstanding_end
    assert rest.outstanding_end == 1050


def test_summary_through_the_cli_in_every_format(clean_db: str) -> None:
    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    cli("topup", "alice", "10")
    body = json.loads(cli("audit", "--summary", "--json").stdout)
    assert body["assets"][0]["issued_topup"] == 10
    rows = list(csv.DictReader(io.StringIO(cli("audit", "--summary", "--csv").stdout)))
    assert rows[0]["outstanding_end"] == "10"
    assert cli("audit", "--summary", "--asset", "NOPE").exit_code == 4


def _hledger_balances(path: Path) -> dict[tuple[str, str], int]:
    result = subprocess.run(
        ["hledger", "-f", str(path), "balance", "--flat", "-N", "-O", "csv"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr == ""
    found: dict[tuple[str, str], int] = {}
    for row in list(csv.reader(io.StringIO(result.stdout)))[1:]:
        account, amounts = row
        for amount in amounts.split(", "):
            quantity, commodity = amount.rsplit(" ", 1)
            found[(account, commodity.strip('"'))] = int(quantity)
    return found


def _beancount_balances(path: Path) -> dict[tuple[str, str], int]:
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "bean-check"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""
    from beancount import loader
    from beancount.core import data

    entries, errors, _ = loader.load_file(str(path))
    assert errors == []
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for entry in entries:
        if isinstance(entry, data.Transaction):
            for leg in entry.postings:
                totals[(leg.account, leg.units.currency)] += int(leg.units.number)
    return {key: value for key, value in totals.items() if value}


@pytest.mark.skipif(shutil.which("hledger") is None, reason="hledger is not installed")
@pytest.mark.parametrize("seed", [1, 2])
def test_hledger_and_beancount_agree_with_walletctl(conn: Conn, tmp_path: Path, seed: int) -> None:
    posted = random_ledger(conn, seed)
    assert len(posted) > 100
    expected = walletctl_balances(conn)
    for fmt, reader in (("ledger", _hledger_balances), ("beancount", _beancount_balances)):
        path = tmp_path / f"export.{fmt}"
        with path.open("w", encoding="utf-8") as out:
            assert export(conn, out, fmt) == len(posted)  # type: ignore[arg-type]
        assert reader(path) == expected, fmt


@pytest.mark.skipif(shutil.which("hledger") is None, reason="hledger is not installed")
def test_a_period_export_opens_with_the_balances_before_it(conn: Conn, tmp_path: Path) -> None:
    posted = random_ledger(conn, seed=3, operations=200)
    since = posted[len(posted) // 2].created_at
    expected = walletctl_balances(conn, since)
    for fmt, reader in (("ledger", _hledger_balances), ("beancount", _beancount_balances)):
        path = tmp_path / f"period.{fmt}"
        with path.open("w", encoding="utf-8") as out:
            written = export(conn, out, fmt, since=since)  # type: ignore[arg-type]
        assert written == sum(1 for receipt in posted if receipt.created_at >= since)
        assert reader(path) == expected, fmt


def test_csv_and_jsonl_exports_carry_every_entry(conn: Conn) -> None:
    random_ledger(conn, seed=4, operations=150)
    entries = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
    expected = walletctl_balances(conn)
    as_csv, as_jsonl = io.StringIO(), io.StringIO()
    assert export(conn, as_csv, "csv") == entries[0]  # type: ignore[index]
    assert export(conn, as_jsonl, "jsonl") == entries[0]  # type: ignore[index]
    # The user's side, signed as the journals sign a liability; the Treasury's side is the
    # kinds' accounts together.
    held = {key: value for key, value in expected.items() if key[0].startswith("Liabilities:")}
    treasury: dict[str, int] = defaultdict(int)
    for (account, asset), value in expected.items():
        if not account.startswith("Liabilities:"):
            treasury[asset] -= value
    for records in (
        list(csv.DictReader(io.StringIO(as_csv.getvalue()))),
        [json.loads(line) for line in as_jsonl.getvalue().splitlines()],
    ):
        users: dict[tuple[str, str], int] = defaultdict(int)
        treasury_seen: dict[str, int] = defaultdict(int)
        for record in records:
            if record["account"] == "Treasury":
                treasury_seen[record["asset"]] += int(record["amount"])
            else:
                users[(account_name(record["user"]), record["asset"])] -= int(record["amount"])
        assert {k: v for k, v in users.items() if v} == held
        assert {k: v for k, v in treasury_seen.items() if v} == {
            k: v for k, v in treasury.items() if v
        }


def test_export_cli_writes_a_file_whole(clean_db: str, tmp_path: Path) -> None:
    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    cli("topup", "alice", "10")
    target = tmp_path / "out.csv"
    result = cli("export", "--format", "csv", "--output", str(target))
    assert result.exit_code == 0 and "exported 2 entries" in result.stderr
    assert target.read_text().count("\n") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    assert cli("export", "--format", "xml").exit_code == 2
    assert (
        cli("export", "--format", "csv", "--output", str(tmp_path / "no/such/dir.csv")).exit_code
        == 2
    )


def test_reconcile_writes_prometheus_metrics_atomically(clean_db: str, tmp_path: Path) -> None:
    cli = Cli(clean_db)
    cli("asset", "add", "GOLD", "Gold Coins")
    cli("topup", "alice", "10")
    target = tmp_path / "walletctl.prom"
    assert cli("reconcile", "--metrics-file", str(target)).exit_code == 0
    text = target.read_text()
    assert 'walletctl_reconcile_passed{mode="full"} 1' in text
    assert 'walletctl_reconcile_check_passed{check="zero_sum_per_transaction"} 1' in text
    assert "# TYPE walletctl_reconcile_duration_seconds gauge" in text
    assert [p.name for p in tmp_path.iterdir()] == ["walletctl.prom"]
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # a superuser, triggers off
        conn.execute("UPDATE balances SET balance = balance + 1")
    assert cli("reconcile", "--metrics-file", str(target)).exit_code == 7
    assert 'walletctl_reconcile_check_passed{check="cached_balances_match_ledger"} 0' in (
        target.read_text()
    )


def test_exports_show_the_actor_and_on_whose_behalf(cli: Cli, ops_role: str) -> None:
    assert cli("topup", "alice", "10", "--actor", "mia", "--key", "k1").exit_code == 0
    rows = list(csv.DictReader(io.StringIO(cli("export", "--format", "csv").stdout)))
    assert {(row["actor"], row["on_behalf_of"]) for row in rows} == {(ops_role, "mia")}
    journal = cli("export", "--format", "ledger").stdout
    assert f"actor:{ops_role}, on_behalf_of:mia" in journal
    beancount = cli("export", "--format", "beancount").stdout
    assert 'on_behalf_of: "mia"' in beancount
    statement = cli("audit", "alice", "--json").stdout
    assert '"on_behalf_of": "mia"' in statement
