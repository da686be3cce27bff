"""Placement on a partition of a cluster (README "Beyond one machine"): a user is created
only on the partition the proxy routes it to, whoever inserts it.

A partition is an ordinary walletctl database, so a login role with operator rights that
connected to partition 1 directly could credit a user whose hash names partition 0: that
user's credits would then be split over two partitions, and the proxy's balance would show
one part. reconcile through the proxy found it (partition_placement) after the fact; now
the database refuses it, for every role:

- a BEFORE INSERT trigger on accounts (walletctl_check_placement) refuses a user of another
  partition with WL024, naming the user, its partition and this one. It reads this
  database's place from its transaction ids (walletctl_partition: partition p of N numbers
  them p, p + N, ...; on a database that is no partition, ids increment by 1 and it does
  nothing), so it costs a catalog row and a hash, and it is right for existing users too
  (ON CONFLICT DO NOTHING fires it for them: a user on its own partition always passes);
- walletctl_post_batch refuses such a row alone (invalid; atomic: WL024) before it creates
  users, as it refuses a frozen user's row; walletctl_request_credit refuses to file a
  request whose approval would create such a user;
- walletctl_refusal says why, and is STABLE rather than IMMUTABLE since it reads the
  catalog to say it.

Users already on the wrong partition stay (the upgrade warns, and reconcile through the
proxy names the partition); the trigger refuses new ones only.

The SQL of this revision is frozen in sql_0008/ beside this file (rules.sql, posting.sql,
batch.sql and controls.sql as they were when it was written; privileges.sql, unchanged here,
stays in sql_0007/). The downgrade restores 0007's functions from sql_0007/.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HERE = Path(__file__).resolve().parent

# Functions this revision creates, by the file that defines them (walletctl_partition
# first: walletctl_refusal's SQL body names it, and is checked when it is created).
CREATED = {"rules": ("walletctl_partition", "walletctl_check_placement")}

# Functions this revision replaces in place (same signatures: their owner and grants stay).
REPLACED = {
    "posting": ("walletctl_refusal",),
    "controls": ("walletctl_request_credit",),
    "batch": ("walletctl_post_batch",),
}

DROP_NEW_SQL = """
DROP TRIGGER accounts_placement ON accounts;
DROP FUNCTION walletctl_check_placement();
DROP FUNCTION walletctl_partition();
"""

# Users created before this revision on a partition that is not theirs stay; say so.
WARN_MISPLACED_SQL = """
DO $misplaced$
DECLARE
    v_misplaced bigint;
BEGIN
    SELECT count(*) INTO v_misplaced
    FROM accounts a, walletctl_partition() p
    WHERE a.external_id IS NOT NULL
      AND hashtext(a.external_id) & (p.partitions - 1) <> p.partition;
    IF v_misplaced > 0 THEN
        RAISE WARNING 'walletctl: % user(s) on this partition belong to other partitions; they stay (reconcile through the proxy names them: partition_placement), new ones are refused (WL024)',
            v_misplaced;
    END IF;
END
$misplaced$;
"""


def _frozen(revision_dir: str, name: str) -> str:
    return (HERE / revision_dir / f"{name}.sql").read_text(encoding="utf-8")


def _functions(
    revision_dir: str, functions_by_file: dict[str, tuple[str, ...]], *, replace: bool
) -> str:
    """The functions as defined in ``revision_dir`` (as CREATE OR REPLACE when ``replace``)."""
    statements = []
    for name, functions in functions_by_file.items():
        text = _frozen(revision_dir, name)
        for function in functions:
            found = re.search(
                rf"^CREATE FUNCTION {function}\(.*?^\$\$;$", text, re.DOTALL | re.MULTILINE
            )
            assert found is not None, (revision_dir, function)
            statement = found.group(0)
            if replace:
                statement = statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
            statements.append(statement)
    return "\n\n".join(statements)


def _trigger(revision_dir: str) -> str:
    found = re.search(
        r"^CREATE TRIGGER accounts_placement .*?;$",
        _frozen(revision_dir, "rules"),
        re.DOTALL | re.MULTILINE,
    )
    assert found is not None, revision_dir
    return found.group(0)


def upgrade() -> None:
    op.execute(_functions("sql_0008", CREATED, replace=False))
    op.execute(_functions("sql_0008", REPLACED, replace=True))
    op.execute(_trigger("sql_0008"))
    op.execute(WARN_MISPLACED_SQL)
    op.execute(_frozen("sql_0007", "privileges"))


def downgrade() -> None:
    op.execute(_functions("sql_0007", REPLACED, replace=True))
    op.execute(DROP_NEW_SQL)
    op.execute(_frozen("sql_0007", "privileges"))
