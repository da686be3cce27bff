-- walletctl_post_batch posts a batch of rows of one kind in the caller's transaction, and
-- returns one outcome per row: posted, replayed, conflict, insufficient, not_found or
-- invalid. It gives every row what walletctl_post gives one, through the same rules
-- (posting.sql): the replay predicate, the refusal messages, user creation, the time rule
-- and the booking statement.
--
-- - idempotency: a row whose key is in the ledger is a replay (same request) or a
--   conflict, and writes nothing; a key claimed by a concurrent posting while the batch
--   runs raises WL008 (the caller rolls the batch back and runs it again, when those rows
--   have become replays);
-- - balances: the batch locks the balance rows it touches in ascending (account, asset)
--   order; rows of one user apply in line order, and a spend that would take the balance
--   below zero is refused alone (insufficient) while the others post;
-- - atomic: with p_atomic, the first row that would not post or replay raises its error
--   (its SQLSTATE, the line named) and nothing of the batch is written;
-- - line numbers name rows; a batch that repeats one is refused (WL014);
-- - operator controls (controls.sql): a row for a frozen user, or a credit above its
--   asset's approval threshold, is refused alone (invalid, the detail says why), decided
--   before the locks and again after them; a batch whose credits exceed the caller's
--   issuance budget is refused whole (WL016); a row whose key a request for approval holds
--   is a conflict. The batch runs at READ COMMITTED only (WL023), as walletctl_post;
-- - placement: on a partition of a cluster, a credit that would create a user of another
--   partition is refused alone (invalid, the detail names both partitions; atomic: WL024),
--   before any user is created, as the accounts' placement trigger would (rules.sql).
--
-- Its temporary tables are always named with their schema (pg_temp.walletctl_batch), so
-- that no table elsewhere on the search path can stand in for them.
--
-- The running balances of a user's rows are one window sum when no spend in the group
-- fails (the usual case); only groups with a refused spend are walked row by row.
CREATE FUNCTION walletctl_post_batch(
    p_kind text,
    p_on_behalf_of text,
    p_lines bigint[],
    p_users text[],
    p_assets text[],
    p_amounts bigint[],
    p_keys text[],
    p_reasons text[],
    p_atomic boolean DEFAULT false
) RETURNS TABLE (
    line bigint, outcome text, transaction_id bigint, balance_after bigint, detail text
) LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_sign integer := CASE p_kind WHEN 'spend' THEN -1 ELSE 1 END;
    v_at timestamptz;
    v_expected bigint;
    v_booked bigint;
    v_group record;
    v_row record;
    v_running numeric;
    v_partitions bigint;
    v_partition bigint;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('topup', 'bonus', 'spend') THEN
        RAISE EXCEPTION 'unknown posting kind %', p_kind USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_lines) IS DISTINCT FROM cardinality(p_users)
       OR cardinality(p_lines) IS DISTINCT FROM cardinality(p_assets)
       OR cardinality(p_lines) IS DISTINCT FROM cardinality(p_amounts)
       OR cardinality(p_lines) IS DISTINCT FROM cardinality(p_keys)
       OR cardinality(p_lines) IS DISTINCT FROM cardinality(p_reasons)
    THEN
        RAISE EXCEPTION 'the arrays of a batch (lines, users, assets, amounts, keys, reasons) must all have one element per row'
            USING ERRCODE = '22023';
    END IF;
    PERFORM walletctl_require_read_committed();
    IF (SELECT count(DISTINCT l) <> count(*) OR bool_or(l IS NULL) FROM unnest(p_lines) AS l) THEN
        RAISE EXCEPTION 'the line numbers of a batch must be present and distinct'
            USING ERRCODE = 'WL014';
    END IF;

    -- This database's place in a cluster (none: NULL, and no row is placed elsewhere).
    SELECT p.partitions, p.partition INTO v_partitions, v_partition FROM walletctl_partition() p;

    -- Each row with what the ledger knows of it, and the outcomes decided without locks:
    -- invalid rows, keys seen before (replay or conflict), spends of unknown users, new
    -- users of another partition.
    CREATE TEMPORARY TABLE pg_temp.walletctl_batch ON COMMIT DROP AS
    SELECT r.line, r.user_id, r.asset, r.amount, r.idempotency_key, r.reason,
           v_sign * r.amount AS delta, s.id AS asset_id, a.id AS account_id,
           CASE
               WHEN r.amount IS NULL OR r.amount <= 0 THEN 'invalid_amount'
               WHEN row_number() OVER (PARTITION BY r.idempotency_key ORDER BY r.line) > 1
                   THEN 'duplicate_key'
               -- In the order walletctl_post_one decides them: the key (a request's too), then
               -- the asset.
               WHEN t.id IS NOT NULL
                    AND walletctl_same_request(t, p_kind, a.id, s.id, r.amount, NULL)
                   THEN 'replayed'
               WHEN t.id IS NOT NULL THEN 'conflict'
               -- A request's key posts only through that request's approval.
               WHEN q.id IS NOT NULL
                    AND (q.kind, q.user_id, q.asset, q.amount)
                        = (p_kind, r.user_id, r.asset, r.amount)
                   THEN 'approval_required'
               WHEN q.id IS NOT NULL THEN 'request_key'
               WHEN s.id IS NULL THEN 'asset_not_found'
               WHEN p_kind = 'bonus' AND r.reason IS NULL THEN 'reason_required'
               WHEN v_sign < 0 AND a.id IS NULL THEN 'not_found'
               WHEN v_sign > 0 AND a.id IS NULL
                    AND hashtext(r.user_id) & (v_partitions - 1) <> v_partition
                   THEN 'wrong_partition'
               -- The operator controls (controls.sql), as for walletctl_post; decided here
               -- so that a refused credit creates no user, and again after the locks.
               ELSE (SELECT p.refusal
                     FROM walletctl_policy_refusal(r.user_id, r.asset, r.amount, v_sign > 0) p)
           END AS outcome,
           coalesce(t.id, q.id) AS prior_id,
           NULL::numeric AS balance_after
    FROM unnest(p_lines, p_users, p_assets, p_amounts, p_keys, p_reasons)
         AS r(line, user_id, asset, amount, idempotency_key, reason)
    LEFT JOIN asset_types s ON s.code = r.asset
    LEFT JOIN accounts a ON a.external_id = r.user_id
    LEFT JOIN transactions t ON t.idempotency_key = r.idempotency_key
    LEFT JOIN credit_requests q ON q.idempotency_key = r.idempotency_key AND t.id IS NULL;
    ANALYZE pg_temp.walletctl_batch;  -- a temporary table has no statistics; the joins below need them

    -- Users are created by their first credit, and every credited balance row exists
    -- before the locks are taken (inserted in ascending order, like the locks).
    IF v_sign > 0 AND EXISTS (
        SELECT FROM pg_temp.walletctl_batch b WHERE b.outcome IS NULL AND b.account_id IS NULL
    ) THEN
        PERFORM walletctl_create_users(array_agg(b.user_id))
        FROM pg_temp.walletctl_batch b WHERE b.outcome IS NULL AND b.account_id IS NULL;
        UPDATE pg_temp.walletctl_batch b SET account_id = a.id
        FROM accounts a WHERE a.external_id = b.user_id AND b.account_id IS NULL;
    END IF;
    IF v_sign > 0 THEN
        INSERT INTO balances (account_id, asset_id, balance, updated_at)
        SELECT DISTINCT b.account_id, b.asset_id, 0, clock_timestamp()
        FROM pg_temp.walletctl_batch b
        WHERE b.outcome IS NULL
        ORDER BY 1, 2
        ON CONFLICT (account_id, asset_id) DO NOTHING;
    END IF;

    -- The locks: every balance row the batch moves, in ascending order.
    CREATE TEMPORARY TABLE pg_temp.walletctl_batch_start ON COMMIT DROP AS
    SELECT l.account_id, l.asset_id, l.balance, l.updated_at
    FROM (
        SELECT bal.account_id, bal.asset_id, bal.balance, bal.updated_at
        FROM balances bal
        WHERE (bal.account_id, bal.asset_id) IN (
            SELECT b.account_id, b.asset_id FROM pg_temp.walletctl_batch b WHERE b.outcome IS NULL)
        ORDER BY bal.account_id, bal.asset_id
        FOR UPDATE
    ) l;
    -- One time for the whole batch, never before the last entry of any locked row.
    SELECT walletctl_posting_time(max(s.updated_at)) INTO v_at FROM pg_temp.walletctl_batch_start s;

    -- The operator controls again, now that the rows are locked: this statement sees every
    -- freeze and threshold committed before the locks were granted (walletctl_post_one
    -- does the same for a single posting).
    UPDATE pg_temp.walletctl_batch b
    SET outcome = (SELECT p.refusal
                   FROM walletctl_policy_refusal(b.user_id, b.asset, b.amount, v_sign > 0) p)
    WHERE b.outcome IS NULL;

    -- Running balances in line order, from the balance just locked (none: 0). A group in
    -- which no running balance leaves 0..2^63-1 posts whole.
    UPDATE pg_temp.walletctl_batch b
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
            FROM pg_temp.walletctl_batch y
            LEFT JOIN pg_temp.walletctl_batch_start s
              ON s.account_id = y.account_id AND s.asset_id = y.asset_id
            WHERE y.outcome IS NULL
        ) x
    ) w
    WHERE w.line = b.line;

    -- Groups where a spend would go below zero (or a credit past bigint): row by row.
    IF EXISTS (SELECT FROM pg_temp.walletctl_batch b WHERE b.outcome IS NULL) THEN
        CREATE INDEX ON pg_temp.walletctl_batch (line);
        FOR v_group IN
            SELECT DISTINCT b.account_id, b.asset_id FROM pg_temp.walletctl_batch b WHERE b.outcome IS NULL
        LOOP
            SELECT coalesce(
                       (SELECT s.balance FROM pg_temp.walletctl_batch_start s
                        WHERE s.account_id = v_group.account_id
                          AND s.asset_id = v_group.asset_id),
                       0)
            INTO v_running;
            FOR v_row IN
                SELECT b.line, b.delta FROM pg_temp.walletctl_batch b
                WHERE b.account_id = v_group.account_id AND b.asset_id = v_group.asset_id
                  AND b.outcome IS NULL
                ORDER BY b.line
            LOOP
                IF v_running + v_row.delta < 0 THEN
                    UPDATE pg_temp.walletctl_batch b SET outcome = 'insufficient', balance_after = v_running
                    WHERE b.line = v_row.line;
                ELSIF v_running + v_row.delta > 9223372036854775807 THEN
                    UPDATE pg_temp.walletctl_batch b SET outcome = 'overflow', balance_after = NULL
                    WHERE b.line = v_row.line;
                ELSE
                    v_running := v_running + v_row.delta;
                    UPDATE pg_temp.walletctl_batch b SET outcome = 'posted', balance_after = v_running
                    WHERE b.line = v_row.line;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    -- All or nothing: the first row that would not post or replay stops the batch.
    IF p_atomic THEN
        SELECT b.line, b.outcome, walletctl_refusal(b.outcome, b.user_id, b.asset, b.amount,
                   b.idempotency_key, b.prior_id, b.balance_after::bigint) AS message
        INTO v_row
        FROM pg_temp.walletctl_batch b
        WHERE b.outcome NOT IN ('posted', 'replayed')
        ORDER BY b.line
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'line %: %', v_row.line,
                coalesce(v_row.message, 'idempotency key appears earlier in the batch')
                USING ERRCODE = CASE v_row.outcome
                    WHEN 'insufficient' THEN 'WL001'
                    WHEN 'not_found' THEN 'WL002'
                    WHEN 'asset_not_found' THEN 'WL003'
                    WHEN 'conflict' THEN 'WL005'
                    WHEN 'request_key' THEN 'WL005'
                    WHEN 'invalid_amount' THEN 'WL009'
                    WHEN 'overflow' THEN 'WL009'
                    WHEN 'frozen' THEN 'WL015'
                    WHEN 'approval_required' THEN 'WL017'
                    WHEN 'wrong_partition' THEN 'WL024'
                    ELSE '22023' END,
                DETAIL = v_row.line::text;
        END IF;
    END IF;

    -- Issuance budgets: what the batch credits, per asset, charged to the caller's budgets
    -- after the balance locks (assets in ascending order); over a budget, the whole batch
    -- is refused (WL016) and nothing of it is written.
    IF v_sign > 0 THEN
        FOR v_group IN
            SELECT b.asset, sum(b.amount)::bigint AS total
            FROM pg_temp.walletctl_batch b
            WHERE b.outcome = 'posted'
              AND EXISTS (SELECT FROM issuance_budgets x WHERE x.asset = b.asset)
            GROUP BY b.asset
            ORDER BY b.asset
        LOOP
            PERFORM public.walletctl_charge_issuance(session_user::text, v_group.asset,
                                                     v_group.total, v_at);
        END LOOP;
    END IF;

    SELECT count(*) INTO v_expected FROM pg_temp.walletctl_batch b WHERE b.outcome = 'posted';
    CREATE TEMPORARY TABLE pg_temp.walletctl_batch_booked ON COMMIT DROP AS
    SELECT k.line, k.transaction_id
    FROM walletctl_batch_posted_rows(p_kind, p_on_behalf_of, v_at) k;
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
        FROM pg_temp.walletctl_batch b
        WHERE b.outcome = 'posted'
        ORDER BY b.account_id, b.asset_id, b.line DESC
    ) last
    WHERE bal.account_id = last.account_id AND bal.asset_id = last.asset_id;

    RETURN QUERY
    SELECT b.line,
           CASE WHEN b.outcome IN ('invalid_amount', 'duplicate_key', 'asset_not_found',
                                   'reason_required', 'overflow', 'frozen',
                                   'approval_required', 'wrong_partition')
                THEN 'invalid'
                WHEN b.outcome = 'request_key' THEN 'conflict'
                ELSE b.outcome END,
           CASE WHEN b.outcome <> 'request_key' THEN coalesce(t.transaction_id, b.prior_id) END,
           CASE b.outcome WHEN 'posted' THEN b.balance_after::bigint
                          WHEN 'replayed' THEN e.balance_after END,
           CASE b.outcome
               WHEN 'duplicate_key' THEN 'idempotency key ' || b.idempotency_key
                   || ' appears earlier in the batch'
               WHEN 'posted' THEN NULL
               WHEN 'replayed' THEN NULL
               ELSE walletctl_refusal(b.outcome, b.user_id, b.asset, b.amount,
                                      b.idempotency_key, b.prior_id, b.balance_after::bigint)
           END
    FROM pg_temp.walletctl_batch b
    LEFT JOIN pg_temp.walletctl_batch_booked t ON t.line = b.line
    LEFT JOIN ledger_entries e
      ON b.outcome = 'replayed' AND e.transaction_id = b.prior_id AND e.account_id = b.account_id
    ORDER BY b.line;
