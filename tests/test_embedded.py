"""The embedded default, from nothing: a real server from the wheel, in a fresh data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from walletctl import embedded

from . import embedded_helpers
from .cli_helpers import run_process
from .embedded_helpers import embedded_env

# Data folders the server's account can reach as root (conftest's are under a 0700 folder).
open_tmp = embedded_helpers.open_tmp
data_dir = embedded_helpers.data_dir

pytestmark = pytest.mark.embedded

_env = embedded_env


def test_embedded_default_from_nothing(data_dir: Path) -> None:
    env = _env(data_dir)
    try:
        status = run_process("db", "status", "--json", env=env)
        assert status.exit_code == 0, status.stderr
        assert json.loads(status.stdout)["running"] is False

        added = run_process("asset", "add", "GOLD", "Gold Coins", env=env)
        assert added.exit_code == 0, added.stderr
        # The command that creates the server says where the data lives and that the
        # server keeps running; later commands reuse it and say nothing of it.
        assert "created and started the embedded PostgreSQL server" in added.stderr
        assert str(embedded.pgdata_path(data_dir)) in added.stderr
        assert "`walletctl db stop`" in added.stderr
        topup = run_process("topup", "alice", "300", "--key", "t1", env=env)
        assert topup.exit_code == 0 and "embedded" not in topup.stderr
        spent = run_process("spend", "alice", "120", "--json", env=env)
        assert spent.exit_code == 0, spent.stderr
        assert json.loads(spent.stdout)["balance_after"] == 180
        # The owner works with least privilege, as on a shared server: the actor is the
        # embedded login role, which cannot write around the posting functions.
        assert json.loads(spent.stdout)["actor"] == "walletctl_local"
        server = embedded.running_server(data_dir)
        assert server is not None
        with psycopg.connect(server.url(user="walletctl_local"), autocommit=True) as local:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                local.execute("UPDATE balances SET balance = balance + 1000")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                local.execute("ALTER TABLE balances DISABLE TRIGGER ALL")
        assert run_process("db", "roles", env=env).exit_code == 0

        balance = json.loads(run_process("balance", "alice", "--json", env=env).stdout)
        assert balance["balances"] == [
            {
                "user": "alice",
                "asset": "GOLD",
                "balance": 180,
                "updated_at": balance["balances"][0]["updated_at"],
            }
        ]
        assert run_process("reconcile", env=env).exit_code == 0

        status = json.loads(run_process("db", "status", "--json", env=env).stdout)
        assert status["mode"] == "embedded" and status["source"] == "embedded"
        assert status["running"] is True and status["schema_current"] is True
        assert status["data_dir"] == str(data_dir)
    finally:
        stopped = run_process("db", "stop", env=env)
    assert stopped.exit_code == 0 and "stopped" in stopped.stderr
    assert embedded.running_server(data_dir) is None
    status = json.loads(run_process("db", "status", "--json", env=env).stdout)
    assert status["running"] is False

    # A later invocation starts it again (and says so) and finds the same ledger.
    try:
        restarted = run_process("balance", "alice", "--json", env=env)
        assert "started the embedded PostgreSQL server" in restarted.stderr
        assert "created" not in restarted.stderr
        again = json.loads(restarted.stdout)
        assert again["balances"][0]["balance"] == 180
    finally:
        run_process("db", "stop", env=env)


def test_invocations_at_the_same_moment_start_one_server(data_dir: Path) -> None:
    env = _env(data_dir)
    command = [sys.executable, "-m", "walletctl", "asset", "list", "--json"]
    import os

    processes = [
        subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        results = [process.communicate(timeout=120) for process in processes]
        assert [process.returncode for process in processes] == [0] * 4, results
        assert all(json.loads(stdout) == {"assets": []} for stdout, _ in results)
        server = embedded.running_server(data_dir)
        assert server is not None
        postmasters = subprocess.run(
            ["pgrep", "-f", f"postgres -D {embedded.pgdata_path(data_dir)}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert postmasters == [str(server.pid)]
    finally:
        run_process("db", "stop", env=env)


def test_the_demo_runs_on_the_embedded_default_once_in_a_database_of_its_own(
    data_dir: Path,
) -> None:
    env = _env(data_dir)
    try:
        first = run_process("demo", env=env)
        assert first.exit_code == 0, first.stderr
        assert "zero_sum_per_transaction\tPASS" in first.stdout
        assert "demo-user\tGOLD\t430" in first.stdout
        # Fixed keys: a second run replays the three postings instead of adding three more.
        second = run_process("demo", env=env)
        assert second.exit_code == 0, second.stderr
        assert "demo-user\tGOLD\t430" in second.stdout
        assert second.stderr.count("already posted by an earlier demo") == 3
        assert second.stdout.count("\tdemo-demo-user-") == 3  # the statement's three rows
        # The ledger walletctl keeps for real work is untouched by the demo.
        assets = run_process("asset", "list", "--json", env=env)
        assert assets.exit_code == 0 and json.loads(assets.stdout) == {"assets": []}
        users = run_process("user", "list", "--json", env=env)
        assert users.exit_code == 0 and users.stdout.strip() == ""
    finally:
        run_process("db", "stop", env=env)
