"""Exports whose structure no value can change: hostile text written past walletctl's own
checks (as a superuser) still gives journals hledger and beancount read as walletctl
wrote them, and CSV a spreadsheet will not run."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import csv_cells, posting
from walletctl.core.export import export
from walletctl.errors import WalletError

from .cli_helpers import Cli
from .conftest import truncate_everything
from .hostile import HOSTILE_TEXTS, rewrite_text_as_superuser
from .test_finance import _beancount_balances, _hledger_balances, walletctl_balances

Conn = psycopg.Connection[Any]
FORMULA_USERS = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "+1", "-2+3", "-120"]

needs_hledger = pytest.mark.skipif(shutil.which("hledger") is None, reason="no hledger")


def _unescape(text: str) -> str:
    """Reads back the escapes walletctl writes in hledger text."""
    return re.sub(
        r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})",
        lambda found: chr(int(found.group(1)[1:], 16)),
        text,
    )


def hostile_ledger(conn: Conn, url: str) -> dict[int, tuple[str, str, str]]:
    """Postings whose reason, key and actor are hostile text, over users whose ids look like
    formulas; returns transaction id -> (narration, key, actor) as walletctl holds them."""
    users = ["alice", *FORMULA_USERS]
    expected: dict[int, tuple[str, str, str]] = {}
    for index, text in enumerate(HOSTILE_TEXTS):
        user = users[index % len(users)]
        credit = posting.topup(
            conn, user, 1_000 + index, asset="GOLD", idempotency_key=f"t{index}", on_behalf_of="ops"
        )
        spend = posting.spend(
            conn, user, 1 + index, asset="GOLD", idempotency_key=f"s{index}", on_behalf_of="ops"
        )
        for receipt, kind in ((credit, "topup"), (spend, "spend")):
            key, actor = f"{text}#{kind}{index}", f"{text}@{kind}"
            rewrite_text_as_superuser(
                url, receipt.transaction_id, reason=text, idempotency_key=key, actor=actor
            )
            expected[receipt.transaction_id] = (
                f"{kind} {receipt.transaction_id}: {text}",
                key,
                actor,
            )
    return expected


@needs_hledger
def test_hostile_text_cannot_bend_the_hledger_journal(
    conn: Conn, clean_db: str, tmp_path: Path
) -> None:
    expected = hostile_ledger(conn, clean_db)
    path = tmp_path / "hostile.journal"
    with path.open("w", encoding="utf-8") as out:
        assert export(conn, out, "ledger") == len(expected)
    assert _hledger_balances(path) == walletctl_balances(conn)
    printed = subprocess.run(
        ["hledger", "-f", str(path), "print", "-O", "csv"],
        capture_output=True,
        text=True,
        check=True,
    )
    seen: dict[int, tuple[str, str, str]] = {}
    postings: dict[int, int] = defaultdict(int)
    for row in csv.DictReader(io.StringIO(printed.stdout)):
        tags = dict(part.split(":", 1) for part in row["comment"].split(", "))
        transaction_id = int(tags["transaction"])
        seen[transaction_id] = (
            _unescape(row["description"]),
            _unescape(tags["key"]),
            _unescape(tags["actor"]),
        )
        postings[transaction_id] += 1
    assert seen == expected
    assert set(postings.values()) == {2}


def test_hostile_text_cannot_bend_the_beancount_file(
    conn: Conn, clean_db: str, tmp_path: Path
) -> None:
    expected = hostile_ledger(conn, clean_db)
    path = tmp_path / "hostile.beancount"
    with path.open("w", encoding="utf-8") as out:
        assert export(conn, out, "beancount") == len(expected)
    assert _beancount_balances(path) == walletctl_balances(conn)
    from beancount import loader
    from beancount.core import data

    entries, errors, _ = loader.load_file(str(path))
    assert errors == []
    seen = {
        int(entry.meta["transaction_id"]): (
            entry.narration,
            entry.meta["idempotency_key"],
            entry.meta["actor"],
        )
        for entry in entries
        if isinstance(entry, data.Transaction)
    }
    assert seen == expected


def test_an_asset_code_outside_the_commodity_syntax_is_refused(
    conn: Conn, clean_db: str, tmp_path: Path
) -> None:
    """A superuser who drops the CHECK on asset codes cannot get a broken journal out."""
    with psycopg.connect(clean_db, autocommit=True) as admin:
        (definition,) = admin.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_asset_types_code_format'"
        ).fetchone() or ("",)
        assert definition
        admin.execute("ALTER TABLE asset_types DROP CONSTRAINT ck_asset_types_code_format")
        try:
            admin.execute("INSERT INTO asset_types (code, name) VALUES (%s, 'bad')", ('B"D\n',))
            admin.execute(
                "SELECT walletctl_post('topup', 'alice', %s, 5, 'k', NULL, 'ops')", ('B"D\n',)
            )
            for fmt in ("ledger", "beancount"):
                with pytest.raises(WalletError, match="not a valid commodity"):
                    export(conn, io.StringIO(), fmt)  # type: ignore[arg-type]
        finally:
            truncate_everything(clean_db)
            admin.execute(
                f"ALTER TABLE asset_types ADD CONSTRAINT ck_asset_types_code_format {definition}"
            )


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _assert_no_formula(cells: list[str]) -> None:
    for cell in cells:
        if cell[:1] in csv_cells.FORMULA_STARTS:
            assert re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", cell), cell


def test_csv_export_neutralises_formulas_unless_raw(
    cli: Cli, db: Conn, clean_db: str, tmp_path: Path
) -> None:
    for index, user in enumerate(FORMULA_USERS):
        # "--": ids such as -120 are arguments, not options.
        assert (
            cli("topup", "--reason", '=HYPERLINK("http://x","y")', "--", user, "100").exit_code == 0
        )
        assert (
            cli("spend", "--key", f"@key{index}", "--reason", "shop", "--", user, "5").exit_code
            == 0
        )
    # Control characters get into a reason only past the database's text rules.
    (last,) = db.execute("SELECT max(id) FROM transactions").fetchone()  # type: ignore[misc]
    rewrite_text_as_superuser(clean_db, last - 2, reason="\t=1+1")
    rewrite_text_as_superuser(clean_db, last, reason="\r=2+2", actor="-actor")

    result = cli("export", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    cells = _cells(result.stdout)
    _assert_no_formula(cells)
    for neutralised in (
        "'=cmd|' /C calc'!A0",
        "'@SUM(1+1)",
        "'-2+3",
        '\'=HYPERLINK("http://x","y")',
        "'\t=1+1",
        "'\r=2+2",
        "'@key0",
        "'-actor",
    ):
        assert neutralised in cells
    # Numbers are data: a signed amount, a user id that is a number.
    assert "-5" in cells and "-100" in cells and "-120" in cells and "+1" in cells
    assert "'-120" not in cells and "'-5" not in cells

    raw = cli("export", "--format", "csv", "--raw-csv")
    assert raw.exit_code == 0
    raw_cells = _cells(raw.stdout)
    assert "=cmd|' /C calc'!A0" in raw_cells and "\r=2+2" in raw_cells
    assert not any(cell.startswith("'") for cell in raw_cells)
    assert [len(row) for row in csv.reader(io.StringIO(raw.stdout))] == [
        len(row) for row in csv.reader(io.StringIO(result.stdout))
    ]
    assert "exported 20 entries" in raw.stderr  # a line break in a value is not a row
    assert cli("export", "--format", "ledger", "--raw-csv").exit_code == 2


def test_csv_listings_neutralise_formulas_unless_raw(cli: Cli) -> None:
    user = "=cmd|' /C calc'!A0"
    cli("topup", user, "100", "--reason", "@SUM(A1:A9)")
    cli("spend", user, "30", "--reason", "+1+1")
    assert cli("topup", "--", "-120", "7").exit_code == 0

    listed = _cells(cli("user", "list", "--csv").stdout)
    _assert_no_formula(listed)
    assert "'=cmd|' /C calc'!A0" in listed and "-120" in listed
    statement = cli("audit", user, "--csv")
    assert statement.exit_code == 0
    cells = _cells(statement.stdout)
    _assert_no_formula(cells)
    assert "'@SUM(A1:A9)" in cells and "'+1+1" in cells and "-30" in cells

    assert user in _cells(cli("user", "list", "--raw-csv").stdout)
    assert "+1+1" in _cells(cli("audit", user, "--raw-csv").stdout)
    assert cli("user", "list", "--json", "--raw-csv").exit_code == 2


def test_a_csv_bulk_report_neutralises_formulas_unless_raw(cli: Cli, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("user,amount\n@SUM(1+1),10\n=1+2,-5\n")
    report = tmp_path / "report.csv"
    result = cli(
        "topup", "--file", str(rows), "--key-prefix", "r", "--skip-invalid", "--report", str(report)
    )
    assert result.exit_code == 9, result.stderr
    cells = _cells(report.read_text())
    _assert_no_formula(cells)
    assert "'@SUM(1+1)" in cells and "'=1+2" in cells and "-5" in cells

    raw_report = tmp_path / "raw.csv"
    cli(
        "topup",
        "--file",
        str(rows),
        "--key-prefix",
        "r",
        "--skip-invalid",
        "--report",
        str(raw_report),
        "--raw-csv",
    )
    raw_cells = _cells(raw_report.read_text())
    assert "@SUM(1+1)" in raw_cells and "=1+2" in raw_cells


def test_the_sql_and_python_rules_agree(conn: Conn) -> None:
    samples = [
        "=1",
        "+1",
        "-1",
        "-120",
        "+5",
        "-1.5",
        "-1.",
        "-.5",
        "1-1",
        "@x",
        "\tx",
        "\rx",
        "\nx",
        " =1",
        "'=1",
        "-1e5",
        "--1",
        "-",
        "",
        "plain",
        "-١٢",
    ]
    expression = csv_cells.neutralised_sql("sample")
    rows = conn.execute(
        f"SELECT sample, {expression} FROM unnest(%s::text[]) WITH ORDINALITY AS s(sample, n) "
        "ORDER BY n",
        (samples,),
    ).fetchall()
    assert [(sample, csv_cells.neutralised(sample)) for sample in samples] == rows
    assert csv_cells.neutralised("-1.5") == "-1.5" and csv_cells.neutralised("-1e5") == "'-1e5"
