"""The ledger: tables, the posting functions, and the invariants the database enforces.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 00:50:06.793733
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The Treasury: the issuer's account, id 0. Its balance is the negation of all users'
# balances; it has no row in `balances` and is never locked.
TREASURY_SQL = "INSERT INTO accounts (id, external_id) VALUES (0, NULL)"

# Invariant 2: the ledger is append-only; corrections are reversals. Accounts, assets and
# balance rows are never deleted either, so nothing in the ledger can lose what it refers to.
APPEND_ONLY_SQL = """
CREATE FUNCTION walletctl_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: walletctl''s ledger is append-only (post a reversal instead)',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'WL010';
END
$$;

CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER asset_types_append_only BEFORE UPDATE OR DELETE ON asset_types
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER asset_types_no_truncate BEFORE TRUNCATE ON asset_types
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER balances_no_delete BEFORE DELETE ON balances
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON balances
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
"""

# Invariant 1: the entries of each transaction sum to zero. Entries are append-only, so it
# is enough that the entries each INSERT adds sum to zero per transaction; the posting
# functions write a transaction's entries in one statement. One check per statement (not
# per row) keeps bulk posting set-based. The same query stands in for foreign keys from
# ledger_entries (see walletctl/schema.py): each entry must belong to an existing
# transaction, carry its asset and amount, and be booked to its user or to the Treasury.
ZERO_SUM_SQL = """
CREATE FUNCTION walletctl_check_new_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_transaction_id bigint;
BEGIN
    SELECT n.transaction_id INTO v_transaction_id
    FROM new_entries n
    LEFT JOIN transactions t ON t.id = n.transaction_id
    GROUP BY n.transaction_id, t.id
    HAVING sum(n.amount) <> 0
        OR t.id IS NULL
        OR bool_or(n.asset_id <> t.asset_id
                   OR abs(n.amount) <> t.amount
                   OR n.account_id NOT IN (t.account_id, 0))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the entries of transaction % do not sum to zero or do not match it',
            v_transaction_id
            USING ERRCODE = 'WL011';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_entries_check_new AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_check_new_entries();
"""

# Posting. One call of walletctl_post or walletctl_reverse is one round trip and one
# database transaction, and takes one lock: the user's row in `balances`. Two postings for
# different users never wait on each other; two for one user queue on that row and cannot
# deadlock, since each holds at most one row lock.
#
# Errors carry SQLSTATEs of their own (class WL), which walletctl turns into typed errors:
#   WL001 insufficient funds        WL005 idempotency key used for another request
#   WL002 user not found            WL006 transaction already reversed
#   WL003 asset not found           WL007 a reversal cannot be reversed
#   WL004 transaction not found     WL008 key claimed by a concurrent posting: ask again
#   WL009 invalid amount            WL010 append-only    WL011 entries do not balance
POSTING_SQL = """
CREATE TYPE walletctl_receipt AS (
    transaction_id bigint,
    kind text,
    user_id text,
    asset text,
    amount bigint,
    balance_after bigint,
    created_at timestamptz,
    replayed boolean,
    reverses bigint,
    idempotency_key text
);

-- The receipt of a transaction already in the ledger, marked as a replay.
CREATE FUNCTION walletctl_replay_receipt(p_transaction_id bigint) RETURNS walletctl_receipt
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.kind, a.external_id, s.code, t.amount, e.balance_after, t.created_at, true,
           t.reverses, t.idempotency_key
    FROM transactions t
    JOIN accounts a ON a.id = t.account_id
    JOIN asset_types s ON s.id = t.asset_id
    JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
    WHERE t.id = p_transaction_id
$$;

-- The one writer of the ledger: book a posting, or raise the error that says why not.
-- The happy path is three statements: look up, move the balance, book the entries.
CREATE FUNCTION walletctl_book(
    p_kind text, p_user_id text, p_asset text, p_amount bigint, p_delta bigint,
    p_idempotency_key text, p_reason text, p_actor text, p_reverses bigint
) RETURNS walletctl_receipt LANGUAGE plpgsql AS $$
DECLARE
    v_asset_id smallint;
    v_account_id bigint;
    v_prior transactions%ROWTYPE;
    v_balance bigint;
    v_at timestamptz;
    v_transaction_id bigint;
    v_reversal_id bigint;
