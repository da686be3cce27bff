"""A bulk file survives anything: kill -9 mid-batch, a dropped connection, PostgreSQL
restarted mid-run. Running the file again posts exactly the missing rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from walletctl import embedded
from walletctl.core import bulk

from . import embedded_helpers
from .cli_helpers import run_process
from .conftest import through_pgbouncer_too
from .helpers import assert_ledger_consistent

# Data folders the embedded server's account can reach as root (conftest's are in a 0700
# folder, and walletctl never widens one).
open_tmp = embedded_helpers.open_tmp
data_dir = embedded_helpers.data_dir

ROWS = 12_000
USERS = 500


def write_file(path: Path) -> tuple[str, dict[str, int]]:
    expected: dict[str, int] = {}
    lines = ["user,amount"]
    for row in range(1, ROWS + 1):
        user = f"user-{(row * 7919) % USERS}"
        amount = 1 + row % 97
        expected[user] = expected.get(user, 0) + amount
        lines.append(f"{user},{amount}")
    path.write_text("\n".join(lines) + "\n")
    return str(path), expected


def command(file: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "walletctl",
        "topup",
        "--file",
        file,
        "--key-prefix",
        "night",
        "--batch-size",
        "100",
        "--yes",
    ]


def posted_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM transactions WHERE idempotency_key LIKE 'night:%'"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def file_keys(file: str) -> set[str]:
    """The keys the file's rows carry with --key-prefix night (one per row)."""
    parsed = bulk.parse_file(
        Path(file).read_bytes(),
        name=file,
        kind="topup",
        default_asset="GOLD",
        key_prefix="night",
        default_reason=None,
    )
    assert len(parsed.rows) == ROWS and not parsed.invalid
    return {row.idempotency_key for row in parsed.rows}


def assert_every_row_once(url: str, expected: dict[str, int], file: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        keys = conn.execute(
            "SELECT idempotency_key FROM transactions WHERE idempotency_key LIKE 'night:%'"
        ).fetchall()
        assert sorted(key for (key,) in keys) == sorted(file_keys(file))
        held = dict(
            conn.execute(
                "SELECT a.external_id, b.balance FROM balances b "
                "JOIN accounts a ON a.id = b.account_id"
            ).fetchall()
        )
        assert held == expected
        assert_ledger_consistent(conn)


@pytest.fixture
def env(clean_db: str, routed: Callable[[str], str]) -> dict[str, str]:
    environment = {
        "WALLETCTL_DATABASE_URL": routed(clean_db),
        "WALLETCTL_CONFIG": os.devnull,  # no config file
        "WALLETCTL_ACTOR": "cron",
    }
    assert run_process("asset", "add", "GOLD", "Gold Coins", env=environment).exit_code == 0
    return environment


def _start(file: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(file),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@through_pgbouncer_too
def test_kill_9_mid_batch_then_run_again(
    env: dict[str, str], clean_db: str, tmp_path: Path
) -> None:
    file, expected = write_file(tmp_path / "night.csv")
    process = _start(file, env)
    wait_until(lambda: posted_rows(clean_db) > 0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert 0 < posted_rows(clean_db) < ROWS, "the run must have been killed mid-way"

    again = run_process(*command(file)[3:], env=env, timeout=300)
    assert again.exit_code == 0, again.stderr
    assert_every_row_once(clean_db, expected, file)


@through_pgbouncer_too
def test_connection_dropped_mid_run_then_run_again(
    env: dict[str, str], clean_db: str, tmp_path: Path
) -> None:
    file, expected = write_file(tmp_path / "night.csv")
    process = _start(file, env)
    wait_until(lambda: posted_rows(clean_db) > 0)
    with psycopg.connect(clean_db, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'walletctl' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 6, stderr
    assert "retry it with the same idempotency key" in stderr or "connection" in stderr
    assert 0 < posted_rows(clean_db) < ROWS

    again = run_process(*command(file)[3:], env=env, timeout=300)
    assert again.exit_code == 0, again.stderr
    assert_every_row_once(clean_db, expected, file)


@through_pgbouncer_too
def test_a_second_run_of_the_same_file_at_once_exits_with_a_clear_message(
    env: dict[str, str], clean_db: str, tmp_path: Path
) -> None:
    file, expected = write_file(tmp_path / "night.csv")
    first = _start(file, env)
    wait_until(lambda: posted_rows(clean_db) > 0)
    second = run_process(*command(file)[3:], env=env)
    assert second.exit_code == 8
    assert "another walletctl is posting this file" in second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert_every_row_once(clean_db, expected, file)


@pytest.mark.embedded
def test_postgresql_restarted_mid_run_then_run_again(data_dir: Path, tmp_path: Path) -> None:
    env = {
        "WALLETCTL_DATABASE_URL": "",
        "WALLETCTL_DATA_DIR": str(data_dir),
        "WALLETCTL_CONFIG": os.devnull,  # no config file
        "WALLETCTL_ACTOR": "cron",
    }
    try:
        assert run_process("asset", "add", "GOLD", "Gold Coins", env=env).exit_code == 0
        url = embedded.running_server(data_dir).url()  # type: ignore[union-attr]
        file, expected = write_file(tmp_path / "night.csv")
        process = _start(file, env)
        wait_until(lambda: posted_rows(url) > 0)
        embedded.stop(data_dir, mode="immediate")  # a crash, as far as PostgreSQL knows
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 6, stderr

        # The next command starts the server again (crash recovery), and the file finishes.
        again = run_process(*command(file)[3:], env=env, timeout=300)
        assert again.exit_code == 0, again.stderr
        url = embedded.running_server(data_dir).url()  # type: ignore[union-attr]
        assert_every_row_once(url, expected, file)
    finally:
        run_process("db", "stop", env=env)
