"""Batch posting: many rows of a file in one call, with the guarantees of single postings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 02:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# walletctl_post_batch posts a batch of rows of one kind in the caller's transaction, and
# returns one outcome per row: posted, replayed, conflict, insufficient, not_found or
# invalid. It gives every row what walletctl_post gives one:
#
# - idempotency: a row whose key is in the ledger is a replay (same request) or a
#   conflict, and writes nothing; a key claimed by a concurrent posting while the batch
#   runs raises WL008 (the caller rolls the batch back and runs it again, when those rows
#   have become replays);
# - balances: the batch locks the balance rows it touches in ascending (account, asset)
#   order, which cannot deadlock with single postings (they hold one row lock) or with
#   another batch (same order); rows of one user apply in file order, and a spend that
#   would take the balance below zero is refused alone (insufficient) while the others
#   post;
# - zero-sum: all the batch's entries are written by one INSERT, so the zero-sum trigger
#   checks them together, and the balances move by what the entries say.
#
# The running balances of a user's rows are one window sum when no spend in the group
# fails (the usual case); only groups with a refused spend are walked row by row.
BATCH_SQL = """
CREATE FUNCTION walletctl_post_batch(
    p_kind text,
    p_actor text,
    p_lines bigint[],
    p_users text[],
    p_assets text[],
    p_amounts bigint[],
    p_keys text[],
    p_reasons text[]
) RETURNS TABLE (
    line bigint, outcome text, transaction_id bigint, balance_after bigint, detail text
) LANGUAGE plpgsql AS $$
DECLARE
    v_sign integer := CASE p_kind WHEN 'spend' THEN -1 ELSE 1 END;
    v_at timestamptz;
    v_expected bigint;
    v_booked bigint;
    v_group record;
    v_row record;
    v_running numeric;