BEGIN
    -- Invariant 4 (amount > 0 within bigint) is also a CHECK; this gives it a clear error.
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be a positive whole number, got %', p_amount
            USING ERRCODE = 'WL009';
    END IF;

    -- What the request names, and whether its key was used before: one statement.
    SELECT (SELECT s.id FROM asset_types s WHERE s.code = p_asset),
           (SELECT a.id FROM accounts a WHERE a.external_id = p_user_id),
           (SELECT t.id FROM transactions t WHERE t.idempotency_key = p_idempotency_key)
    INTO v_asset_id, v_account_id, v_prior.id;

    -- A key seen before: the same request is a replay, anything else a conflict. Nothing
    -- is locked or written on either path.
    IF v_prior.id IS NOT NULL THEN
        SELECT * INTO v_prior FROM transactions t WHERE t.id = v_prior.id;
        IF v_prior.kind = p_kind
           AND v_prior.amount = p_amount
           AND v_prior.reverses IS NOT DISTINCT FROM p_reverses
           AND v_prior.asset_id = v_asset_id
           AND v_prior.account_id = v_account_id
        THEN
            RETURN walletctl_replay_receipt(v_prior.id);
        END IF;
        RAISE EXCEPTION 'idempotency key % was already used by transaction % for a different request',
            p_idempotency_key, v_prior.id
            USING ERRCODE = 'WL005', DETAIL = v_prior.id::text;
    END IF;
    IF v_asset_id IS NULL THEN
        RAISE EXCEPTION 'asset % not found', p_asset USING ERRCODE = 'WL003';
    END IF;
    IF v_account_id IS NULL THEN
        IF p_delta < 0 THEN
            RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'WL002';
        END IF;
        -- Users are created by their first credit. A concurrent first credit may create
        -- the same user first: then this insert waits for it and does nothing.
        INSERT INTO accounts (external_id) VALUES (p_user_id)
        ON CONFLICT (external_id) DO NOTHING
        RETURNING id INTO v_account_id;
        IF v_account_id IS NULL THEN
            SELECT a.id INTO v_account_id FROM accounts a WHERE a.external_id = p_user_id;
        END IF;
    END IF;

    -- The only lock. Its time is taken once the lock is held and never goes back, so a
    -- user's entries are in the same order by time as by id (for --as-of and statements).
    IF p_delta > 0 THEN
        INSERT INTO balances AS b (account_id, asset_id, balance, updated_at)
        VALUES (v_account_id, v_asset_id, p_delta, clock_timestamp())
        ON CONFLICT (account_id, asset_id) DO UPDATE
            SET balance = b.balance + EXCLUDED.balance,
                updated_at = greatest(clock_timestamp(), b.updated_at)
        RETURNING b.balance, b.updated_at INTO v_balance, v_at;
    ELSE
        -- Invariant 3: the balance check and the debit are one conditional UPDATE.
        UPDATE balances AS b
        SET balance = b.balance + p_delta,
            updated_at = greatest(clock_timestamp(), b.updated_at)
        WHERE b.account_id = v_account_id AND b.asset_id = v_asset_id
          AND b.balance >= -p_delta
        RETURNING b.balance, b.updated_at INTO v_balance, v_at;
        IF NOT FOUND THEN
            -- A reversal that queued behind a racing reversal of the same transaction
            -- finds the funds gone: say what really happened.
            IF p_reverses IS NOT NULL THEN
                SELECT t.id INTO v_reversal_id FROM transactions t WHERE t.reverses = p_reverses;
                IF FOUND THEN
                    RAISE EXCEPTION 'transaction % was already reversed by transaction %',
                        p_reverses, v_reversal_id
                        USING ERRCODE = 'WL006', DETAIL = v_reversal_id::text;
                END IF;
            END IF;
            SELECT b.balance INTO v_balance FROM balances b
            WHERE b.account_id = v_account_id AND b.asset_id = v_asset_id;
            RAISE EXCEPTION 'insufficient funds: % holds % %, % needed',
                p_user_id, coalesce(v_balance, 0), p_asset, -p_delta
                USING ERRCODE = 'WL001', DETAIL = coalesce(v_balance, 0)::text;
        END IF;
    END IF;

    -- Claim the key and book both entries, in one statement so that the zero-sum trigger
    -- sees the pair. A posting with the same key that committed since the lookup makes
    -- the insert do nothing: raise, so that the balance change above is undone with the
    -- whole call, and the caller asks again to receive that posting's receipt.
    WITH booked AS (
        INSERT INTO transactions
            (kind, account_id, asset_id, amount, idempotency_key, reason, actor, reverses,
             created_at)
        VALUES
            (p_kind, v_account_id, v_asset_id, p_amount, p_idempotency_key, p_reason, p_actor,
             p_reverses, v_at)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    ),
    entries AS (
        INSERT INTO ledger_entries
            (transaction_id, account_id, asset_id, amount, balance_after, created_at)
        SELECT booked.id, v_account_id, v_asset_id, p_delta, v_balance, v_at FROM booked
        UNION ALL
        SELECT booked.id, 0, v_asset_id, -p_delta, NULL, v_at FROM booked
    )
    SELECT booked.id INTO v_transaction_id FROM booked;
    IF v_transaction_id IS NULL THEN
        RAISE EXCEPTION 'idempotency key % was claimed by a concurrent posting', p_idempotency_key
            USING ERRCODE = 'WL008';
    END IF;

    RETURN ROW(v_transaction_id, p_kind, p_user_id, p_asset, p_amount, v_balance, v_at, false,
               p_reverses, p_idempotency_key)::walletctl_receipt;
