"""Bulk files with no blind spots: keys that survive edits of the file, and "validated
before posting" meaning everything that can be known before posting."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import bulk, validation
from walletctl.errors import InvalidAmount

from .cli_helpers import Cli
from .helpers import assert_ledger_consistent, balance_of, ledger_snapshot

Conn = psycopg.Connection[Any]


def outcomes(result: Any) -> dict[str, int]:
    assert result.exit_code in (0, 9), result.stderr
    return json.loads(result.stdout)["outcomes"]  # type: ignore[no-any-return]


def test_keys_survive_rows_inserted_deleted_and_reordered(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    first = [
        ("alice", 10),
        ("bob", 20),
        ("alice", 10),  # identical rows are told apart by their count, not their place
        ("carol", 30),
        ("dave", 40),
        ("alice", 10),
        ("erin", 50),
    ]
    path = tmp_path / "rows.csv"

    def run(rows: list[tuple[str, int]]) -> dict[str, int]:
        path.write_text("user,amount\n" + "".join(f"{u},{a}\n" for u, a in rows))
        return outcomes(cli("topup", "--file", str(path), "--key-prefix", "promo", "--json"))

    assert run(first)["posted"] == 7

    # A row inserted at the top, one deleted in the middle (carol), the rest reordered.
    edited = [("frank", 60)] + [first[i] for i in (6, 2, 4, 0, 1, 5)]
    again = run(edited)
    assert (again["posted"], again["replayed"], again["conflict"]) == (1, 6, 0)

    # And back: the first version finds every one of its rows posted.
    back = run(first)
    assert (back["posted"], back["replayed"], back["conflict"]) == (0, 7, 0)
    held = {user: balance_of(db, user) for user in ("alice", "bob", "carol", "dave", "erin")}
    assert held == {"alice": 30, "bob": 20, "carol": 30, "dave": 40, "erin": 50}
    assert balance_of(db, "frank") == 60
    assert db.execute("SELECT count(*) FROM transactions").fetchone() == (8,)
    assert_ledger_consistent(db)


def test_identical_rows_are_counted_not_placed(cli: Cli, db: Conn, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    alice, bob = '{"user": "alice", "amount": 5}\n', '{"user": "bob", "amount": 7}\n'

    def run(text: str) -> dict[str, int]:
        path.write_text(text)
        return outcomes(cli("topup", "--file", str(path), "--key-prefix", "d", "--json"))

    assert run(alice * 3)["posted"] == 3
    # Another row at the top and a fourth alice: those two post, the three alices replay.
    again = run(bob + alice * 4)
    assert (again["posted"], again["replayed"], again["conflict"]) == (2, 3, 0)
    # Fewer identical rows than were posted: the rest replay, nothing is taken back.
    fewer = run(alice * 2 + bob)
    assert (fewer["posted"], fewer["replayed"], fewer["conflict"]) == (0, 3, 0)
    assert (balance_of(db, "alice"), balance_of(db, "bob")) == (20, 7)


def test_the_derived_key_names_what_the_row_is() -> None:
    key = bulk.derived_key("p", "alice", "GOLD", 10, 1)
    assert key.startswith("p:") and len(key) == 2 + 32
    others = {
        bulk.derived_key("p", "alice", "GOLD", 10, 2),
        bulk.derived_key("p", "alice", "GOLD", 11, 1),
        bulk.derived_key("p", "alice", "GEMS", 10, 1),
        bulk.derived_key("p", "bob", "GOLD", 10, 1),
        bulk.derived_key("q", "alice", "GOLD", 10, 1),
    }
    assert key not in others and len(others) == 5


def test_a_prefix_used_with_row_number_keys_is_refused(cli: Cli, db: Conn, tmp_path: Path) -> None:
    """A file posted by an earlier version (keys P:1, P:2, ...) must not post again."""
    db.execute("SELECT walletctl_post('topup', 'alice', 'GOLD', 10, 'march:1', NULL, 'old')")
    path = tmp_path / "march.csv"
    path.write_text("user,amount\nalice,10\nbob,20\n")
    before = ledger_snapshot(db)
    for extra in ((), ("--validate-only",)):
        result = cli("topup", "--file", str(path), "--key-prefix", "march", *extra)
        assert result.exit_code == 2
        assert "march:1" in result.stderr and "would post its rows again" in result.stderr
    assert ledger_snapshot(db) == before
    assert cli("topup", "--file", str(path), "--key-prefix", "march-2").exit_code == 0


def test_unknown_assets_and_spends_of_unknown_users_are_bad_rows_before_posting(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    cli("topup", "alice", "100")
    spends = tmp_path / "spends.csv"
    spends.write_text("user,amount,asset\nalice,10,GOLD\nalice,5,NOPE\nnobody,1,GOLD\n")
    before = ledger_snapshot(db)
    for extra in (("--validate-only",), ()):
        result = cli("spend", "--file", str(spends), "--key-prefix", "s", *extra)
        assert result.exit_code == 2, result.stderr
        assert "walletctl: line 3: asset NOPE does not exist" in result.stderr
        assert "walletctl: line 4: user nobody does not exist" in result.stderr
        assert ledger_snapshot(db) == before
    skipped = cli("spend", "--file", str(spends), "--key-prefix", "s", "--skip-invalid", "--json")
    assert skipped.exit_code == 9
    assert outcomes(skipped)["posted"] == 1 and outcomes(skipped)["invalid"] == 2

    # Credits create their user: only the asset is a bad row.
    credits = tmp_path / "credits.csv"
    credits.write_text("user,amount,asset\nnewcomer,1,GOLD\nnewcomer,1,NOPE\n")
    checked = cli("topup", "--file", str(credits), "--key-prefix", "c", "--validate-only")
    assert checked.exit_code == 2
    assert "line 3: asset NOPE does not exist" in checked.stderr
    assert "line 2" not in checked.stderr


@pytest.mark.parametrize("target", ["a-directory", "missing/report.csv"])
def test_a_report_that_cannot_be_written_is_refused_before_posting(
    cli: Cli, db: Conn, tmp_path: Path, target: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    rows = tmp_path / "rows.csv"
    rows.write_text("user,amount\nalice,10\n")
    before = ledger_snapshot(db)
    result = cli(
        "topup", "--file", str(rows), "--key-prefix", "r", "--report", str(tmp_path / target)
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--report" in result.stderr
    assert ledger_snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory", "rows.csv"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_report_refused_after_posting_says_the_rows_were_posted_and_exits_13(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    """/dev/full passes the check before posting (it is writable) and refuses the write:
    the rows are in the ledger, so the run says so (exit 13, not 'invalid input'), and
    running it again replays them."""
    rows = tmp_path / "rows.csv"
    rows.write_text("user,amount\nalice,10\nbob,5\n")
    result = cli(
        "topup", "--file", str(rows), "--key-prefix", "f", "--report", "/dev/full", "--json"
    )
    assert result.exit_code == 13, result.output
    assert json.loads(result.stdout)["outcomes"]["posted"] == 2
    assert result.stderr.count("\n") == 1
    assert "No space left on device" in result.stderr and "2 row(s) posted" in result.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert balance_of(db, "alice") == 10 and balance_of(db, "bob") == 5
    again = cli(
        "topup", "--file", str(rows), "--key-prefix", "f", "--report", str(tmp_path / "r.csv"),
        "--json",
    )  # fmt: skip
    assert again.exit_code == 0 and json.loads(again.stdout)["outcomes"]["replayed"] == 2
    assert balance_of(db, "alice") == 10


def test_a_report_into_a_link_or_a_named_pipe_writes_through_it_and_replaces_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    """As a shell's > would: the link stays and its target is written; a named pipe (like
    /dev/null or /dev/stdout, which as root a rename would replace for the whole machine)
    stays a pipe and its reader gets the report."""
    rows = tmp_path / "rows.csv"
    rows.write_text("user,amount\nalice,10\n")
    (tmp_path / "reports").mkdir()
    link = tmp_path / "latest.csv"
    link.symlink_to(tmp_path / "reports" / "today.csv")
    result = cli("topup", "--file", str(rows), "--key-prefix", "r", "--report", str(link))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "reports" / "today.csv")
    assert "alice" in (tmp_path / "reports" / "today.csv").read_text()

    pipe = tmp_path / "report.pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    # A daemon: if the pipe were replaced, its reader would wait for ever, not the run.
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    result = cli("topup", "--file", str(rows), "--key-prefix", "r", "--report", str(pipe))
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(pipe.lstat().st_mode)
    reader.join(timeout=30)
    assert received and "replayed" in received[0]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1500", 1500),
        ("1_500", 1500),
        ("1,500", 1500),
        ("12,345,678", 12_345_678),
        ("1_000_000", 1_000_000),
        (" 7 ", 7),
        ("1,5", None),
        (",,7,,", None),
        ("1__0", None),
        ("1,500_000", None),
        ("1,5000", None),
        ("1234,567", None),
        ("_1", None),
        ("1,", None),
        ("1.5", None),
        ("٣", None),
        ("9" * 5000, None),
    ],
)
def test_amounts_accept_only_groups_of_three(
    cli: Cli, db: Conn, tmp_path: Path, text: str, value: int | None
) -> None:
    if value is None:
        with pytest.raises(InvalidAmount):
            validation.parse_amount(text)
    else:
        assert validation.parse_amount(text) == value
    before = ledger_snapshot(db)
    single = cli("topup", "alice", text, "--key", "single", "--yes")
    rows = tmp_path / "rows.csv"
    rows.write_text(f'user,amount\nalice,"{text}"\n')
    from_file = cli("topup", "--file", str(rows), "--key-prefix", "f", "--yes")
    if value is None:
        assert (single.exit_code, from_file.exit_code) == (2, 2)
        assert "line 2: amount" in from_file.stderr
        assert ledger_snapshot(db) == before
    else:
        assert (single.exit_code, from_file.exit_code) == (0, 0), from_file.stderr
        assert balance_of(db, "alice") == 2 * value


def test_json_values_that_are_not_one_value_are_bad_rows(
    cli: Cli, db: Conn, tmp_path: Path
) -> None:
    lines = [
        '{"user": "alice", "amount": 1}',
        '{"user": ["alice"], "amount": 1}',
        '{"user": "bob", "amount": 1, "asset": {"code": "GOLD"}}',
        '{"user": "carol", "amount": 1, "reason": ["a", "b"]}',
        '{"user": "dave", "amount": [1]}',
        '{"user": "erin", "amount": ' + "9" * 5000 + "}",
        '{"user": "frank", "amount": 1, "key": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"user": {}, "amount": 1}',
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = ledger_snapshot(db)
    result = cli("topup", "--file", str(path), "--key-prefix", "j")
    assert result.exit_code == 2, result.stderr
    reported = [line for line in result.stderr.splitlines() if line.startswith("walletctl: line")]
    assert [line.split(":")[1] for line in reported] == [f" line {n}" for n in range(2, 9)]
    assert "user must be one value, got a JSON array" in reported[0]
    assert "asset must be one value, got a JSON object" in reported[1]
    assert ledger_snapshot(db) == before
    skipped = cli("topup", "--file", str(path), "--key-prefix", "j", "--skip-invalid", "--json")
    assert skipped.exit_code == 9 and outcomes(skipped)["posted"] == 1


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"user": "alice", "amount": 1, "asset": 0}', "asset code must be"),
        ('{"user": "alice", "amount": 1, "asset": false}', "asset code must be"),
        ('{"user": "alice", "amount": 1, "key": 0}', "use one of them"),
        ('{"user": "alice", "amount": 1, "reason": false}', "reason must be text"),
    ],
)
def test_a_json_zero_or_false_is_a_wrong_value_not_a_missing_one(line: str, error: str) -> None:
    parsed = bulk.parse_file(
        (line + "\n").encode(),
        name="rows.jsonl",
        kind="topup",
        default_asset="GOLD",
        key_prefix="p",
        default_reason="default",
    )
    assert not parsed.rows and error in parsed.invalid[0].error


def test_an_oversized_csv_field_is_a_bad_row(cli: Cli, db: Conn, tmp_path: Path) -> None:
    huge = "x" * 200_000
    path = tmp_path / "rows.csv"
    path.write_text(
        "user,amount,reason\n"
        "alice,1,ok\n"
        f'bob,1,"{huge}"\n'
        f"{huge},1,ok\n"
        f"carol,{'9' * 200_000},ok\n"
        "dave,1,ok\n"
    )
    before = ledger_snapshot(db)
    result = cli("topup", "--file", str(path), "--key-prefix", "big")
    assert result.exit_code == 2, result.stderr
    reported = [line[:40] for line in result.stderr.splitlines() if "line" in line]
    assert reported[:3] == [
        "walletctl: line 3: reason is 200000 char",
        "walletctl: line 4: user id is 200000 cha",
        "walletctl: line 5: amount '9999999999999",
    ]
    assert max(len(line) for line in result.stderr.splitlines()) < 300
    assert ledger_snapshot(db) == before
    skipped = cli("topup", "--file", str(path), "--key-prefix", "big", "--skip-invalid", "--json")
    assert skipped.exit_code == 9 and outcomes(skipped)["posted"] == 2


def test_stdin_without_a_final_newline_is_refused_unless_allowed(cli: Cli, db: Conn) -> None:
    cut = "user,amount\nalice,10\nbob,10"
    before = ledger_snapshot(db)
    refused = cli("topup", "--file", "-", "--key-prefix", "in", input=cut)
    assert refused.exit_code == 2
    assert "line 3, the last, has no newline" in refused.stderr
    assert ledger_snapshot(db) == before
    allowed = cli(
        "topup", "--file", "-", "--key-prefix", "in", "--allow-unterminated", "--json", input=cut
    )
    assert outcomes(allowed)["posted"] == 2
    whole = cli("topup", "--file", "-", "--key-prefix", "in", "--json", input=cut + "\n")
    assert outcomes(whole)["replayed"] == 2
    assert cli("topup", "alice", "1", "--allow-unterminated").exit_code == 2
