"""A logical backup (pg_dump, pg_restore) restores a ledger that reconciles and whose sealed
history still proves itself: the tripwire fires once (new files, new statistics), sealed
history is re-hashed, and the checkpoint hash is the one kept outside the database."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import psycopg

from walletctl.core import checkpoints, posting, seal

from .cli_helpers import Cli
from .conftest import _with_database
from .servers import pg_bindir

OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def test_a_pg_dump_restores_a_ledger_that_reconciles_and_proves_its_seal(
    conn: psycopg.Connection[Any], clean_db: str, server_url: str, tmp_path: Any
) -> None:
    for index in range(20):
        posting.topup(conn, f"u{index % 4}", 100 + index, idempotency_key=f"t{index}", **OPS)
    checkpoint = seal.seal(conn)
    assert checkpoint is not None
    posting.spend(conn, "u1", 50, idempotency_key="after-seal", **OPS)

    dump = tmp_path / "wallet.dump"
    subprocess.run(
        [str(pg_bindir() / "pg_dump"), "-Fc", "-f", str(dump), "-d", clean_db], check=True
    )
    restored = f"walletctl_restored_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{restored}" OWNER walletctl_owner')
    restored_url = _with_database(clean_db, restored)
    try:
        subprocess.run(
            [str(pg_bindir() / "pg_restore"), "--exit-on-error", "-d", restored_url, str(dump)],
            check=True,
        )
        cli = Cli(restored_url)
        result = cli("reconcile", "--json")
        assert result.exit_code == 0, result.stderr
        assert "tripwire" in result.stderr and "re-hashed all sealed history" in result.stderr
        assert cli("reconcile", "--full").exit_code == 0
        with psycopg.connect(restored_url, autocommit=True) as look:
            (kept,) = checkpoints.checkpoints(look)
        assert kept.hash == checkpoint.hash
        balance = json.loads(cli("balance", "u1", "--json").stdout)["balances"][0]["balance"]
        assert balance == sum(100 + i for i in range(20) if i % 4 == 1) - 50
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')
