"""The demo never writes into a configured server's ledger unless told to, and never twice."""

from __future__ import annotations

from typing import Any

import psycopg

from .cli_helpers import Cli
from .helpers import balance_of, ledger_snapshot


def test_the_demo_refuses_a_configured_server_without_yes(
    clean_db: str, db: psycopg.Connection[Any]
) -> None:
    before = ledger_snapshot(db)
    result = Cli(clean_db)("demo")
    assert result.exit_code == 8
    assert "--yes" in result.stderr and "WALLETCTL_DATABASE_URL" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert ledger_snapshot(db) == before


def test_the_demo_with_yes_posts_once_however_often_it_runs(
    clean_db: str, db: psycopg.Connection[Any]
) -> None:
    cli = Cli(clean_db)
    first = cli("demo", "--yes")
    assert first.exit_code == 0, first.output
    second = cli("demo", "--yes")
    assert second.exit_code == 0, second.output
    assert balance_of(db, "demo-user") == 430
    row = db.execute("SELECT count(*) FROM transactions").fetchone()
    assert row is not None and row[0] == 3


def test_the_demo_refuses_a_format_it_cannot_print_before_posting(
    clean_db: str, db: psycopg.Connection[Any]
) -> None:
    # It prints three tables: CSV holds one, so --format csv is refused before anything is
    # posted (a refusal after the postings would report a success as a failure).
    before = ledger_snapshot(db)
    result = Cli(clean_db)("demo", "--yes", "--format", "csv")
    assert result.exit_code == 2
    assert "CSV holds one" in result.stderr
    assert ledger_snapshot(db) == before
