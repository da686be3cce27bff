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

    CREATE TEMPORARY TABLE walletctl_batch ON COMMIT DROP AS
    SELECT r.line, r.user_id, r.asset, r.amount, r.idempotency_key, r.reason,
           v_sign * r.amount AS delta,
           NULL::smallint AS asset_id, NULL::bigint AS account_id,
           NULL::text AS outcome, NULL::bigint AS transaction_id,
           NULL::numeric AS balance_after, NULL::text AS detail
    FROM unnest(p_lines, p_users, p_assets, p_amounts, p_keys, p_reasons)
         AS r(line, user_id, asset, amount, idempotency_key, reason);

    UPDATE walletctl_batch b
    SET outcome = 'invalid',
        detail = 'idempotency key ' || b.idempotency_key || ' appears earlier in the batch'
    WHERE EXISTS (SELECT FROM walletctl_batch o
                  WHERE o.idempotency_key = b.idempotency_key AND o.line < b.line);

    UPDATE walletctl_batch b SET asset_id = s.id FROM asset_types s WHERE s.code = b.asset;
    UPDATE walletctl_batch b SET account_id = a.id
    FROM accounts a WHERE a.external_id = b.user_id;

    UPDATE walletctl_batch b
    SET outcome = 'invalid', detail = 'amount must be a positive whole number'
    WHERE b.amount IS NULL OR b.amount <= 0;
    UPDATE walletctl_batch b
    SET outcome = 'invalid', detail = 'asset ' || b.asset || ' not found'
    WHERE b.outcome IS NULL AND b.asset_id IS NULL;
    UPDATE walletctl_batch b
    SET outcome = 'invalid', detail = 'a bonus needs a reason'
    WHERE b.outcome IS NULL AND p_kind = 'bonus' AND b.reason IS NULL;

    -- Keys seen before: the same request is a replay, anything else a conflict.
    UPDATE walletctl_batch b
    SET outcome = CASE WHEN t.kind = p_kind AND t.amount = b.amount
                            AND t.asset_id = b.asset_id
                            AND t.account_id IS NOT DISTINCT FROM b.account_id
                       THEN 'replayed' ELSE 'conflict' END,
        transaction_id = t.id,
        detail = CASE WHEN t.kind = p_kind AND t.amount = b.amount AND t.asset_id = b.asset_id
                           AND t.account_id IS NOT DISTINCT FROM b.account_id
                      THEN NULL
                      ELSE 'idempotency key ' || b.idempotency_key || ' was already used by '
                           || 'transaction ' || t.id || ' for a different request' END
    FROM transactions t
    WHERE t.idempotency_key = b.idempotency_key AND b.outcome IS DISTINCT FROM 'invalid';
    UPDATE walletctl_batch b SET balance_after = e.balance_after
    FROM ledger_entries e
    WHERE b.outcome = 'replayed' AND e.transaction_id = b.transaction_id
      AND e.account_id = b.account_id;

    -- Users are created by their first credit, never by a spend.
    IF v_sign > 0 THEN
        INSERT INTO accounts (external_id)
        SELECT DISTINCT b.user_id FROM walletctl_batch b
        WHERE b.outcome IS NULL AND b.account_id IS NULL
        ORDER BY 1
        ON CONFLICT (external_id) DO NOTHING;
        UPDATE walletctl_batch b SET account_id = a.id
        FROM accounts a WHERE a.external_id = b.user_id AND b.account_id IS NULL;
        -- Every credited balance row exists before the locks are taken, inserted in
        -- ascending order like the locks.
        INSERT INTO balances (account_id, asset_id, balance, updated_at)
        SELECT DISTINCT b.account_id, b.asset_id, 0, clock_timestamp()
        FROM walletctl_batch b
        WHERE b.outcome IS NULL
        ORDER BY 1, 2
        ON CONFLICT (account_id, asset_id) DO NOTHING;
    ELSE
        UPDATE walletctl_batch b
        SET outcome = 'not_found', detail = 'user ' || b.user_id || ' not found'
        WHERE b.outcome IS NULL AND b.account_id IS NULL;
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

    -- Running balances in file order, from the balance just locked (none: 0).
    UPDATE walletctl_batch b
    SET balance_after = w.running
    FROM (
        SELECT x.line,
               coalesce(s.balance, 0)
               + sum(x.delta) OVER (PARTITION BY x.account_id, x.asset_id ORDER BY x.line)
                   AS running
        FROM walletctl_batch x
        LEFT JOIN walletctl_batch_start s
          ON s.account_id = x.account_id AND s.asset_id = x.asset_id
        WHERE x.outcome IS NULL
    ) w
    WHERE w.line = b.line;
    UPDATE walletctl_batch b SET outcome = 'posted'
    WHERE b.outcome IS NULL
      AND NOT EXISTS (
          SELECT FROM walletctl_batch g
          WHERE g.account_id = b.account_id AND g.asset_id = b.asset_id
            AND g.outcome IS NULL AND (g.balance_after < 0 OR g.balance_after > 9223372036854775807));

    -- Groups where a spend would go below zero (or a credit past bigint): row by row.
    FOR v_group IN
        SELECT DISTINCT b.account_id, b.asset_id FROM walletctl_batch b WHERE b.outcome IS NULL
    LOOP
        SELECT coalesce(
                   (SELECT s.balance FROM walletctl_batch_start s
                    WHERE s.account_id = v_group.account_id AND s.asset_id = v_group.asset_id),
                   0)
        INTO v_running;
        FOR v_row IN
            SELECT b.line, b.delta FROM walletctl_batch b
            WHERE b.account_id = v_group.account_id AND b.asset_id = v_group.asset_id
              AND b.outcome IS NULL
            ORDER BY b.line
        LOOP
            IF v_running + v_row.delta < 0 THEN
                UPDATE walletctl_batch b
                SET outcome = 'insufficient', balance_after = NULL,
                    detail = 'insufficient funds: ' || b.user_id || ' holds ' || v_running
                             || ' ' || b.asset || ', ' || b.amount || ' needed'
                WHERE b.line = v_row.line;
            ELSIF v_running + v_row.delta > 9223372036854775807 THEN
                UPDATE walletctl_batch b
                SET outcome = 'invalid', balance_after = NULL,
                    detail = 'the balance would exceed the largest amount (2^63-1)'
                WHERE b.line = v_row.line;
            ELSE
                v_running := v_running + v_row.delta;
                UPDATE walletctl_batch b SET outcome = 'posted', balance_after = v_running
                WHERE b.line = v_row.line;
            END IF;
        END LOOP;
    END LOOP;

    -- Claim the keys, in file order (so a user's transactions are in id order as in the
    -- file). A key claimed by a concurrent posting since the lookup: undo the batch.
    SELECT count(*) INTO v_expected FROM walletctl_batch b WHERE b.outcome = 'posted';
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
    )
    UPDATE walletctl_batch b SET transaction_id = booked.id
    FROM booked WHERE booked.idempotency_key = b.idempotency_key;
    GET DIAGNOSTICS v_booked = ROW_COUNT;
    IF v_booked <> v_expected THEN
        RAISE EXCEPTION 'an idempotency key of the batch was claimed by a concurrent posting'
            USING ERRCODE = 'WL008';
    END IF;

    -- Both entries of every posted row, in one statement for the zero-sum trigger.
    INSERT INTO ledger_entries
        (transaction_id, account_id, asset_id, amount, balance_after, created_at)
    SELECT e.transaction_id, e.account_id, e.asset_id, e.amount, e.balance_after, v_at
    FROM (
        SELECT b.line, 0 AS leg, b.transaction_id, b.account_id, b.asset_id, b.delta AS amount,
               b.balance_after::bigint AS balance_after
        FROM walletctl_batch b WHERE b.outcome = 'posted'
        UNION ALL
        SELECT b.line, 1, b.transaction_id, 0, b.asset_id, -b.delta, NULL
        FROM walletctl_batch b WHERE b.outcome = 'posted'
    ) e
    ORDER BY e.leg, e.line;

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
    SELECT b.line, b.outcome, b.transaction_id, b.balance_after::bigint, b.detail
    FROM walletctl_batch b
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
