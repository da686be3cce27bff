-- Posting: the one writer of the ledger.
--
-- The SQL API (what a service in any language calls; README "The SQL API"):
--   walletctl_post(kind, user_id, asset, amount, idempotency_key, reason, on_behalf_of)
--   walletctl_reverse(transaction_id, idempotency_key, reason, on_behalf_of)
--   walletctl_post_batch(kind, on_behalf_of, lines, users, assets, amounts, keys, reasons, atomic)
--   walletctl_balances(user_id)
-- They are SECURITY DEFINER functions owned by walletctl_owner, with search_path pinned:
-- callers hold no privilege on the tables, so these are the only way to write. The actor
-- recorded is session_user (the identity the database authenticated); on_behalf_of is an
-- optional note of whom the caller says it acted for.
--
-- One call of walletctl_post or walletctl_reverse is one round trip and one database
-- transaction, and takes one lock: the user's row in `balances`. Two postings for different
-- users never wait on each other; two for one user queue on that row and cannot deadlock.
-- Batches lock the rows they move in ascending (account, asset) order, which cannot
-- deadlock with single postings (one lock each) nor with another batch (same order).
--
-- Single postings and batches share every rule below: the replay predicate, the refusal
-- messages, user creation on first credit, the time rule and the booking statement.

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
    idempotency_key text,
    actor text,
    on_behalf_of text
);

-- Is the transaction already holding a key the same request as this one? Then the request
-- is a replay; otherwise a conflict.
CREATE FUNCTION walletctl_same_request(
    p_prior transactions, p_kind text, p_account_id bigint, p_asset_id smallint,
    p_amount bigint, p_reverses bigint
) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT p_prior.kind = p_kind
       AND p_prior.amount = p_amount
       AND p_prior.reverses IS NOT DISTINCT FROM p_reverses
       AND p_prior.asset_id = p_asset_id
       AND p_prior.account_id = p_account_id
$$;

