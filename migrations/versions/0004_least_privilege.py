"""Least privilege: group roles, every write through SECURITY DEFINER functions owned by
walletctl_owner, the actor recorded by the database, and the rest of the ledger's rules
enforced by the database (entry signs, running balances, cached balances, text).

The SQL of this revision is frozen in sql_0004/ beside this file: a copy of walletctl/sql/
as it was when this revision was written. walletctl/sql/ holds the SQL as it is today;
tests/test_sql_home.py checks that a database built from it and one built by the
migrations do not differ.

Upgrading a database created by an older walletctl to this revision needs a superuser (it
hands every object to walletctl_owner and creates the roles if they are missing).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:30:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HERE = Path(__file__).resolve().parent
SQL_FILES = ("roles", "rules", "posting", "batch", "seal", "privileges")

# What 0001-0003 created that this revision replaces.
DROP_OLD_SQL = """
DROP TRIGGER transactions_append_only ON transactions;
DROP TRIGGER transactions_no_truncate ON transactions;
DROP TRIGGER ledger_entries_append_only ON ledger_entries;
DROP TRIGGER ledger_entries_no_truncate ON ledger_entries;
DROP TRIGGER accounts_append_only ON accounts;
DROP TRIGGER accounts_no_truncate ON accounts;
DROP TRIGGER asset_types_append_only ON asset_types;
DROP TRIGGER asset_types_no_truncate ON asset_types;
DROP TRIGGER balances_no_delete ON balances;
DROP TRIGGER balances_no_truncate ON balances;
DROP TRIGGER seal_checkpoints_append_only ON seal_checkpoints;
DROP TRIGGER seal_checkpoints_no_truncate ON seal_checkpoints;
DROP TRIGGER seal_blocks_append_only ON seal_blocks;
DROP TRIGGER seal_blocks_no_truncate ON seal_blocks;
DROP TRIGGER seal_asset_totals_append_only ON seal_asset_totals;
DROP TRIGGER seal_asset_totals_no_truncate ON seal_asset_totals;
DROP TRIGGER ledger_entries_check_new ON ledger_entries;
DROP FUNCTION walletctl_post_batch(text, text, bigint[], text[], text[], bigint[], text[], text[]);
DROP FUNCTION walletctl_reverse(bigint, text, text, text);
DROP FUNCTION walletctl_post(text, text, text, bigint, text, text, text);
DROP FUNCTION walletctl_book(text, text, text, bigint, bigint, text, text, text, bigint);
DROP FUNCTION walletctl_replay_receipt(bigint);
DROP TYPE walletctl_receipt;
DROP FUNCTION walletctl_seal_blocks(bigint, bigint);
DROP FUNCTION walletctl_seal_digests(bigint, bigint);
DROP FUNCTION walletctl_check_new_entries();
DROP FUNCTION walletctl_refuse_change();
"""

# The text rules as CHECK constraints (walletctl/textrules.py at this revision).
_CONTROL = r"[\x01-\x1f\x7f-\x9f]"


def _identifier(column: str) -> str:
    return (
        f"char_length({column}) BETWEEN 1 AND 200 "
        f"AND {column} !~ '{_CONTROL}' AND {column} !~ '^ | $'"
    )


TABLES_SQL = f"""
ALTER TABLE transactions ADD COLUMN on_behalf_of text;
ALTER TABLE transactions
    ADD CONSTRAINT ck_transactions_idempotency_key_format CHECK ({_identifier("idempotency_key")}),
    ADD CONSTRAINT ck_transactions_actor_format CHECK ({_identifier("actor")}),
    ADD CONSTRAINT ck_transactions_on_behalf_of_format CHECK ({_identifier("on_behalf_of")}),
    ADD CONSTRAINT ck_transactions_reason_format
        CHECK (char_length(reason) BETWEEN 1 AND 1000 AND reason !~ '{_CONTROL}');
ALTER TABLE accounts DROP CONSTRAINT ck_accounts_external_id_format;
ALTER TABLE accounts
    ADD CONSTRAINT ck_accounts_external_id_format CHECK ({_identifier("external_id")}),
    ADD CONSTRAINT ck_accounts_external_id_not_treasury
        CHECK (lower(external_id) <> lower('Treasury'));
ALTER TABLE asset_types DROP CONSTRAINT ck_asset_types_name_format;
ALTER TABLE asset_types ADD CONSTRAINT ck_asset_types_name_format CHECK ({_identifier("name")});
"""

UNDO_TABLES_SQL = """
ALTER TABLE transactions DROP COLUMN on_behalf_of;
ALTER TABLE transactions
    DROP CONSTRAINT ck_transactions_idempotency_key_format,
    DROP CONSTRAINT ck_transactions_actor_format,
    DROP CONSTRAINT ck_transactions_reason_format;
