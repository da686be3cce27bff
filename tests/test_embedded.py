"""The embedded default, from nothing: a real server from the wheel, in a fresh data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from walletctl import embedded

from .cli_helpers import run_process

pytestmark = pytest.mark.embedded


def _env(data_dir: Path) -> dict[str, str]:
    # No URL anywhere: the embedded default is what is left.
    return {
        "WALLETCTL_DATABASE_URL": "",
        "WALLETCTL_DATA_DIR": str(data_dir),
        "WALLETCTL_CONFIG": str(data_dir.parent / "no-config.toml"),
        "WALLETCTL_ACTOR": "tester",
    }


def test_embedded_default_from_nothing(data_dir: Path) -> None:
    env = _env(data_dir)
    try:
        status = run_process("db", "status", "--json", env=env)
        assert status.exit_code == 0, status.stderr
        assert json.loads(status.stdout)["running"] is False

        added = run_process("asset", "add", "GOLD", "Gold Coins", env=env)
        assert added.exit_code == 0, added.stderr
        assert run_process("topup", "alice", "300", "--key", "t1", env=env).exit_code == 0
        spent = run_process("spend", "alice", "120", "--json", env=env)
        assert spent.exit_code == 0, spent.stderr
        assert json.loads(spent.stdout)["balance_after"] == 180

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

    # A later invocation starts it again and finds the same ledger.
    try:
        again = json.loads(run_process("balance", "alice", "--json", env=env).stdout)
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
        assert all(json.loads(stdout) == [] for stdout, _ in results)
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


def test_the_demo_runs_on_the_embedded_default(data_dir: Path) -> None:
    env = _env(data_dir)
    try:
        demo = run_process("demo", env=env)
        assert demo.exit_code == 0, demo.stderr
        assert "zero_sum_per_transaction\tPASS" in demo.stdout
        assert "demo-user\tGOLD\t430" in demo.stdout
    finally:
        run_process("db", "stop", env=env)
