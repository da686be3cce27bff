"""Hardening found by trying to break 0004 and 0005 as their roles (README: Deploying with
least privilege, Operator controls):

- the operator controls are read after the balance lock, in a statement of their own, so a
  posting that queued behind a lock or held an old snapshot cannot land after a freeze,
  threshold or budget it never saw; the posting functions refuse REPEATABLE READ and
  SERIALIZABLE transactions (WL023);
- issuance budgets are charged to the UTC day of the posting's own time, not of the start
  of its transaction;
- a key filed by a request for approval posts only through that request's approval;
- an approval checks expiry against the clock, not the start of its transaction;
- a batch refuses arrays of different lengths;
- walletctl_owner owns the schema `public` (on PostgreSQL 15 it belongs to
  pg_database_owner, so a login owning the database could create objects the SECURITY
  DEFINER functions would find), and the functions name their temporary tables and the
  internal functions they call with their schema;
- identifiers (user ids, keys, actors, notes, asset names, roles) may not hold invisible or
  look-alike space characters and must be in Unicode normal form C.

The SQL of this revision is frozen in sql_0007/ beside this file (seal.sql, unchanged here,
stays in sql_0006/). An identifier already in the ledger that breaks the new text rule
does not stop the upgrade: its constraint is then left NOT VALID (it holds for every new
row), and the upgrade says which.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HERE = Path(__file__).resolve().parent

# Functions this revision replaces in place (same signatures: their owner and grants stay),
# or creates, by the file that defines them.
REPLACED = {
    "posting": ("walletctl_refusal", "walletctl_post_one", "walletctl_post", "walletctl_reverse"),
    "controls": (
        "walletctl_policy_refusal",
        "walletctl_require_read_committed",
        "walletctl_charge_issuance",
        "walletctl_approve_request",
        "walletctl_expire_requests",
    ),
    "batch": ("walletctl_post_batch", "walletctl_batch_posted_rows"),
}

# Internal functions whose arguments change: dropped, then created anew.
DROP_CHANGED_SQL = """
DROP FUNCTION walletctl_post_one(text, text, text, bigint, bigint, text, text, text, bigint);
DROP FUNCTION walletctl_charge_issuance(text, text, bigint);
"""
DROP_NEW_SQL = """
DROP FUNCTION walletctl_post_one(text, text, text, bigint, bigint, text, text, text, bigint, text);
DROP FUNCTION walletctl_charge_issuance(text, text, bigint, timestamptz);
DROP FUNCTION walletctl_policy_refusal(text, text, bigint, boolean);
DROP FUNCTION walletctl_require_read_committed();
"""

# The identifier columns, by their CHECK constraint.
IDENTIFIER_CONSTRAINTS = (
    ("accounts", "ck_accounts_external_id_format", "external_id"),
    ("asset_types", "ck_asset_types_name_format", "name"),
    ("transactions", "ck_transactions_idempotency_key_format", "idempotency_key"),
    ("transactions", "ck_transactions_actor_format", "actor"),
    ("transactions", "ck_transactions_on_behalf_of_format", "on_behalf_of"),
    ("asset_policies", "ck_asset_policies_set_by_format", "set_by"),
    ("credit_requests", "ck_credit_requests_on_behalf_of_format", "on_behalf_of"),
    ("credit_requests", "ck_credit_requests_requested_by_format", "requested_by"),
    ("credit_requests", "ck_credit_requests_user_id_format", "user_id"),
    ("credit_requests", "ck_credit_requests_idempotency_key_format", "idempotency_key"),
    ("issuance_budgets", "ck_issuance_budgets_role_format", "role"),
    ("issuance_budgets", "ck_issuance_budgets_set_by_format", "set_by"),
    ("user_freezes", "ck_user_freezes_actor_format", "actor"),
    ("credit_request_decisions", "ck_credit_request_decisions_decided_by_format", "decided_by"),
)
INVISIBLE_CHARACTERS = (
    r"[\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u1680"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0"
    r"\ufff0-\ufffb\U000e0000-\U000e007f]"
)


def _identifier_check(column: str, *, hardened: bool) -> str:
    check = (
        f"char_length({column}) BETWEEN 1 AND 200 "
        f"AND {column} !~ '[\\x01-\\x1f\\x7f-\\x9f]' AND {column} !~ '^ | $'"
    )
    if hardened:
        check += f" AND {column} !~ '{INVISIBLE_CHARACTERS}' AND {column} IS NFC NORMALIZED"
    return check


def _text_rules(*, hardened: bool) -> str:
    """Replace each identifier CHECK; validate it where the rows allow (see the docstring)."""
    statements = []
    for table, constraint, column in IDENTIFIER_CONSTRAINTS:
        check = _identifier_check(column, hardened=hardened)
        statements.append(
            f"ALTER TABLE {table} DROP CONSTRAINT {constraint};\n"
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({check}) NOT VALID;\n"
            "DO $validate$ BEGIN\n"
            f"    ALTER TABLE {table} VALIDATE CONSTRAINT {constraint};\n"
            "EXCEPTION WHEN check_violation THEN\n"
            f"    RAISE WARNING 'walletctl: {table}.{column} holds values that break the text "
            f"rule; {constraint} holds for new rows only (NOT VALID)';\n"
            "END $validate$;"
        )
    return "\n".join(statements)


def _frozen(revision_dir: str, name: str) -> str:
    return (HERE / revision_dir / f"{name}.sql").read_text(encoding="utf-8")


def _functions(revision_dir: str, replaced: dict[str, tuple[str, ...]]) -> str:
    """The functions as defined in ``revision_dir``, as CREATE OR REPLACE."""
    statements = []
    for name, functions in replaced.items():
        text = _frozen(revision_dir, name)
        for function in functions:
            found = re.search(
                rf"^CREATE FUNCTION {function}\(.*?^\$\$;$", text, re.DOTALL | re.MULTILINE
            )
            assert found is not None, (revision_dir, function)
            statements.append(
                found.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
            )
    return "\n\n".join(statements)


def upgrade() -> None:
    op.execute(DROP_CHANGED_SQL)
    op.execute(_functions("sql_0007", REPLACED))
    op.execute(_text_rules(hardened=True))
    op.execute(_frozen("sql_0007", "privileges"))


def downgrade() -> None:
    op.execute(DROP_NEW_SQL)
    op.execute(
        _functions(
            "sql_0005",
            {
                "posting": (
                    "walletctl_post_one",
                    "walletctl_refusal",
                    "walletctl_post",
                    "walletctl_reverse",
                ),
                "controls": (
                    "walletctl_charge_issuance",
                    "walletctl_approve_request",
                    "walletctl_expire_requests",
                ),
                "batch": ("walletctl_post_batch", "walletctl_batch_posted_rows"),
            },
        )
    )
    op.execute(_text_rules(hardened=False))
    op.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
    op.execute(_frozen("sql_0005", "privileges"))
