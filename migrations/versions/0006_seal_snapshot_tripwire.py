"""Seal in one snapshot, and a tripwire that a reset of the statistics does not silence:
each checkpoint also records the snapshot it was computed in, the last heap page of each
ledger table, the statistics' count of inserted ledger rows and when this database's
statistics were last reset (walletctl/core/tripwire.py reads them).

The SQL of this revision is frozen in sql_0006/ beside this file (walletctl_seal as it was
when this revision was written); the downgrade restores 0005's from sql_0005/.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HERE = Path(__file__).resolve().parent

# NULL in the checkpoints sealed before this revision: their tripwire has only the files
# and the update/delete counts.
ADD_COLUMNS_SQL = """
ALTER TABLE seal_checkpoints
    ADD COLUMN ledger_inserts BIGINT,
    ADD COLUMN stats_reset TIMESTAMP WITH TIME ZONE,
    ADD COLUMN snapshot TEXT,
    ADD COLUMN transactions_last_page BIGINT,
    ADD COLUMN ledger_entries_last_page BIGINT;
"""

DROP_COLUMNS_SQL = """
ALTER TABLE seal_checkpoints
    DROP COLUMN ledger_inserts,
    DROP COLUMN stats_reset,
    DROP COLUMN snapshot,
    DROP COLUMN transactions_last_page,
    DROP COLUMN ledger_entries_last_page;
"""


def _walletctl_seal(revision_dir: str) -> str:
    """walletctl_seal as ``revision_dir`` defines it, as CREATE OR REPLACE (same signature
    and return type: replaced in place, so its owner and grants stay)."""
    text = (HERE / revision_dir / "seal.sql").read_text(encoding="utf-8")
    found = re.search(
        r"^CREATE FUNCTION walletctl_seal\(.*?^\$\$;$", text, re.DOTALL | re.MULTILINE
    )
    assert found is not None, revision_dir
    return found.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(ADD_COLUMNS_SQL)
    op.execute(_walletctl_seal("sql_0006"))


def downgrade() -> None:
    op.execute(_walletctl_seal("sql_0005"))
    op.execute(DROP_COLUMNS_SQL)
