"""The output contract: every command that prints data, in every format; tables on a
40-column and a 200-column terminal that never cut a number; values printed literally;
a posting that committed always exits 0; errors as JSON; times in UTC.

Terminals are simulated by handing the CLI an Environment (walletctl.cli.env), as httpie's
tests do: no pseudo-terminal needed."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from walletctl.cli import views
from walletctl.cli.app import app
from walletctl.cli.env import Environment
from walletctl.cli.output import FORMAT_NAMES

from .cli_helpers import Cli, leaf_commands
from .conftest import with_user

Conn = psycopg.Connection[Any]
BIG = 123_456_789  # wide enough that a cut number shows


@dataclass
class Ledger:
    """A ledger with something in every table the commands read, and ids to name."""

    url: str
    ops_role: str
    data_dir: Path
    topup_id: int = 0
    spend_id: int = 0
    reversible: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    rejectable: list[int] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=lambda: iter(range(10_000)))

    def next(self) -> int:
        return next(self.counter)


def _json(result: Any) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def ledger(clean_db: str, ops_role: str, tmp_path: Path) -> Ledger:
    su = Cli(clean_db, env={"WALLETCTL_CONFIRM_ABOVE": str(10 * BIG)})
    ops = Cli(with_user(clean_db, ops_role), env={"WALLETCTL_CONFIRM_ABOVE": str(10 * BIG)})
    found = Ledger(clean_db, ops_role, tmp_path / "data")
    assert su("asset", "add", "GOLD", "Gold Coins").exit_code == 0
    assert su("asset", "add", "POINTS", "Reward Points").exit_code == 0
    found.topup_id = _json(su("topup", "alice", str(BIG), "--key", "t1", "--json"))[
        "transaction_id"
    ]
    su("bonus", "alice", "54321", "--reason", "promo [red]x[/red]", "--json")
    found.spend_id = _json(su("spend", "alice", "98765", "--key", "s1", "--json"))["transaction_id"]
    su("topup", "[/x]", str(BIG + 1), "--asset", "POINTS")
    su("topup", "[red]bob", "7654321")
    for index in range(len(FORMAT_NAMES) + 1):
        found.reversible.append(
            _json(su("topup", "carol", "1000", "--key", f"r{index}", "--json"))["transaction_id"]
        )
    su("policy", "set", "GOLD", "--approve-above", str(2 * BIG))
    su("policy", "budget", ops_role, "GOLD", str(100 * BIG))
    for index in range(2 * len(FORMAT_NAMES) + 2):
        filed = _json(ops("topup", "dave", str(3 * BIG), "--key", f"q{index}", "--json"))
        (found.rejectable if index % 2 else found.pending).append(filed["request_id"])
    return found


# Every command, with arguments that succeed. A new command must be added here (the test
# below fails otherwise); `export` has formats of its own and is walked on its own; the
# cluster group needs a cluster and is walked in tests/test_cluster.py.
SAMPLES: dict[str, Callable[[Ledger], list[str]]] = {
    "topup": lambda x: ["topup", "erin", "100"],
    "bonus": lambda x: ["bonus", "erin", "10", "--reason", "promo"],
    "spend": lambda x: ["spend", "alice", "1"],
    "reverse": lambda x: ["reverse", str(x.reversible.pop()), "--reason", "undo"],
    "balance": lambda x: ["balance", "alice"],
    "audit": lambda x: ["audit", "alice"],
    "user list": lambda x: ["user", "list"],
    "user show": lambda x: ["user", "show", "alice"],
    "user freeze": lambda x: ["user", "freeze", "carol", "--reason", f"x{x.next()}"],
    "user unfreeze": lambda x: ["user", "unfreeze", "alice", "--reason", "x"],
    "asset add": lambda x: ["asset", "add", f"A{x.next()}", "An asset"],
    "asset list": lambda x: ["asset", "list"],
    "reconcile": lambda x: ["reconcile"],
    "seal": lambda x: ["seal"],
    "db upgrade": lambda x: ["db", "upgrade"],
    "db status": lambda x: ["db", "status"],
    "db roles": lambda x: ["db", "roles"],
    "db grant": lambda x: ["db", "grant", x.ops_role, "--as", "finance"],
    "db revoke": lambda x: ["db", "revoke", x.ops_role, "--as", "approver"],
    "db stop": lambda x: ["db", "stop"],
    "demo": lambda x: ["demo", "--yes", "--user", f"demo{x.next()}"],
    "policy set": lambda x: ["policy", "set", "POINTS", "--approve-above", "none"],
    "policy budget": lambda x: ["policy", "budget", "walletctl_operator", "POINTS", "none"],
    "policy show": lambda x: ["policy", "show"],
    "request list": lambda x: ["request", "list"],
    "request show": lambda x: ["request", "show", str(x.pending[0])],
    "request approve": lambda x: ["request", "approve", str(x.pending.pop())],
    "request reject": lambda x: ["request", "reject", str(x.rejectable.pop()), "--reason", "no"],
    "request expire": lambda x: ["request", "expire"],
}
EXTRA_SAMPLES: list[Callable[[Ledger], list[str]]] = [
    lambda x: ["balance", "--treasury"],
    lambda x: ["balance", "--all"],
    lambda x: ["audit", "--txn", str(x.spend_id)],
    lambda x: ["audit", "--key", "s1"],
    lambda x: ["audit", "--summary"],
    lambda x: ["audit", "--by-actor"],
    lambda x: ["audit", "alice", "--newest-first", "--limit", "1"],
]
# Several tables in one output: CSV holds one, so these refuse --format csv (exit 2).
SEVERAL_TABLES = {"demo", "policy show"}


def test_every_command_has_a_sample() -> None:
    cluster = {"cluster create", "cluster move", "cluster status"}
    assert {name for name, _ in leaf_commands()} - {"export"} - cluster == set(SAMPLES)


def _check(fmt: str, stdout: str) -> None:
    """The output is what the format promises."""
    if fmt == "json":
        assert isinstance(json.loads(stdout), dict), stdout
    elif fmt == "jsonl":
        lines = stdout.splitlines()
        assert all(isinstance(json.loads(line), dict) for line in lines), stdout
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(stdout)))
        assert rows and rows[0], stdout
        assert all(len(row) == len(rows[0]) for row in rows), stdout
    elif fmt == "tsv":
        assert stdout.strip()
        assert "\x1b[" not in stdout
    else:
        assert stdout.strip()


def test_every_command_in_every_format(ledger: Ledger) -> None:
    cli = Cli(
        ledger.url,
        env={
            "WALLETCTL_CONFIRM_ABOVE": str(10 * BIG),
            "WALLETCTL_DATA_DIR": str(ledger.data_dir),
        },
    )
    for name, sample in SAMPLES.items():
        for fmt in FORMAT_NAMES:
            args = [*sample(ledger), "--format", fmt]
            result = cli(*args)
            if fmt == "csv" and name in SEVERAL_TABLES:
                assert result.exit_code == 2 and "CSV holds one" in result.stderr, args
                continue
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
            _check(fmt, result.stdout)
    for sample in EXTRA_SAMPLES:
        for fmt in FORMAT_NAMES:
            args = [*sample(ledger), "--format", fmt]
            result = cli(*args)
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
            _check(fmt, result.stdout)


def test_export_formats_and_iso_times(ledger: Ledger) -> None:
    cli = Cli(ledger.url, env={"PGTZ": "Asia/Tokyo"})
    rows = list(csv.DictReader(io.StringIO(cli("export", "--format", "csv").stdout)))
    lines = [json.loads(line) for line in cli("export", "--format", "jsonl").stdout.splitlines()]
    iso_utc = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
    assert rows and all(iso_utc.fullmatch(row["created_at"]) for row in rows)
    assert [line["created_at"] for line in lines] == [row["created_at"] for row in rows]


def test_times_are_utc_whatever_the_session_time_zone(ledger: Ledger) -> None:
    """PGTZ sets the session's zone (libpq); walletctl's output stays in UTC."""
    tokyo = Cli(ledger.url, env={"PGTZ": "Asia/Tokyo"})
    utc = Cli(ledger.url, env={"PGTZ": "UTC"})
    posted = tokyo("topup", "alice", "1", "--key", "tz", "--json").stdout
    assert "+09:00" not in posted and "+00:00" in posted
    for args in (
        ["audit", "alice", "--json"],
        ["balance", "alice", "--json"],
        ["audit", "--txn", str(ledger.topup_id), "--json"],
        ["user", "list", "--json"],
        ["audit", "--key", "tz", "--json"],
    ):
        seen = tokyo(*args).stdout
        assert seen == utc(*args).stdout, args
        assert "+09:00" not in seen and "+00:00" in seen, args


# Terminals, simulated.

NUMERIC_KEYS = {
    column.key
    for value in vars(views).values()
    if isinstance(value, tuple)
    for column in value
    if getattr(column, "numeric", False)
} | {"amount", "balance_after", "balance"}


def _numbers(document: Any) -> set[int]:
    """The amounts in a JSON document that a table must show whole."""
    found: set[int] = set()
    if isinstance(document, dict):
        for key, value in document.items():
            if key in NUMERIC_KEYS and isinstance(value, int) and not isinstance(value, bool):
                if abs(value) >= 10_000:
                    found.add(value)
            else:
                found |= _numbers(value)
    elif isinstance(document, list):
        for item in document:
            found |= _numbers(item)
    return found


def terminal(width: int, *, colour: bool = False) -> Environment:
    return Environment(
        stdout_isatty=True,
        stdin_isatty=False,
        width=width,
        height=10_000,
        no_color=not colour,
        pager="",
    )


def run_on(env: Environment, url: str, *args: str) -> Any:
    runner = CliRunner(
        env={
            "WALLETCTL_DATABASE_URL": url,
            "WALLETCTL_CONFIG": "/dev/null",
            "WALLETCTL_CONFIRM_ABOVE": str(10 * BIG),
        }
    )
    return runner.invoke(app, list(args), obj=env)


READ_ONLY = [
    ["balance", "alice"],
    ["balance", "[/x]"],
    ["balance", "--treasury"],
    ["balance", "--all"],
    ["audit", "alice"],
    ["audit", "alice", "--newest-first"],
    ["audit", "--summary"],
    ["audit", "--by-actor"],
    ["audit", "--key", "s1"],
    ["user", "list"],
    ["user", "show", "alice"],
    ["asset", "list"],
    ["reconcile"],
    ["policy", "show"],
    ["request", "list"],
    ["db", "status"],
]


@pytest.mark.parametrize("width", [40, 200])
def test_no_number_is_cut_on_a_narrow_or_a_wide_terminal(ledger: Ledger, width: int) -> None:
    samples = [*READ_ONLY, ["audit", "--txn", str(ledger.spend_id)]]
    samples.append(["request", "show", str(ledger.pending[0])])
    for args in samples:
        as_json = Cli(ledger.url)(*args, "--format", "json")
        expected = _numbers(json.loads(as_json.stdout))
        shown = run_on(terminal(width), ledger.url, *args)
        assert shown.exit_code == 0, (args, shown.stdout, shown.stderr)
        assert "…" not in shown.stdout, (args, shown.stdout)
        for number in expected:
            assert f"{number:,}" in shown.stdout, (args, number, shown.stdout)
        assert all(len(line) <= width for line in shown.stdout.splitlines()), shown.stdout
    # Postings too: the receipt of a large amount.
    for args in (["topup", "zoe", str(BIG)], ["spend", "zoe", str(BIG - 1)]):
        shown = run_on(terminal(width), ledger.url, *args)
        assert shown.exit_code == 0, shown.stderr
        assert f"{int(args[2]):,}" in shown.stdout and "…" not in shown.stdout


def test_ledger_values_are_printed_literally_on_a_terminal(ledger: Ledger) -> None:
    for args, literal in (
        (["user", "list"], "[/x]"),
        (["user", "list"], "[red]bob"),
        (["balance", "[/x]"], "[/x]"),
        (["user", "show", "[/x]"], "[/x]"),
        (["audit", "[red]bob"], "[red]bob"),
        (["audit", "alice"], "promo [red]x[/red]"),
        (["topup", "[conceal]secret", "5"], "[conceal]secret"),
        (["topup", "[/z]", "7"], "[/z]"),
    ):
        shown = run_on(terminal(200, colour=True), ledger.url, *args)
        assert shown.exit_code == 0, (args, shown.stdout, shown.stderr)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", shown.stdout)
        assert literal in plain, (args, shown.stdout)
        assert "\x1b[31m" not in shown.stdout  # nothing turned red
        assert "\x1b[8m" not in shown.stdout  # nothing concealed


def test_control_characters_from_the_ledger_are_shown_escaped(ledger: Ledger, db: Conn) -> None:
    from .hostile import rewrite_text_as_superuser

    rewrite_text_as_superuser(ledger.url, ledger.spend_id, reason="clear\x1b[2Jscreen")
    shown = run_on(terminal(200), ledger.url, "audit", "alice")
    assert shown.exit_code == 0
    assert "\x1b[2J" not in shown.stdout and "\\x1b[2Jscreen" in shown.stdout


class BreaksOnce(io.StringIO):
    """A stdout whose first write fails (a renderer bug, a terminal gone odd)."""

    def __init__(self) -> None:
        super().__init__()
        self.broke = False

    def write(self, text: str) -> int:
        if not self.broke:
            self.broke = True
            raise RuntimeError("rendering failed")
        return super().write(text)


def test_a_posting_that_committed_exits_zero_and_prints_its_receipt(
    ledger: Ledger, db: Conn
) -> None:
    stdout = BreaksOnce()
    env = Environment(stdout=stdout, stdout_isatty=True, width=80, no_color=True, pager="")
    result = run_on(env, ledger.url, "topup", "frank", "42", "--key", "committed-1")
    assert result.exit_code == 0, result.stderr
    assert "transaction_id\t" in stdout.getvalue() and "frank" in stdout.getvalue()
    assert "written as plain text" in result.stderr
    posted = db.execute("SELECT count(*) FROM transactions WHERE idempotency_key = 'committed-1'")
    assert posted.fetchone() == (1,)


def test_errors_are_one_json_object_under_json(ledger: Ledger) -> None:
    cli = Cli(ledger.url)
    for args, code in (
        (["spend", "nobody", "5", "--format", "json"], 4),
        (["spend", "alice", str(10 * BIG), "--json", "--yes"], 3),
        (["audit", "alice", "--format", "jsonl", "--since", "soon"], 2),
        (["topup", "alice", "-5", "--json"], 2),
        (["balance", "--format=json", "--no-such-option"], 2),
    ):
        result = cli(*args)
        assert result.exit_code == code, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        error = json.loads(line)["error"]
        assert error["code"] == code and error["message"], args
    assert cli("spend", "nobody", "5").stderr.startswith("walletctl: error: ")


def test_a_negative_amount_is_quoted_as_typed(ledger: Ledger) -> None:
    result = Cli(ledger.url)("topup", "alice", "-123")
    assert result.exit_code == 2
    assert "got -123" in result.stderr


def test_long_tables_go_through_the_pager_on_a_terminal(ledger: Ledger, tmp_path: Path) -> None:
    paged = tmp_path / "paged.txt"
    env = Environment(stdout_isatty=True, width=120, height=5, no_color=True, pager=f"tee {paged}")
    result = run_on(env, ledger.url, "user", "list")
    assert result.exit_code == 0
    assert "alice" in paged.read_text()
    paged.unlink()
    quiet = Environment(
        stdout_isatty=True, width=120, height=5, no_color=True, pager=f"tee {paged}"
    )
    assert run_on(quiet, ledger.url, "user", "list", "--no-pager").exit_code == 0
    assert not paged.exists()


def test_a_statement_row_is_one_line_on_a_120_column_terminal(ledger: Ledger) -> None:
    """Columns a person can do without (key, on behalf of) go before rows wrap."""
    rows = json.loads(Cli(ledger.url)("audit", "alice", "--format", "json").stdout)["entries"]
    shown = run_on(terminal(120), ledger.url, "audit", "alice")
    body = [line for line in shown.stdout.splitlines() if line.startswith("│")]
    assert len(body) == len(rows) == 3, shown.stdout
    assert "Not shown at this width" in shown.stdout
    wide = run_on(terminal(200), ledger.url, "audit", "alice")
    assert "Not shown" not in wide.stdout and "s1" in wide.stdout  # the key, at 200


def test_a_notice_about_the_whole_report_goes_to_stderr_and_into_json() -> None:
    """The hook for notes such as a read replica's lag: a line on stderr, and a
    `notices` field of a JSON document (JSON lines carry rows only)."""
    from walletctl.cli.output import Format, Listing, Output, Record

    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, stdout_isatty=False).bind()
    env.notice("read from a standby 2.5 s behind the primary")
    Output(env, Format.JSON).record(Record({"user": "alice"}, title="x"))
    Output(env, Format.JSON).listing(Listing([{"a": 1}], [], title="x", name="rows"))
    Output(env, Format.JSONL).listing(Listing([{"a": 1}], [], title="x", name="rows"))
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["notices"] == second["notices"] == ["read from a standby 2.5 s behind the primary"]
    assert third == {"a": 1}
    assert err.getvalue() == "walletctl: note: read from a standby 2.5 s behind the primary\n"
