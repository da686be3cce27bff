"""Bad input of every kind: one clear line on stderr, its exit code, the database untouched."""

from __future__ import annotations

import json

import psycopg
import pytest

from .cli_helpers import Cli
from .helpers import ledger_snapshot

INVALID, INSUFFICIENT, NOT_FOUND, CONFLICT, UNAVAILABLE, REFUSED = 2, 3, 4, 5, 6, 8
TXN = "<txn>"  # replaced by the id of alice's top-up

CASES: list[tuple[str, list[str], int]] = [
    # amounts
    ("amount not a number", ["topup", "alice", "abc"], INVALID),
    ("amount with a fraction", ["topup", "alice", "1.5"], INVALID),
    ("amount zero", ["topup", "alice", "0"], INVALID),
    ("amount negative", ["spend", "alice", "-5"], INVALID),
    ("amount negative with a fraction", ["spend", "alice", "-0.5"], INVALID),
    ("amount negative after --", ["spend", "--", "alice", "-5"], INVALID),
    ("amount over bigint", ["topup", "alice", "9223372036854775808"], INVALID),
    ("amount NaN", ["topup", "alice", "NaN"], INVALID),
    ("amount inf", ["topup", "alice", "inf"], INVALID),
    ("amount in exponent form", ["topup", "alice", "1e3"], INVALID),
    ("amount hexadecimal", ["topup", "alice", "0x10"], INVALID),
    ("amount empty", ["topup", "alice", ""], INVALID),
    ("amount in non-ASCII digits", ["topup", "alice", "\u0661\u0662"], INVALID),
    (
        "amount that overflows the balance",
        ["topup", "alice", "9223372036854775807", "--yes"],
        INVALID,
    ),
    # users
    ("user empty", ["topup", "", "5"], INVALID),
    ("user of 10,000 characters", ["topup", "u" * 10_000, "5"], INVALID),
    ("user with a NUL", ["topup", "al\x00ice", "5"], INVALID),
    ("user with an escape sequence", ["topup", "bob\x1b[31m", "5"], INVALID),
    ("user with a newline", ["topup", "bob\nmallory", "5"], INVALID),
    ("user with surrounding spaces", ["topup", " alice", "5"], INVALID),
    ("unknown user spends", ["spend", "nobody", "5"], NOT_FOUND),
    ("SQL in a user id", ["spend", "x'); DROP TABLE accounts; --", "5"], NOT_FOUND),
    ("SQL in a balance lookup", ["balance", "' OR '1'='1"], NOT_FOUND),
    ("unknown user's statement", ["audit", "nobody"], NOT_FOUND),
    # assets
    ("unknown asset", ["topup", "alice", "5", "--asset", "SILVER"], NOT_FOUND),
    ("lower-case asset", ["topup", "alice", "5", "--asset", "gold"], INVALID),
    ("SQL in an asset", ["topup", "alice", "5", "--asset", "GOLD;DROP"], INVALID),
    ("asset code taken", ["asset", "add", "GOLD", "Gold again"], CONFLICT),
    ("asset name empty", ["asset", "add", "SILVER", ""], INVALID),
    # transactions
    ("transaction id not a number", ["reverse", "abc", "--reason", "x"], INVALID),
    ("transaction id negative", ["reverse", "--reason", "x", "--", "-1"], INVALID),
    ("transaction id over bigint", ["reverse", "99999999999999999999", "--reason", "x"], INVALID),
    ("unknown transaction", ["reverse", "999999", "--reason", "x"], NOT_FOUND),
    ("SQL in a transaction id", ["audit", "--txn", "1; DROP TABLE ledger_entries"], INVALID),
    ("reversal without a reason", ["reverse", TXN], INVALID),
    # keys
    ("key empty", ["topup", "alice", "5", "--key", ""], INVALID),
    ("key of 10,000 characters", ["topup", "alice", "5", "--key", "k" * 10_000], INVALID),
    ("key with a bell character", ["topup", "alice", "5", "--key", "k\x07"], INVALID),
    ("key reused for another amount", ["topup", "alice", "6", "--key", "seed"], CONFLICT),
    ("key reused for a spend", ["spend", "alice", "5", "--key", "seed"], CONFLICT),
    # reasons and actors
    ("bonus without a reason", ["bonus", "alice", "5"], INVALID),
    ("reason of 10,000 characters", ["topup", "alice", "5", "--reason", "r" * 10_000], INVALID),
    ("reason with control characters", ["topup", "alice", "5", "--reason", "a\x1b[2Jb"], INVALID),
    ("actor empty", ["topup", "alice", "5", "--actor", ""], INVALID),
    # dates and filters
    ("since not a date", ["audit", "alice", "--since", "yesterday"], INVALID),
    ("since an impossible date", ["audit", "alice", "--since", "2026-13-45"], INVALID),
    (
        "until before since",
        ["audit", "alice", "--since", "2026-02-01", "--until", "2026-01-01"],
        INVALID,
    ),
    ("as-of not a date", ["balance", "alice", "--as-of", "soon"], INVALID),
    ("limit zero", ["audit", "alice", "--limit", "0"], INVALID),
    ("limit not a number", ["audit", "alice", "--limit", "many"], INVALID),
    ("unknown kind", ["audit", "alice", "--kind", "refund"], INVALID),
    ("json and csv together", ["audit", "alice", "--json", "--csv"], INVALID),
    ("audit with nothing to show", ["audit"], INVALID),
    # funds and policy
    ("spend beyond the balance", ["spend", "alice", "101"], INSUFFICIENT),
    ("large amount without --yes", ["topup", "alice", "100001"], REFUSED),
    # usage
    ("unknown command", ["refund", "alice", "5"], INVALID),
    ("unknown option", ["topup", "alice", "5", "--amount", "7"], INVALID),
    ("missing argument", ["topup", "alice"], INVALID),
    # where the database is
    ("URL that is not a URL", ["--database-url", "not a url", "balance", "alice"], INVALID),
    (
        "URL of another database kind",
        ["--database-url", "mysql://root@localhost/x", "balance", "alice"],
        INVALID,
    ),
    (
        "URL with a bad port",
        ["--database-url", "postgresql://u@localhost:99999999/x", "balance", "alice"],
        INVALID,
    ),
    (
        "URL with an unknown parameter",
        ["--database-url", "postgresql://u@localhost/x?colour=red", "balance", "alice"],
        INVALID,
    ),
    (
        "server that is not there",
        ["--database-url", "postgresql://postgres@127.0.0.1:1/x", "balance", "alice"],
        UNAVAILABLE,
    ),
]


