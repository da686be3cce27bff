"""Bulk posting: whole-file validation, per-row outcomes, batches with single-posting
guarantees, idempotent re-runs."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import assets, bulk, posting

from .cli_helpers import Cli
from .helpers import assert_ledger_consistent, balance_of, ledger_snapshot

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def parse(text: str, kind: str = "topup", **options: Any) -> bulk.ParsedFile:
    settings = {"default_asset": "GOLD", "key_prefix": "p", "default_reason": None, **options}
    return bulk.parse_file(text.encode(), name="rows", kind=kind, **settings)  # type: ignore[arg-type]


def test_every_bad_row_is_reported_with_its_line_and_nothing_posts(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    rows = write(
        tmp_path / "rows.csv",
        "user,amount\nalice,10\n,5\nbob,-3\ncarol,1.5\ndave,7\nerin,9223372036854775808\n",
    )
    before = ledger_snapshot(db)
    result = cli("topup", "--file", rows, "--key-prefix", "run1")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        "walletctl: line 3: user id must not be empty",
        "walletctl: line 4: amount must be positive, got '-3'",
        "walletctl: line 5: amount must be a positive whole number of the asset's smallest "
        "unit, got '1.5'",
        "walletctl: line 7: amount 9223372036854775808 exceeds the largest amount "
        "(9223372036854775807)",
    ]
    assert "nothing was posted" in lines[-1]
    assert ledger_snapshot(db) == before

    checked = cli("topup", "--file", rows, "--key-prefix", "run1", "--validate-only")
    assert checked.exit_code == 2 and "2 valid row(s), 4 invalid" in checked.stderr
    assert ledger_snapshot(db) == before


def test_skip_invalid_posts_the_valid_rows_and_reports_all(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    rows = write(tmp_path / "rows.csv", "user,amount\nalice,10\nbob,x\ncarol,5\n")
    report = tmp_path / "report.csv"
    result = cli(
        "topup", "--file", rows, "--key-prefix", "r", "--skip-invalid", "--report", str(report)
    )
    assert result.exit_code == 9
    outcomes = list(csv.DictReader(io.StringIO(report.read_text())))
    assert [(o["line"], o["outcome"]) for o in outcomes] == [
        ("2", "posted"),
        ("3", "invalid"),
        ("4", "posted"),
    ]
    assert balance_of(db, "alice") == 10 and balance_of(db, "carol") == 5


def test_a_file_posted_twice_posts_once(cli: Cli, db: Conn, tmp_path: Path) -> None:
    rows = write(
        tmp_path / "rows.jsonl",
        '{"user": "alice", "amount": 10, "key": "a"}\n'
        '{"user": "bob", "amount": "20", "key": "b", "reason": "promo"}\n',
    )
    first = cli("bonus", "--file", rows, "--reason", "default", "--json")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["outcomes"]["posted"] == 2
    before = ledger_snapshot(db)
    again = cli("bonus", "--file", rows, "--reason", "default", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["outcomes"] == {
        "posted": 0,
        "replayed": 2,
        "conflict": 0,
        "insufficient": 0,
        "not_found": 0,
        "invalid": 0,
    }
    assert ledger_snapshot(db) == before
    reasons = db.execute("SELECT reason FROM transactions ORDER BY idempotency_key").fetchall()
    assert reasons == [("default",), ("promo",)]


def test_rows_of_one_user_apply_in_file_order(cli: Cli, db: Conn, tmp_path: Path) -> None:
    cli("topup", "alice", "5")
    credits = write(tmp_path / "credits.csv", "user,amount\nalice,100\n")
    cli("topup", "--file", credits, "--key-prefix", "c")
    spends = write(
        tmp_path / "spends.csv", "user,amount\nalice,60\nalice,50\nalice,40\nalice,5\nnobody,1\n"
    )
    report = tmp_path / "spends.jsonl"
    result = cli(
        "spend",
        "--file",
        spends,
        "--key-prefix",
        "s",
        "--report",
        str(report),
        "--batch-size",
        "2",
        "--skip-invalid",
    )
    assert result.exit_code == 9
    outcomes = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(o["outcome"], o["balance_after"]) for o in outcomes] == [
        ("posted", 45),
        ("insufficient", None),
        ("posted", 5),
        ("posted", 0),
        ("invalid", None),
    ]
    assert "holds 45 GOLD, 50 needed" in outcomes[1]["detail"]
    assert balance_of(db, "alice") == 0
    assert_ledger_consistent(db)


def test_credits_and_spends_mixed_in_one_batch(conn: Conn) -> None:
    posting.topup(conn, "alice", 10, idempotency_key="seed", **OPS)
    spends = parse("user,amount\nalice,10\nalice,1\nbob,3\n", kind="spend")
    outcomes = list(bulk.post_rows(conn, "spend", spends.rows, on_behalf_of="ops"))
    assert [o.outcome for o in outcomes] == ["posted", "insufficient", "not_found"]
    credits = parse("user,amount\nbob,3\nalice,4\nbob,2\n", key_prefix="c")
    outcomes = list(bulk.post_rows(conn, "topup", credits.rows, on_behalf_of="ops"))
    assert [(o.outcome, o.balance_after) for o in outcomes] == [
        ("posted", 3),
        ("posted", 4),
        ("posted", 5),
    ]
    assert_ledger_consistent(conn)


def test_keys_reused_for_other_requests_are_conflicts(conn: Conn) -> None:
    posting.topup(conn, "alice", 10, idempotency_key="k1", **OPS)
    rows = parse("user,amount,key\nalice,10,k1\nalice,11,k1b\nbob,10,k1b2\n", key_prefix=None)
    posted = list(bulk.post_rows(conn, "topup", rows.rows, on_behalf_of="ops"))
    assert [o.outcome for o in posted] == ["replayed", "posted", "posted"]
    clash = parse("user,amount,key\nalice,99,k1\n", key_prefix=None)
    (conflict,) = bulk.post_rows(conn, "topup", clash.rows, on_behalf_of="ops")
    assert conflict.outcome == "conflict" and "transaction 1" in (conflict.detail or "")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("user,amount\nalice,1\nbob,2\n", None),
        ("user,amount,colour\nalice,1,red\n", "the header must name"),
        ("amount\n1\n", "the header must name"),
    ],
)
def test_headers_are_checked(text: str, error: str | None) -> None:
    if error is None:
        assert len(parse(text).rows) == 2
    else:
        with pytest.raises(bulk.InvalidInput, match=error):
            parse(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("user,amount,key\nalice,1,k\nbob,2,k\n", "also on line 2"),
        ("user,amount,key\nalice,1,\n", "no idempotency key"),
        ('{"user": "a", "amount": 1.5, "key": "k"}\n', "whole number"),
        ('{"user": "a", "amount": 1, "key": "k", "extra": 1}\n', "unknown field"),
        ("[1, 2]\n", "not a JSON object"),
        ("{not json}\n", "not valid JSON"),
        ("user,amount\nalice,1,2\n", "more fields"),
    ],
)
def test_bad_rows_are_named(text: str, error: str) -> None:
    parsed = parse(text, key_prefix=None)
    assert parsed.invalid and error in parsed.invalid[-1].error


def test_a_key_column_and_a_key_prefix_do_not_mix(tmp_path: Path) -> None:
    parsed = parse("user,amount,key\nalice,1,k\n", key_prefix="p")
    assert "use one of them" in parsed.invalid[0].error


def test_max_total_and_the_confirmation_threshold_refuse_the_file(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    rows = write(tmp_path / "rows.csv", "user,amount\nalice,600\nbob,500\n")
    before = ledger_snapshot(db)
    refused = cli("topup", "--file", rows, "--key-prefix", "m", "--max-total", "1000")
    assert refused.exit_code == 8 and "1,100" in refused.stderr
    big = write(tmp_path / "big.csv", "user,amount\nalice,100001\n")
    assert cli("topup", "--file", big, "--key-prefix", "b").exit_code == 8
    assert ledger_snapshot(db) == before
    assert cli("topup", "--file", big, "--key-prefix", "b", "--yes").exit_code == 0


def test_dry_run_of_a_file_writes_nothing(cli: Cli, db: Conn, tmp_path: Path) -> None:
    rows = write(tmp_path / "rows.csv", "user,amount\nalice,10\nalice,5\n")
    before = ledger_snapshot(db)
    result = cli("topup", "--file", rows, "--key-prefix", "d", "--dry-run", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["outcomes"]["posted"] == 2
    assert ledger_snapshot(db) == before


def test_stdin_and_argument_mistakes(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "topup",
        "--file",
        "-",
        "--key-prefix",
        "in",
        "--format",
        "jsonl",
        input='{"user": "alice", "amount": 3}\n',
    )
    assert result.exit_code == 0, result.stderr
    assert cli("topup", "alice", "3", "--file", "-").exit_code == 2
    assert cli("topup", "alice", "3", "--key-prefix", "x").exit_code == 2
    assert cli("topup", "--file", str(tmp_path / "missing.csv"), "--key-prefix", "x").exit_code == 2
    assert cli("topup").exit_code == 2


def test_bulk_and_single_postings_on_the_same_users_never_deadlock(
    conn: Conn, connect: Any
) -> None:
    assets.add_asset(conn, "POINTS", "Points")
    users = [f"u{i}" for i in range(20)]
    for user in users:
        posting.topup(conn, user, 1_000, idempotency_key=f"fund-{user}", **OPS)
    files = [
        parse(
            "user,amount\n"
            + "".join(f"{users[(i * 7 + n) % 20]},{1 + i % 5}\n" for i in range(400)),
            kind="spend",
            key_prefix=f"f{n}",
        )
        for n in range(3)
    ]

    def run_file(index: int) -> int:
        outcomes = bulk.post_rows(
            connect(), "spend", files[index].rows, on_behalf_of="bulk", batch_size=50
        )
        return sum(o.outcome == "posted" for o in outcomes)

    def run_singles(index: int) -> int:
        single = connect()
        for step in range(150):
            posting.topup(
                single, users[(index + step) % 20], 2, idempotency_key=f"s{index}-{step}", **OPS
            )
        return 150

    with ThreadPoolExecutor(6) as pool:
        posted = [pool.submit(run_file, i) for i in range(3)]
        singles = [pool.submit(run_singles, i) for i in range(3)]
        assert sum(f.result(timeout=120) for f in posted) > 0
        assert sum(f.result(timeout=120) for f in singles) == 450
    assert_ledger_consistent(conn)


def test_a_key_claimed_while_the_batch_runs_makes_the_batch_start_again(
    conn: Conn, connect: Any
) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="seed", **OPS)
    racer = connect()
    racer.execute("BEGIN")
    racer.execute(
        "SELECT walletctl_post('topup', 'bob', 'GOLD', 7, %s, NULL, 'racer')",
        (bulk.derived_key("b", "bob", "GOLD", 7, 1),),
    )
    rows = parse("user,amount\nalice,5\nbob,7\ncarol,1\n", key_prefix="b")
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(
            out=list(bulk.post_rows(connect(), "topup", rows.rows, on_behalf_of="bulk"))
        )
    )
    worker.start()
    time.sleep(0.5)  # the batch now waits on the racer's uncommitted key
    racer.execute("COMMIT")
    worker.join(timeout=30)
    assert [o.outcome for o in result["out"]] == ["posted", "replayed", "posted"]
    assert balance_of(conn, "bob") == 7
    assert_ledger_consistent(conn)


def test_parallel_jobs_keep_each_users_rows_in_file_order(conn: Conn, clean_db: str) -> None:
    users = [f"u{i}" for i in range(9)]
    for user in users:
        posting.topup(conn, user, 40, idempotency_key=f"fund-{user}", **OPS)
    text = "user,amount\n" + "".join(f"{users[i % 9]},{1 + i % 13}\n" for i in range(600))
    rows = parse(text, kind="spend", key_prefix="par").rows

    def connect() -> Any:
        return psycopg.connect(clean_db, autocommit=True)

    outcomes = bulk.post_rows_in_parallel(
        connect, "spend", rows, on_behalf_of="bulk", jobs=3, batch_size=40
    )
    assert [o.line for o in outcomes] == [row.line for row in rows]
    # Replaying the file on one connection, in order, must agree row for row.
    expected: dict[str, int] = {user: 40 for user in users}
    for row, outcome in zip(rows, outcomes, strict=True):
        if expected[row.user_id] >= row.amount:
            expected[row.user_id] -= row.amount
            assert (outcome.outcome, outcome.balance_after) == ("posted", expected[row.user_id])
        else:
            assert outcome.outcome == "insufficient"
    line_of_key = {row.idempotency_key: row.line for row in rows}
    per_user = conn.execute(
        "SELECT a.external_id, array_agg(t.idempotency_key ORDER BY t.id) "
        "FROM transactions t JOIN accounts a ON a.id = t.account_id "
        "WHERE t.idempotency_key LIKE 'par:%' GROUP BY 1"
    ).fetchall()
    for _, keys in per_user:
        lines = [line_of_key[key] for key in keys]
        assert lines == sorted(lines)
    assert_ledger_consistent(conn)