ALTER TABLE accounts
    DROP CONSTRAINT ck_accounts_external_id_format,
    DROP CONSTRAINT ck_accounts_external_id_not_treasury;
ALTER TABLE accounts ADD CONSTRAINT ck_accounts_external_id_format
    CHECK (char_length(external_id) BETWEEN 1 AND 200 AND external_id !~ '[[:cntrl:]]');
ALTER TABLE asset_types DROP CONSTRAINT ck_asset_types_name_format;
ALTER TABLE asset_types ADD CONSTRAINT ck_asset_types_name_format
    CHECK (char_length(name) BETWEEN 1 AND 200 AND name !~ '[[:cntrl:]]');
"""

DROP_NEW_SQL = """
DROP TRIGGER transactions_append_only ON transactions;
DROP TRIGGER transactions_no_truncate ON transactions;
DROP TRIGGER ledger_entries_append_only ON ledger_entries;
DROP TRIGGER ledger_entries_no_truncate ON ledger_entries;
DROP TRIGGER accounts_append_only ON accounts;
DROP TRIGGER accounts_no_truncate ON accounts;
DROP TRIGGER asset_types_append_only ON asset_types;
DROP TRIGGER asset_types_no_truncate ON asset_types;
DROP TRIGGER balances_no_delete ON balances;
DROP TRIGGER balances_no_truncate ON balances;
DROP TRIGGER seal_checkpoints_append_only ON seal_checkpoints;
DROP TRIGGER seal_checkpoints_no_truncate ON seal_checkpoints;
DROP TRIGGER seal_blocks_append_only ON seal_blocks;
DROP TRIGGER seal_blocks_no_truncate ON seal_blocks;
DROP TRIGGER seal_asset_totals_append_only ON seal_asset_totals;
DROP TRIGGER seal_asset_totals_no_truncate ON seal_asset_totals;
DROP TRIGGER ledger_entries_check_new ON ledger_entries;
DROP TRIGGER transactions_check_new ON transactions;
DROP TRIGGER balances_match_ledger ON balances;
DROP FUNCTION walletctl_seal(bigint);
DROP FUNCTION walletctl_seal_blocks(bigint, bigint);
DROP FUNCTION walletctl_seal_digests(bigint, bigint);
DROP FUNCTION walletctl_post_batch(text, text, bigint[], text[], text[], bigint[], text[], text[], boolean);
DROP FUNCTION walletctl_batch_posted_rows(text, text, timestamptz);
DROP FUNCTION walletctl_add_asset(text, text);
DROP FUNCTION walletctl_balances(text);
DROP FUNCTION walletctl_reverse(bigint, text, text, text);
DROP FUNCTION walletctl_post(text, text, text, bigint, text, text, text);
DROP FUNCTION walletctl_post_one(text, text, text, bigint, bigint, text, text, text, bigint);
DROP FUNCTION walletctl_replay_receipt(bigint);
DROP FUNCTION walletctl_book(text, text, timestamptz, bigint[], bigint[], smallint[], bigint[], bigint[], bigint[], text[], text[], bigint[]);
DROP FUNCTION walletctl_posting_time(timestamptz);
DROP FUNCTION walletctl_create_users(text[]);
DROP FUNCTION walletctl_refusal(text, text, text, bigint, text, bigint, bigint);
DROP FUNCTION walletctl_same_request(transactions, text, bigint, smallint, bigint, bigint);
DROP TYPE walletctl_receipt;
DROP FUNCTION walletctl_check_balance();
DROP FUNCTION walletctl_check_new_transaction();
DROP FUNCTION walletctl_check_new_entries();
DROP FUNCTION walletctl_refuse_change();
"""


def _frozen(name: str) -> str:
    return (HERE / "sql_0004" / f"{name}.sql").read_text(encoding="utf-8")


def _older(filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(filename, HERE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    # As a superuser, objects are handed to walletctl_owner by privileges.sql; the
    # migration environment runs non-superusers as walletctl_owner already.
    op.execute(_frozen("roles"))
    op.execute(DROP_OLD_SQL)
    op.execute(TABLES_SQL)
    for name in SQL_FILES[1:]:
        op.execute(_frozen(name))


def downgrade() -> None:
    op.execute(DROP_NEW_SQL)
    op.execute(UNDO_TABLES_SQL)
    first = _older("0001_ledger_schema.py")
    op.execute(first.APPEND_ONLY_SQL)
    op.execute(first.ZERO_SUM_SQL)
    op.execute(first.POSTING_SQL)
    op.execute(_older("0002_sealed_history.py").SEAL_SQL)
    op.execute(_older("0003_batch_posting.py").BATCH_SQL)
