"""Sealed history: checkpoints hashing every transaction and entry up to a horizon.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 01:45:33.552229
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The digests, defined once, in the database, next to the data they cover: sealing and
# verifying both call walletctl_seal_blocks, so the two cannot disagree on the encoding.
#
# A transaction's digest is the SHA-256 of one text: its columns and its entries' columns
# as a PostgreSQL row literal (which quotes and escapes every field, so no two different
# rows can print the same), times as microseconds since the epoch (independent of the
# session's time zone and date style). A block is the transactions whose ids fall in one
# run of 1,000 ids; its digest is the SHA-256 of its transactions' digests in id order,
# and fingerprints keeps the first 4 bytes of each of them, to name what changed.
SEAL_SQL = """
CREATE FUNCTION walletctl_seal_digests(p_after bigint, p_through bigint)
RETURNS TABLE (transaction_id bigint, entries bigint, digest bytea)
LANGUAGE sql STABLE AS $$
    WITH entries AS (
        SELECT e.transaction_id,
               count(*) AS entry_count,
               array_agg(ROW(e.id, e.account_id, e.asset_id, e.amount, e.balance_after,
                             (extract(epoch FROM e.created_at) * 1000000)::bigint)
                         ORDER BY e.id)::text AS entries
        FROM ledger_entries e
        WHERE e.transaction_id > p_after AND e.transaction_id <= p_through
        GROUP BY e.transaction_id
    )
    SELECT t.id,
           coalesce(e.entry_count, 0),
           sha256(convert_to(ROW(t.id, t.kind, t.account_id, t.asset_id, t.amount,
                                 t.idempotency_key, t.reason, t.actor, t.reverses,
                                 (extract(epoch FROM t.created_at) * 1000000)::bigint,
                                 e.entries)::text, 'UTF8'))
    FROM transactions t
    LEFT JOIN entries e ON e.transaction_id = t.id
    WHERE t.id > p_after AND t.id <= p_through
$$;

CREATE FUNCTION walletctl_seal_blocks(p_after bigint, p_through bigint)
RETURNS TABLE (
    block bigint, first_transaction_id bigint, last_transaction_id bigint,
    transactions integer, entries integer, digest bytea, fingerprints bytea
) LANGUAGE sql STABLE AS $$
    SELECT (d.transaction_id - 1) / 1000, min(d.transaction_id), max(d.transaction_id),
           count(*)::integer, sum(d.entries)::integer,
           sha256(string_agg(d.digest, ''::bytea ORDER BY d.transaction_id)),
           string_agg(substring(d.digest FROM 1 FOR 4), ''::bytea ORDER BY d.transaction_id)
    FROM walletctl_seal_digests(p_after, p_through) d
    GROUP BY 1
    ORDER BY 1
$$;

CREATE TRIGGER seal_checkpoints_append_only BEFORE UPDATE OR DELETE ON seal_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_checkpoints_no_truncate BEFORE TRUNCATE ON seal_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_blocks_append_only BEFORE UPDATE OR DELETE ON seal_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_blocks_no_truncate BEFORE TRUNCATE ON seal_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_asset_totals_append_only BEFORE UPDATE OR DELETE ON seal_asset_totals
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_asset_totals_no_truncate BEFORE TRUNCATE ON seal_asset_totals
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
"""

DROP_SQL = """
DROP FUNCTION walletctl_seal_blocks(bigint, bigint);
DROP FUNCTION walletctl_seal_digests(bigint, bigint);
"""


def upgrade() -> None:
    op.create_table(
        "seal_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1), nullable=False),
        sa.Column("previous_id", sa.BigInteger(), nullable=True),
        sa.Column("previous_horizon", sa.BigInteger(), nullable=False),
        sa.Column("horizon", sa.BigInteger(), nullable=False),
        sa.Column("transactions", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("previous_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("transactions_filenode", sa.BigInteger(), nullable=False),
        sa.Column("ledger_entries_filenode", sa.BigInteger(), nullable=False),
        sa.Column("ledger_changes", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "horizon > previous_horizon", name=op.f("ck_seal_checkpoints_horizon_advances")
        ),
        sa.ForeignKeyConstraint(
            ["previous_id"],
            ["seal_checkpoints.id"],
            name=op.f("fk_seal_checkpoints_previous_id_seal_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seal_checkpoints")),
        sa.UniqueConstraint("hash", name=op.f("uq_seal_checkpoints_hash")),
        sa.UniqueConstraint("previous_id", name=op.f("uq_seal_checkpoints_previous_id")),
    )
    op.create_table(
        "seal_asset_totals",
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("asset_id", sa.SmallInteger(), nullable=False),
        sa.Column("entries_total", sa.Numeric(), nullable=False),
        sa.Column("outstanding", sa.Numeric(), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["asset_types.id"], name=op.f("fk_seal_asset_totals_asset_id_asset_types")
        ),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["seal_checkpoints.id"],
            name=op.f("fk_seal_asset_totals_checkpoint_id_seal_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "asset_id", name=op.f("pk_seal_asset_totals")),
    )
    op.create_table(
        "seal_blocks",
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("first_transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("last_transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("transactions", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprints", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["seal_checkpoints.id"],
            name=op.f("fk_seal_blocks_checkpoint_id_seal_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "block", name=op.f("pk_seal_blocks")),
    )
    op.create_index(
        "ix_transactions_created_at", "transactions", ["created_at"], postgresql_using="brin"
    )
    op.execute(SEAL_SQL)


def downgrade() -> None:
    op.execute(DROP_SQL)
    op.drop_index("ix_transactions_created_at", table_name="transactions")
    op.drop_table("seal_blocks")
    op.drop_table("seal_asset_totals")
    op.drop_table("seal_checkpoints")