END
$$;

-- A top-up, bonus or spend. Users are created on their first credit.
CREATE FUNCTION walletctl_post(
    p_kind text, p_user_id text, p_asset text, p_amount bigint,
    p_idempotency_key text, p_reason text, p_actor text
) RETURNS walletctl_receipt LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind NOT IN ('topup', 'bonus', 'spend') THEN
        RAISE EXCEPTION 'unknown posting kind %', p_kind USING ERRCODE = '22023';
    END IF;
    RETURN walletctl_book(
        p_kind, p_user_id, p_asset, p_amount,
        CASE WHEN p_kind = 'spend' THEN -p_amount ELSE p_amount END,
        p_idempotency_key, p_reason, p_actor, NULL);
END
$$;

-- The reversal of a top-up, bonus or spend: the mirror of its entries. Reversing a credit
-- the user has already spent is refused as insufficient funds.
CREATE FUNCTION walletctl_reverse(
    p_transaction_id bigint, p_idempotency_key text, p_reason text, p_actor text
) RETURNS walletctl_receipt LANGUAGE plpgsql AS $$
DECLARE
    v_target transactions%ROWTYPE;
    v_prior transactions%ROWTYPE;
    v_reversal_id bigint;
BEGIN
    SELECT * INTO v_target FROM transactions t WHERE t.id = p_transaction_id;
    IF NOT FOUND THEN
        -- Unless the key already holds a different request: that conflict is the answer.
        SELECT * INTO v_prior FROM transactions t WHERE t.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RAISE EXCEPTION 'idempotency key % was already used by transaction % for a different request',
                p_idempotency_key, v_prior.id
                USING ERRCODE = 'WL005', DETAIL = v_prior.id::text;
        END IF;
        RAISE EXCEPTION 'transaction % not found', p_transaction_id USING ERRCODE = 'WL004';
    END IF;
    SELECT t.id INTO v_reversal_id FROM transactions t WHERE t.reverses = p_transaction_id;
    IF FOUND AND NOT EXISTS (
        SELECT FROM transactions t
        WHERE t.id = v_reversal_id AND t.idempotency_key = p_idempotency_key
    ) THEN
        RAISE EXCEPTION 'transaction % was already reversed by transaction %',
            p_transaction_id, v_reversal_id
            USING ERRCODE = 'WL006', DETAIL = v_reversal_id::text;
    END IF;
    IF v_target.kind = 'reversal' THEN
        RAISE EXCEPTION 'transaction % is a reversal and cannot be reversed; post a new transaction instead',
            p_transaction_id USING ERRCODE = 'WL007';
    END IF;
    -- A reversal racing this one is stopped by the unique index on transactions.reverses.
    RETURN walletctl_book(
        'reversal',
        (SELECT a.external_id FROM accounts a WHERE a.id = v_target.account_id),
        (SELECT s.code FROM asset_types s WHERE s.id = v_target.asset_id),
        v_target.amount,
        CASE WHEN v_target.kind = 'spend' THEN v_target.amount ELSE -v_target.amount END,
        p_idempotency_key, p_reason, p_actor, p_transaction_id);