@pytest.fixture(scope="module")
def seeded(database_url: str) -> tuple[str, int]:
    """One ledger for the whole table: alice holds 100 GOLD from the top-up keyed 'seed'."""
    from .conftest import truncate_everything

    truncate_everything(database_url)
    cli = Cli(database_url)
    assert cli("asset", "add", "GOLD", "Gold Coins").exit_code == 0
    result = cli("topup", "alice", "100", "--key", "seed", "--json")
    assert result.exit_code == 0
    import json

    return database_url, json.loads(result.stdout)["transaction_id"]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("args", "expected"),
    [(args, code) for _, args, code in CASES],
    ids=[name for name, _, _ in CASES],
)
def test_bad_input_is_refused_cleanly(
    seeded: tuple[str, int], args: list[str], expected: int
) -> None:
    url, seed_transaction = seeded
    args = [str(seed_transaction) if arg == TXN else arg for arg in args]
    with psycopg.connect(url, autocommit=True) as conn:
        before = ledger_snapshot(conn)
        result = Cli(url)(*args)
        after = ledger_snapshot(conn)
    assert result.exit_code == expected, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    if "--json" in args:  # asked for JSON: the error is one JSON object
        error = json.loads(lines[0])["error"]
        assert (error["code"], error["name"]) == (expected, "invalid_input")
    else:
        assert lines[0].startswith("walletctl: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert after == before