-- The message of each refusal, for single postings (raised) and batches (per row). STABLE,
-- not IMMUTABLE: a user on another partition is named with this database's place in the
-- cluster (rules.sql).
CREATE FUNCTION walletctl_refusal(
    p_outcome text, p_user_id text, p_asset text, p_amount bigint, p_idempotency_key text,
    p_prior_id bigint, p_balance bigint
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE p_outcome
        WHEN 'invalid_amount' THEN 'amount must be a positive whole number'
        WHEN 'overflow' THEN 'the balance would exceed the largest amount (2^63-1)'
        WHEN 'asset_not_found' THEN 'asset ' || p_asset || ' not found'
        WHEN 'reason_required' THEN 'a reason is required for this kind of posting'
        WHEN 'not_found' THEN 'user ' || p_user_id || ' not found'
        WHEN 'conflict' THEN 'idempotency key ' || p_idempotency_key
            || ' was already used by transaction ' || p_prior_id || ' for a different request'
        WHEN 'insufficient' THEN 'insufficient funds: ' || p_user_id || ' holds '
            || p_balance || ' ' || p_asset || ', ' || p_amount || ' needed'
        WHEN 'request_key' THEN 'idempotency key ' || p_idempotency_key || ' is held by request '
            || p_prior_id || ' (awaiting approval); post with another key'
        WHEN 'frozen' THEN 'user ' || p_user_id
            || ' is frozen: no spends or credits until unfrozen (a reversal still posts)'
        WHEN 'approval_required' THEN p_amount || ' ' || p_asset
            || ' is above the approval threshold of ' || p_asset
            || ': it needs a request and a second person''s approval (post it alone)'
        WHEN 'wrong_partition' THEN (
            SELECT 'user ' || p_user_id || ' belongs to partition '
                || (hashtext(p_user_id) & (p.partitions - 1)) || ' of ' || p.partitions
                || ', not to this database (partition ' || p.partition
                || '): post through the proxy, or on partition '
                || (hashtext(p_user_id) & (p.partitions - 1)) || ' directly'
            FROM walletctl_partition() p)
    END
$$;

-- Users are created by their first credit, in ascending order of id (as the locks are
-- taken). A concurrent first credit may create the same user first: then the insert
-- waits for it and does nothing. On a partition of a cluster, a user of another partition
-- is refused (WL024) by the accounts' placement trigger (rules.sql).
CREATE FUNCTION walletctl_create_users(p_user_ids text[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO accounts (external_id)
    SELECT DISTINCT u.external_id FROM unnest(p_user_ids) AS u(external_id)
    ORDER BY 1
    ON CONFLICT (external_id) DO NOTHING
$$;

-- The time of a posting: taken once the balance row is locked and never before that row's
-- last entry, so a user's entries are in the same order by time as by id (for --as-of,
-- statements and the running-balance chain).
CREATE FUNCTION walletctl_posting_time(p_last timestamptz) RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT greatest(clock_timestamp(), p_last)
$$;

-- Claim the keys and book both entries of every row, in one statement so that the
-- entries' trigger sees each pair and the transactions' trigger sees each transaction with
-- its entries. Rows are booked in the order given, so a user's transactions and entries
-- are in id order as in the request. A key claimed by a concurrent posting since the
-- lookup makes its insert do nothing: the caller compares the count it gets back and
-- raises WL008, which undoes the whole call; asked again, that row is a replay.
CREATE FUNCTION walletctl_book(
    p_kind text, p_on_behalf_of text, p_at timestamptz, p_lines bigint[],
    p_account_ids bigint[], p_asset_ids smallint[], p_amounts bigint[], p_deltas bigint[],
    p_balances_after bigint[], p_keys text[], p_reasons text[], p_reverses bigint[]
) RETURNS TABLE (line bigint, transaction_id bigint) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH rows AS (
        SELECT *
        FROM unnest(p_lines, p_account_ids, p_asset_ids, p_amounts, p_deltas,
                    p_balances_after, p_keys, p_reasons, p_reverses)
             AS r(line, account_id, asset_id, amount, delta, balance_after, idempotency_key,
                  reason, reverses)
    ),
    booked AS (
        INSERT INTO transactions
            (kind, account_id, asset_id, amount, idempotency_key, reason, actor, on_behalf_of,
             reverses, created_at)
        SELECT p_kind, r.account_id, r.asset_id, r.amount, r.idempotency_key, r.reason,
               session_user, p_on_behalf_of, r.reverses, p_at
        FROM rows r
        ORDER BY r.line
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, idempotency_key
    ),
    legs AS (
        SELECT r.line, booked.id, r.account_id, r.asset_id, r.delta, r.balance_after
        FROM booked JOIN rows r ON r.idempotency_key = booked.idempotency_key
    ),
    entries AS (
        INSERT INTO ledger_entries
            (transaction_id, account_id, asset_id, amount, balance_after, created_at)
        SELECT e.id, e.account_id, e.asset_id, e.amount, e.balance_after, p_at
        FROM (
            SELECT l.line, 0 AS leg, l.id, l.account_id, l.asset_id, l.delta AS amount,
                   l.balance_after
            FROM legs l
            UNION ALL
            SELECT l.line, 1, l.id, 0, l.asset_id, -l.delta, NULL FROM legs l
        ) e
        ORDER BY e.leg, e.line
    )
    SELECT l.line, l.id FROM legs l;
END
$$;

-- The receipt of a transaction already in the ledger, marked as a replay.
CREATE FUNCTION walletctl_replay_receipt(p_transaction_id bigint) RETURNS walletctl_receipt
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.kind, a.external_id, s.code, t.amount, e.balance_after, t.created_at, true,
           t.reverses, t.idempotency_key, t.actor, t.on_behalf_of
    FROM transactions t
    JOIN accounts a ON a.id = t.account_id
    JOIN asset_types s ON s.id = t.asset_id
    JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
    WHERE t.id = p_transaction_id
$$;

-- One posting: look it up, move the balance (the only lock), apply the operator controls,
-- book it; or raise the error that says why not. p_policy says which controls apply:
-- 'posting' (walletctl_post: a frozen user, the approval threshold), 'approval' (an approved
-- request: a frozen user) or 'reversal' (none: a reversal undoes a posting). A key filed by
-- a request for approval posts only through that request's approval.
-- Internal: reached only through walletctl_post, walletctl_reverse and
-- walletctl_approve_request.
CREATE FUNCTION walletctl_post_one(
    p_kind text, p_user_id text, p_asset text, p_amount bigint, p_delta bigint,
    p_idempotency_key text, p_reason text, p_on_behalf_of text, p_reverses bigint,
    p_policy text
) RETURNS walletctl_receipt LANGUAGE plpgsql AS $$
DECLARE
    v_asset_id smallint;
    v_account_id bigint;
    v_prior transactions%ROWTYPE;
    v_request credit_requests%ROWTYPE;
    v_balance bigint;
    v_last timestamptz;
    v_at timestamptz;
    v_transaction_id bigint;
    v_reversal_id bigint;
    v_refusal text;
BEGIN
    -- Invariant 4 (amount > 0 within bigint) is also a CHECK; this gives it a clear error.
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION '%, got %', walletctl_refusal('invalid_amount', NULL, NULL, NULL, NULL, NULL, NULL),
            p_amount USING ERRCODE = 'WL009';
    END IF;
    IF p_policy <> 'reversal' THEN
        PERFORM walletctl_require_read_committed();
    END IF;

    -- What the request names, whether its key was used before, and whether a request for
    -- approval holds it: one statement.
    SELECT (SELECT s.id FROM asset_types s WHERE s.code = p_asset),
           (SELECT a.id FROM accounts a WHERE a.external_id = p_user_id),
           (SELECT t.id FROM transactions t WHERE t.idempotency_key = p_idempotency_key),
           (SELECT r.id FROM credit_requests r
            WHERE r.idempotency_key = p_idempotency_key AND p_policy <> 'approval')
    INTO v_asset_id, v_account_id, v_prior.id, v_request.id;

    -- A key seen before: the same request is a replay, anything else a conflict. Nothing
    -- is locked or written on either path.
    IF v_prior.id IS NOT NULL THEN
        SELECT * INTO v_prior FROM transactions t WHERE t.id = v_prior.id;
        IF walletctl_same_request(v_prior, p_kind, v_account_id, v_asset_id, p_amount, p_reverses) THEN
            RETURN walletctl_replay_receipt(v_prior.id);
        END IF;
        RAISE EXCEPTION '%', walletctl_refusal('conflict', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, v_prior.id, NULL)
            USING ERRCODE = 'WL005', DETAIL = v_prior.id::text;
    END IF;
    -- A key filed by a request for approval belongs to that request: the same request sent
    -- again still needs its approval (WL017: filing it again replays the request); any
    -- other posting with the key would make the approval conflict, so it is refused.
    IF v_request.id IS NOT NULL THEN
        SELECT * INTO v_request FROM credit_requests r WHERE r.id = v_request.id;
        IF (v_request.kind, v_request.user_id, v_request.asset, v_request.amount)
           = (p_kind, p_user_id, p_asset, p_amount) THEN
            RAISE EXCEPTION '%', walletctl_refusal('approval_required', p_user_id, p_asset,
                                                   p_amount, p_idempotency_key, NULL, NULL)
                USING ERRCODE = 'WL017',
                      DETAIL = (SELECT p.approve_above FROM asset_policies p
                                WHERE p.asset = p_asset ORDER BY p.id DESC LIMIT 1)::text;
        END IF;
        RAISE EXCEPTION '%', walletctl_refusal('request_key', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, v_request.id, NULL)
            USING ERRCODE = 'WL005';
    END IF;
    IF v_asset_id IS NULL THEN
        RAISE EXCEPTION '%', walletctl_refusal('asset_not_found', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, NULL, NULL)
            USING ERRCODE = 'WL003';
    END IF;
    IF v_account_id IS NULL THEN
        IF p_delta < 0 THEN
            RAISE EXCEPTION '%', walletctl_refusal('not_found', p_user_id, p_asset, p_amount,
                                                   p_idempotency_key, NULL, NULL)
                USING ERRCODE = 'WL002';
        END IF;
        PERFORM walletctl_create_users(ARRAY[p_user_id]);
        SELECT a.id INTO v_account_id FROM accounts a WHERE a.external_id = p_user_id;
    END IF;

    -- The only lock.
    IF p_delta > 0 THEN
        INSERT INTO balances AS b (account_id, asset_id, balance, updated_at)
        VALUES (v_account_id, v_asset_id, p_delta, clock_timestamp())
        ON CONFLICT (account_id, asset_id) DO UPDATE
            SET balance = b.balance + EXCLUDED.balance,
                updated_at = walletctl_posting_time(b.updated_at)
        RETURNING b.balance, b.updated_at INTO v_balance, v_at;
    ELSE
        -- Invariant 3: the balance check and the debit are one conditional UPDATE.
        UPDATE balances AS b
        SET balance = b.balance + p_delta,
            updated_at = walletctl_posting_time(b.updated_at)
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
            -- A frozen user is refused as frozen, whatever it holds (as in a batch).
            IF p_policy <> 'reversal' AND walletctl_user_frozen(p_user_id) THEN
                RAISE EXCEPTION '%', walletctl_refusal('frozen', p_user_id, p_asset, p_amount,
                                                       p_idempotency_key, NULL, NULL)
                    USING ERRCODE = 'WL015';
            END IF;
            SELECT b.balance INTO v_balance FROM balances b
            WHERE b.account_id = v_account_id AND b.asset_id = v_asset_id;
            RAISE EXCEPTION '%', walletctl_refusal('insufficient', p_user_id, p_asset, -p_delta,
                                                   p_idempotency_key, NULL, coalesce(v_balance, 0))
                USING ERRCODE = 'WL001', DETAIL = coalesce(v_balance, 0)::text;
        END IF;
    END IF;

    -- The operator controls, read after the lock (see walletctl_require_read_committed).
    IF p_policy <> 'reversal' THEN
        SELECT p.refusal INTO v_refusal
        FROM walletctl_policy_refusal(p_user_id, p_asset, p_amount,
                                      p_policy = 'posting' AND p_delta > 0) p;
        IF v_refusal = 'frozen' THEN
            RAISE EXCEPTION '%', walletctl_refusal('frozen', p_user_id, p_asset, p_amount,
                                                   p_idempotency_key, NULL, NULL)
                USING ERRCODE = 'WL015';
        ELSIF v_refusal = 'approval_required' THEN
            RAISE EXCEPTION '%', walletctl_refusal('approval_required', p_user_id, p_asset,
                                                   p_amount, p_idempotency_key, NULL, NULL)
                USING ERRCODE = 'WL017',
                      DETAIL = (SELECT p.approve_above FROM asset_policies p WHERE p.asset = p_asset
                                ORDER BY p.id DESC LIMIT 1)::text;
        END IF;
    END IF;

    SELECT b.transaction_id INTO v_transaction_id
    FROM walletctl_book(p_kind, p_on_behalf_of, v_at, ARRAY[1::bigint], ARRAY[v_account_id],
                        ARRAY[v_asset_id], ARRAY[p_amount], ARRAY[p_delta], ARRAY[v_balance],
                        ARRAY[p_idempotency_key], ARRAY[p_reason], ARRAY[p_reverses]) b;
    IF v_transaction_id IS NULL THEN
        RAISE EXCEPTION 'idempotency key % was claimed by a concurrent posting', p_idempotency_key
            USING ERRCODE = 'WL008';
    END IF;

    RETURN ROW(v_transaction_id, p_kind, p_user_id, p_asset, p_amount, v_balance, v_at, false,
               p_reverses, p_idempotency_key, session_user::text, p_on_behalf_of)::walletctl_receipt;
END
$$;

-- A top-up, bonus or spend. Users are created on their first credit.
--
-- The operator controls (controls.sql): a frozen user is refused (WL015), a credit above
-- its asset's approval threshold is refused (WL017: file it with walletctl_request_credit),
-- both decided after the balance lock (walletctl_post_one); a credit is then charged to the
-- caller's issuance budgets (WL016 undoes it when over), on the UTC day of the posting's
-- own time. A key that already holds a posting still replays (or conflicts) whatever the
-- policy says now.
CREATE FUNCTION walletctl_post(
    p_kind text, p_user_id text, p_asset text, p_amount bigint,
    p_idempotency_key text, p_reason text, p_on_behalf_of text DEFAULT NULL
) RETURNS walletctl_receipt LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_receipt walletctl_receipt;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('topup', 'bonus', 'spend') THEN
        RAISE EXCEPTION 'unknown posting kind %', p_kind USING ERRCODE = '22023';
    END IF;
    v_receipt := public.walletctl_post_one(
        p_kind, p_user_id, p_asset, p_amount,
        CASE WHEN p_kind = 'spend' THEN -p_amount ELSE p_amount END,
        p_idempotency_key, p_reason, p_on_behalf_of, NULL, 'posting');
    IF p_kind <> 'spend' AND NOT v_receipt.replayed
       AND EXISTS (SELECT FROM issuance_budgets b WHERE b.asset = p_asset)
    THEN
        PERFORM public.walletctl_charge_issuance(session_user::text, p_asset, p_amount,
                                                 v_receipt.created_at);
    END IF;
    RETURN v_receipt;
END
$$;

-- The reversal of a top-up, bonus or spend: the mirror of its entries. Reversing a credit
-- the user has already spent is refused as insufficient funds.
CREATE FUNCTION walletctl_reverse(
    p_transaction_id bigint, p_idempotency_key text, p_reason text,
    p_on_behalf_of text DEFAULT NULL
) RETURNS walletctl_receipt LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
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
            RAISE EXCEPTION '%', walletctl_refusal('conflict', NULL, NULL, NULL,
                                                   p_idempotency_key, v_prior.id, NULL)
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
    RETURN public.walletctl_post_one(
        'reversal',
        (SELECT a.external_id FROM accounts a WHERE a.id = v_target.account_id),
        (SELECT s.code FROM asset_types s WHERE s.id = v_target.asset_id),
        v_target.amount,
        CASE WHEN v_target.kind = 'spend' THEN v_target.amount ELSE -v_target.amount END,
        p_idempotency_key, p_reason, p_on_behalf_of, p_transaction_id, 'reversal');
END
$$;

-- A user's balances, one row per asset held: what a service reads.
CREATE FUNCTION walletctl_balances(p_user_id text)
RETURNS TABLE (asset text, balance bigint, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT s.code, b.balance, b.updated_at
    FROM balances b
    JOIN accounts a ON a.id = b.account_id
    JOIN asset_types s ON s.id = b.asset_id
    WHERE a.external_id = p_user_id
    ORDER BY s.code
$$;

-- A new asset type. Asset types are never changed or deleted.
CREATE FUNCTION walletctl_add_asset(p_code text, p_name text)
RETURNS TABLE (code text, name text, created_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO asset_types AS s (code, name) VALUES (p_code, p_name)
    ON CONFLICT (code) DO NOTHING
    RETURNING s.code, s.name, s.created_at
$$;