END
$$;
"""

DROP_SQL = """
DROP FUNCTION walletctl_reverse(bigint, text, text, text);
DROP FUNCTION walletctl_post(text, text, text, bigint, text, text, text);
DROP FUNCTION walletctl_book(text, text, text, bigint, bigint, text, text, text, bigint);
DROP FUNCTION walletctl_replay_receipt(bigint);
DROP TYPE walletctl_receipt;
"""


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(external_id) BETWEEN 1 AND 200 AND external_id !~ '[[:cntrl:]]'",
            name=op.f("ck_accounts_external_id_format"),
        ),
        sa.CheckConstraint(
            "(id = 0) = (external_id IS NULL)", name=op.f("ck_accounts_treasury_is_account_zero")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("external_id", name=op.f("uq_accounts_external_id")),
    )
    op.create_table(
        "asset_types",
        sa.Column("id", sa.SmallInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200 AND name !~ '[[:cntrl:]]'",
            name=op.f("ck_asset_types_name_format"),
        ),
        sa.CheckConstraint(
            "code ~ '^[A-Z]([A-Z0-9_]{0,22}[A-Z0-9])?$'", name=op.f("ck_asset_types_code_format")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_types")),
        sa.UniqueConstraint("code", name=op.f("uq_asset_types_code")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("asset_id", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(account_id = 0) = (balance_after IS NULL)",
            name=op.f("ck_ledger_entries_balance_after_for_users"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_entries_amount_not_zero")),
        sa.CheckConstraint(
            "balance_after >= 0", name=op.f("ck_ledger_entries_balance_after_not_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint(
            "transaction_id",
            "account_id",
            name=op.f("uq_ledger_entries_transaction_id_account_id"),
            postgresql_include=["asset_id", "amount"],
        ),
    )
    op.create_index(
        "ix_ledger_entries_account_asset_time",
        "ledger_entries",
        ["account_id", "asset_id", "created_at", "id"],
        unique=False,
        postgresql_include=["amount", "balance_after"],
    )
    op.create_table(
        "transactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("asset_id", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reverses", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind = 'reversal') = (reverses IS NOT NULL)",
            name=op.f("ck_transactions_reversal_names_target"),
        ),
        sa.CheckConstraint(
            "kind IN ('topup', 'bonus', 'spend', 'reversal')",
            name=op.f("ck_transactions_kind_known"),
        ),
        sa.CheckConstraint(
            "kind NOT IN ('bonus', 'reversal') OR reason IS NOT NULL",
            name=op.f("ck_transactions_reason_required"),
        ),
        sa.CheckConstraint("account_id <> 0", name=op.f("ck_transactions_posts_to_a_user")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transactions_amount_positive")),
        sa.ForeignKeyConstraint(
            ["reverses"], ["transactions.id"], name=op.f("fk_transactions_reverses_transactions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_transactions_idempotency_key")),
    )
    op.create_table(
        "balances",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("asset_id", sa.SmallInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("account_id <> 0", name=op.f("ck_balances_users_only")),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_balances_balance_not_negative")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_balances_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["asset_types.id"], name=op.f("fk_balances_asset_id_asset_types")
        ),
        sa.PrimaryKeyConstraint("account_id", "asset_id", name=op.f("pk_balances")),
    )
    op.create_index(
        "uq_transactions_reverses",
        "transactions",
        ["reverses"],
        unique=True,
        postgresql_where=sa.text("reverses IS NOT NULL"),
    )
    op.execute(TREASURY_SQL)
    op.execute(APPEND_ONLY_SQL)
    op.execute(ZERO_SUM_SQL)
    op.execute(POSTING_SQL)


def downgrade() -> None:
    op.execute(DROP_SQL)
    op.drop_table("balances")
    op.drop_index("uq_transactions_reverses", table_name="transactions")
    op.drop_table("transactions")
    op.drop_index("ix_ledger_entries_account_asset_time", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_table("asset_types")
    op.drop_table("accounts")
    op.execute("DROP FUNCTION walletctl_check_new_entries()")
    op.execute("DROP FUNCTION walletctl_refuse_change()")
