"""Run locks only walletctl's roles can take (README: Production deployment).

`walletctl seal` (one at a time) and a bulk file run (one per file and kind at a time) held
their lock as a transaction-level advisory lock. Any role that can connect may take any
advisory lock: a read-only walletctl_finance login, or an application logged in as
walletctl_service, could hold the seal's key (or a file's) in a session it keeps open and
make every seal (or that file's runs) exit 8, silently, for as long as it liked. The locks
are now row locks on a table, run_locks, owned by walletctl_owner with no privilege for any
other role, taken only through walletctl_lock_seal and walletctl_lock_file (SECURITY
DEFINER, executable by walletctl_batch alone). A run still holds its lock in a transaction
kept open beside the work, so the lock still ends with that transaction (and survives
PgBouncer's transaction pooling) as before.

The SQL of this revision is frozen in sql_0009/ beside this file. Ownership and grants are
set for the new objects only, as privileges.sql sets them, rather than by running a frozen
copy of the whole privileges.sql: this revision may be chained after others that grant
more, and that file's clean-up would take their grants back.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HERE = Path(__file__).resolve().parent

TABLES_SQL = """
CREATE TABLE run_locks (
    name TEXT NOT NULL,
    CONSTRAINT pk_run_locks PRIMARY KEY (name)
);
"""

PRIVILEGES_SQL = """
ALTER TABLE run_locks OWNER TO walletctl_owner;
ALTER ROUTINE walletctl_take_run_lock(text) OWNER TO walletctl_owner;
ALTER ROUTINE walletctl_lock_seal() OWNER TO walletctl_owner;
ALTER ROUTINE walletctl_lock_file(text, bytea) OWNER TO walletctl_owner;
REVOKE ALL ON TABLE run_locks FROM PUBLIC;
REVOKE ALL ON FUNCTION walletctl_take_run_lock(text), walletctl_lock_seal(),
                       walletctl_lock_file(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION walletctl_lock_seal(), walletctl_lock_file(text, bytea)
    TO walletctl_batch;
"""

DROP_SQL = """
DROP FUNCTION walletctl_lock_file(text, bytea);
DROP FUNCTION walletctl_lock_seal();
DROP FUNCTION walletctl_take_run_lock(text);
DROP TABLE run_locks;
"""


def upgrade() -> None:
    op.execute(TABLES_SQL)
    op.execute((HERE / "sql_0009" / "locks.sql").read_text(encoding="utf-8"))
    op.execute(PRIVILEGES_SQL)


def downgrade() -> None:
    op.execute(DROP_SQL)