BEGIN
    IF p_kind NOT IN ('topup', 'bonus', 'spend') THEN
        RAISE EXCEPTION 'unknown posting kind %', p_kind USING ERRCODE = '22023';
    END IF;

    -- Each row with what the ledger knows of it, and the outcomes decided without locks:
    -- invalid rows, keys seen before (replay or conflict), spends of unknown users.
    CREATE TEMPORARY TABLE walletctl_batch ON COMMIT DROP AS
    SELECT r.line, r.user_id, r.asset, r.amount, r.idempotency_key, r.reason,
           v_sign * r.amount AS delta, s.id AS asset_id, a.id AS account_id,
           CASE
               WHEN r.amount IS NULL OR r.amount <= 0 THEN 'invalid'
               WHEN row_number() OVER (PARTITION BY r.idempotency_key ORDER BY r.line) > 1
                   THEN 'invalid'
               WHEN s.id IS NULL THEN 'invalid'
               WHEN p_kind = 'bonus' AND r.reason IS NULL THEN 'invalid'
               WHEN t.id IS NOT NULL AND t.kind = p_kind AND t.amount = r.amount
                    AND t.asset_id = s.id AND t.account_id = a.id THEN 'replayed'
               WHEN t.id IS NOT NULL THEN 'conflict'
               WHEN v_sign < 0 AND a.id IS NULL THEN 'not_found'
           END AS outcome,
           t.id AS prior_id,
           NULL::numeric AS balance_after
    FROM unnest(p_lines, p_users, p_assets, p_amounts, p_keys, p_reasons)
         AS r(line, user_id, asset, amount, idempotency_key, reason)
    LEFT JOIN asset_types s ON s.code = r.asset
    LEFT JOIN accounts a ON a.external_id = r.user_id
    LEFT JOIN transactions t ON t.idempotency_key = r.idempotency_key;
    ANALYZE walletctl_batch;  -- a temporary table has no statistics; the joins below need them

    -- Users are created by their first credit, and every credited balance row exists
    -- before the locks are taken (inserted in ascending order, like the locks).
    IF v_sign > 0 AND EXISTS (
        SELECT FROM walletctl_batch b WHERE b.outcome IS NULL AND b.account_id IS NULL
    ) THEN
        INSERT INTO accounts (external_id)
        SELECT DISTINCT b.user_id FROM walletctl_batch b
        WHERE b.outcome IS NULL AND b.account_id IS NULL
        ORDER BY 1
        ON CONFLICT (external_id) DO NOTHING;
        UPDATE walletctl_batch b SET account_id = a.id
        FROM accounts a WHERE a.external_id = b.user_id AND b.account_id IS NULL;
    END IF;
    IF v_sign > 0 THEN
        INSERT INTO balances (account_id, asset_id, balance, updated_at)
        SELECT DISTINCT b.account_id, b.asset_id, 0, clock_timestamp()
        FROM walletctl_batch b
        WHERE b.outcome IS NULL
        ORDER BY 1, 2
        ON CONFLICT (account_id, asset_id) DO NOTHING;
    END IF;

    -- The locks: every balance row the batch moves, in ascending order.
    CREATE TEMPORARY TABLE walletctl_batch_start ON COMMIT DROP AS
    SELECT l.account_id, l.asset_id, l.balance, l.updated_at
    FROM (
        SELECT bal.account_id, bal.asset_id, bal.balance, bal.updated_at
        FROM balances bal
        WHERE (bal.account_id, bal.asset_id) IN (
            SELECT b.account_id, b.asset_id FROM walletctl_batch b WHERE b.outcome IS NULL)
        ORDER BY bal.account_id, bal.asset_id
        FOR UPDATE
    ) l;
    -- One time for the whole batch, never before the last entry of any locked row, so a
    -- user's entries stay in the same order by time as by id.
    SELECT greatest(clock_timestamp(), max(s.updated_at)) INTO v_at FROM walletctl_batch_start s;
    v_at := coalesce(v_at, clock_timestamp());

    -- Running balances in file order, from the balance just locked (none: 0). A group in
    -- which no running balance leaves 0..2^63-1 posts whole.
    UPDATE walletctl_batch b
    SET balance_after = w.running,
        outcome = CASE WHEN w.fits THEN 'posted' END
    FROM (
        SELECT x.line, x.running,
               min(x.running) OVER (PARTITION BY x.account_id, x.asset_id) >= 0
               AND max(x.running) OVER (PARTITION BY x.account_id, x.asset_id)
                   <= 9223372036854775807 AS fits
        FROM (
            SELECT y.line, y.account_id, y.asset_id,
                   coalesce(s.balance, 0)
                   + sum(y.delta) OVER (PARTITION BY y.account_id, y.asset_id ORDER BY y.line)
                       AS running
            FROM walletctl_batch y
            LEFT JOIN walletctl_batch_start s
              ON s.account_id = y.account_id AND s.asset_id = y.asset_id
            WHERE y.outcome IS NULL
        ) x
    ) w
    WHERE w.line = b.line;

    -- Groups where a spend would go below zero (or a credit past bigint): row by row.
    IF EXISTS (SELECT FROM walletctl_batch b WHERE b.outcome IS NULL) THEN
        CREATE INDEX ON walletctl_batch (line);
        FOR v_group IN
            SELECT DISTINCT b.account_id, b.asset_id FROM walletctl_batch b WHERE b.outcome IS NULL
        LOOP
            SELECT coalesce(
                       (SELECT s.balance FROM walletctl_batch_start s
                        WHERE s.account_id = v_group.account_id
                          AND s.asset_id = v_group.asset_id),
                       0)
            INTO v_running;
            FOR v_row IN
                SELECT b.line, b.delta FROM walletctl_batch b
                WHERE b.account_id = v_group.account_id AND b.asset_id = v_group.asset_id
                  AND b.outcome IS NULL
                ORDER BY b.line
            LOOP
                IF v_running + v_row.delta < 0 THEN
                    UPDATE walletctl_batch b SET outcome = 'insufficient', balance_after = v_running
                    WHERE b.line = v_row.line;
                ELSIF v_running + v_row.delta > 9223372036854775807 THEN
                    UPDATE walletctl_batch b SET outcome = 'invalid', balance_after = NULL
                    WHERE b.line = v_row.line;
                ELSE
                    v_running := v_running + v_row.delta;
                    UPDATE walletctl_batch b SET outcome = 'posted', balance_after = v_running
                    WHERE b.line = v_row.line;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    -- Claim the keys (in file order, so a user's transactions are in id order as in the
    -- file) and book both entries of every posted row in the same statement, so that the
    -- zero-sum trigger sees them together. A key claimed by a concurrent posting since
    -- the lookup: undo the batch.
    SELECT count(*) INTO v_expected FROM walletctl_batch b WHERE b.outcome = 'posted';
    CREATE TEMPORARY TABLE walletctl_batch_booked (line bigint, transaction_id bigint)
        ON COMMIT DROP;
    WITH booked AS (
        INSERT INTO transactions
            (kind, account_id, asset_id, amount, idempotency_key, reason, actor, created_at)
        SELECT p_kind, b.account_id, b.asset_id, b.amount, b.idempotency_key, b.reason,
               p_actor, v_at
        FROM walletctl_batch b
        WHERE b.outcome = 'posted'
        ORDER BY b.line
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, idempotency_key
    ),
    legs AS (
        SELECT b.line, 0 AS leg, booked.id, b.account_id, b.asset_id, b.delta AS amount,
               b.balance_after::bigint AS balance_after
        FROM booked JOIN walletctl_batch b ON b.idempotency_key = booked.idempotency_key
    ),
    entries AS (
        INSERT INTO ledger_entries
            (transaction_id, account_id, asset_id, amount, balance_after, created_at)
        SELECT e.id, e.account_id, e.asset_id, e.amount, e.balance_after, v_at
        FROM (
            SELECT * FROM legs
            UNION ALL
            SELECT l.line, 1, l.id, 0, l.asset_id, -l.amount, NULL FROM legs l
        ) e
        ORDER BY e.leg, e.line
    )
    INSERT INTO walletctl_batch_booked SELECT l.line, l.id FROM legs l;
    GET DIAGNOSTICS v_booked = ROW_COUNT;
    IF v_booked <> v_expected THEN
        RAISE EXCEPTION 'an idempotency key of the batch was claimed by a concurrent posting'
            USING ERRCODE = 'WL008';
    END IF;

    UPDATE balances bal
    SET balance = last.balance_after, updated_at = v_at
    FROM (
        SELECT DISTINCT ON (b.account_id, b.asset_id) b.account_id, b.asset_id,
               b.balance_after::bigint AS balance_after
        FROM walletctl_batch b
        WHERE b.outcome = 'posted'
        ORDER BY b.account_id, b.asset_id, b.line DESC
    ) last
    WHERE bal.account_id = last.account_id AND bal.asset_id = last.asset_id;

    RETURN QUERY
    SELECT b.line, b.outcome,
           coalesce(t.transaction_id, b.prior_id),
           CASE b.outcome WHEN 'posted' THEN b.balance_after::bigint
                          WHEN 'replayed' THEN e.balance_after END,
           CASE b.outcome
               WHEN 'invalid' THEN
                   CASE WHEN b.amount IS NULL OR b.amount <= 0
                            THEN 'amount must be a positive whole number'
                        WHEN b.asset_id IS NULL THEN 'asset ' || b.asset || ' not found'
                        WHEN p_kind = 'bonus' AND b.reason IS NULL THEN 'a bonus needs a reason'
                        WHEN b.balance_after IS NULL
                            THEN 'the balance would exceed the largest amount (2^63-1)'
                        ELSE 'idempotency key ' || b.idempotency_key
                             || ' appears earlier in the batch' END
               WHEN 'conflict' THEN 'idempotency key ' || b.idempotency_key
                   || ' was already used by transaction ' || b.prior_id
                   || ' for a different request'
               WHEN 'not_found' THEN 'user ' || b.user_id || ' not found'
               WHEN 'insufficient' THEN 'insufficient funds: ' || b.user_id || ' holds '
                   || b.balance_after || ' ' || b.asset || ', ' || b.amount || ' needed'
           END
    FROM walletctl_batch b
    LEFT JOIN walletctl_batch_booked t ON t.line = b.line
    LEFT JOIN ledger_entries e
      ON b.outcome = 'replayed' AND e.transaction_id = b.prior_id AND e.account_id = b.account_id
    ORDER BY b.line;
END
$$;
"""


def upgrade() -> None:
    op.execute(BATCH_SQL)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION walletctl_post_batch(text, text, bigint[], text[], text[], bigint[], "
        "text[], text[])"
    )