END
$$;

-- The batch's posted rows, booked through the one booking statement (posting.sql), in
-- line order. Internal.
CREATE FUNCTION walletctl_batch_posted_rows(p_kind text, p_on_behalf_of text, p_at timestamptz)
RETURNS TABLE (line bigint, transaction_id bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_rows record;
BEGIN
    SELECT array_agg(b.line ORDER BY b.line) AS lines,
           array_agg(b.account_id ORDER BY b.line) AS account_ids,
           array_agg(b.asset_id ORDER BY b.line) AS asset_ids,
           array_agg(b.amount ORDER BY b.line) AS amounts,
           array_agg(b.delta ORDER BY b.line) AS deltas,
           array_agg(b.balance_after::bigint ORDER BY b.line) AS balances_after,
           array_agg(b.idempotency_key ORDER BY b.line) AS keys,
           array_agg(b.reason ORDER BY b.line) AS reasons
    INTO v_rows
    FROM pg_temp.walletctl_batch b
    WHERE b.outcome = 'posted';
    IF v_rows.lines IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT k.line, k.transaction_id
    FROM walletctl_book(p_kind, p_on_behalf_of, p_at, v_rows.lines, v_rows.account_ids,
                        v_rows.asset_ids, v_rows.amounts, v_rows.deltas, v_rows.balances_after,
                        v_rows.keys, v_rows.reasons,
                        array_fill(NULL::bigint, ARRAY[cardinality(v_rows.lines)])) k;
END
$$;
