-- Operator controls (README "Operator controls"): four-eyes approval of large manual
-- credits, daily issuance budgets, frozen users. Enforced here, for the role that logged in
-- (session_user), not by the CLI.
--
-- Policy lives in append-only tables (asset_policies, issuance_budgets, user_freezes,
-- credit_requests, credit_request_decisions): the policy in force is each key's newest row,
-- and every change is a row naming the identity that made it. Only walletctl_admin may
-- change policy (walletctl_set_approval, walletctl_set_budget, walletctl_freeze_user,
-- walletctl_unfreeze_user); operators and services file requests
-- (walletctl_request_credit); approvers decide them (walletctl_approve_request,
-- walletctl_reject_request) and record expiries (walletctl_expire_requests).
-- privileges.sql grants.
--
-- SQLSTATEs (walletctl/core/sqlerrors.py):
--   WL015 the user is frozen             WL019 four eyes: one's own request
--   WL016 issuance budget exceeded       WL020 the request was already decided otherwise
--   WL017 approval required              WL021 not a request (no threshold, or not above it)
--   WL018 request or role not found      WL022 the request has expired
-- (WL024, a user of another partition of a cluster, is the accounts' rule: rules.sql.)
--
-- Locks: a posting locks its balance row(s) first and its budget rows last, in ascending
-- (asset, role) order, in single postings, batches and approvals alike; an approval locks
-- its request row before anything else. So two postings can only wait on each other in
-- that one order, and cannot deadlock.

-- Invariant 2 for the policy tables: append-only, as the ledger.
CREATE TRIGGER asset_policies_append_only BEFORE UPDATE OR DELETE ON asset_policies
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER asset_policies_no_truncate BEFORE TRUNCATE ON asset_policies
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER issuance_budgets_append_only BEFORE UPDATE OR DELETE ON issuance_budgets
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER issuance_budgets_no_truncate BEFORE TRUNCATE ON issuance_budgets
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER issuance_usage_no_delete BEFORE DELETE ON issuance_usage
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER issuance_usage_no_truncate BEFORE TRUNCATE ON issuance_usage
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER user_freezes_append_only BEFORE UPDATE OR DELETE ON user_freezes
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER user_freezes_no_truncate BEFORE TRUNCATE ON user_freezes
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER credit_requests_append_only BEFORE UPDATE OR DELETE ON credit_requests
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER credit_requests_no_truncate BEFORE TRUNCATE ON credit_requests
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER credit_request_decisions_append_only
    BEFORE UPDATE OR DELETE ON credit_request_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER credit_request_decisions_no_truncate BEFORE TRUNCATE ON credit_request_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();

-- Is the user frozen now? (Its newest freeze row; none: not frozen.) One index probe.
CREATE FUNCTION walletctl_user_frozen(p_user_id text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT f.frozen FROM user_freezes f WHERE f.user_id = p_user_id
         ORDER BY f.id DESC LIMIT 1),
        false)
$$;

-- Is a posting refused by the operator controls in force now (controls.sql)? 'frozen' for a
-- frozen user; 'approval_required' for a credit above its asset's approval threshold when
-- p_credit_needs_approval (an approved request does not need it again); else NULL. The
-- one definition for single postings, approvals and batches. A one-row set-returning SQL
-- function with a single SELECT, so that PostgreSQL inlines it into the query that calls
-- it (FROM walletctl_policy_refusal(...)) and that query's plan is cached: a scalar SQL
-- function with subqueries is planned again at every call, which cost a single posting
-- about a fifth of its server time.
CREATE FUNCTION walletctl_policy_refusal(
    p_user_id text, p_asset text, p_amount bigint, p_credit_needs_approval boolean
) RETURNS TABLE (refusal text) LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN (SELECT f.frozen FROM user_freezes f WHERE f.user_id = p_user_id
              ORDER BY f.id DESC LIMIT 1)
            THEN 'frozen'
        WHEN p_credit_needs_approval
             AND p_amount > (SELECT p.approve_above FROM asset_policies p
                             WHERE p.asset = p_asset ORDER BY p.id DESC LIMIT 1)
            THEN 'approval_required'
    END
$$;

-- The operator controls are read after the posting's balance lock, in a statement of their
-- own: at READ COMMITTED that statement sees every freeze, threshold and budget committed
-- before the lock was granted, so a posting that queued behind a lock (or was slow) cannot
-- land after a freeze it never saw. A REPEATABLE READ or SERIALIZABLE transaction would read
-- them in its old snapshot, so the functions that apply policy refuse to run in one (WL023).
CREATE FUNCTION walletctl_require_read_committed() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'walletctl''s posting functions run at READ COMMITTED, not %: a posting must see the operator controls committed before its lock',
            current_setting('transaction_isolation') USING ERRCODE = 'WL023';
    END IF;
END
$$;

-- Charge an issuance of p_amount of p_asset to every budget that binds p_role: its own, and
-- those of the group roles it is a member of (a group's budget is shared by its members).
-- Each budget's usage row for the UTC day of p_at, the posting's own time (taken under its
-- balance lock, never the start of its transaction: a transaction held open across
-- midnight must not spend yesterday's budget), is moved by one INSERT ... ON CONFLICT DO UPDATE,
-- which holds that row's lock until the posting commits: a concurrent posting charged to
-- the same budget waits, then adds to the committed total, so together they can never
-- exceed it. Over the budget, the whole posting is undone (WL016), its charge with it.
-- A superuser is bound only by a budget on itself (it could switch any rule off anyway).
-- Internal: called by the posting functions after the balance locks, budgets in ascending
-- role order.
CREATE FUNCTION walletctl_charge_issuance(
    p_role text, p_asset text, p_amount bigint, p_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_day date := (p_at AT TIME ZONE 'UTC')::date;
    v_budget record;
    v_used bigint;
BEGIN
    FOR v_budget IN
        SELECT cur.role, cur.daily_limit
        FROM (
            SELECT DISTINCT ON (b.role) b.role, b.daily_limit
            FROM issuance_budgets b
            WHERE b.asset = p_asset
            ORDER BY b.role, b.id DESC
        ) cur
        JOIN pg_roles bound ON bound.rolname = cur.role
        JOIN pg_roles me ON me.rolname = p_role
        WHERE cur.daily_limit IS NOT NULL
          AND (me.oid = bound.oid OR (NOT me.rolsuper AND pg_has_role(me.oid, bound.oid, 'MEMBER')))
        ORDER BY cur.role
    LOOP
        INSERT INTO issuance_usage AS u (role, asset, day, used)
        VALUES (v_budget.role, p_asset, v_day, p_amount)
        ON CONFLICT (role, asset, day) DO UPDATE SET used = u.used + EXCLUDED.used
        RETURNING u.used INTO v_used;
        IF v_used > v_budget.daily_limit THEN
            RAISE EXCEPTION 'issuance budget exceeded: the budget of % allows % % per UTC day; % used today before this, % remains, this needs %',
                v_budget.role, v_budget.daily_limit, p_asset, v_used - p_amount,
                greatest(v_budget.daily_limit - (v_used - p_amount), 0), p_amount
                USING ERRCODE = 'WL016',
                      DETAIL = greatest(v_budget.daily_limit - (v_used - p_amount), 0)::text;
        END IF;
    END LOOP;
END
$$;

-- Policy changes: walletctl_admin only. Each returns the row it appended.

-- The approval threshold of an asset (NULL: no approval needed) and how long a request
-- stays open.
CREATE FUNCTION walletctl_set_approval(
    p_asset text, p_approve_above bigint, p_request_hours integer DEFAULT 24
) RETURNS asset_policies LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_row asset_policies%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT FROM asset_types s WHERE s.code = p_asset) THEN
        RAISE EXCEPTION 'asset % not found', p_asset USING ERRCODE = 'WL003';
    END IF;
    INSERT INTO asset_policies (asset, approve_above, request_hours, set_by)
    VALUES (p_asset, p_approve_above, p_request_hours, session_user)
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

-- The daily issuance budget of a role for an asset (NULL: no budget).
CREATE FUNCTION walletctl_set_budget(p_role text, p_asset text, p_daily_limit bigint)
RETURNS issuance_budgets LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_row issuance_budgets%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = p_role) THEN
        RAISE EXCEPTION 'role % not found', p_role USING ERRCODE = 'WL018';
    END IF;
    IF NOT EXISTS (SELECT FROM asset_types s WHERE s.code = p_asset) THEN
        RAISE EXCEPTION 'asset % not found', p_asset USING ERRCODE = 'WL003';
    END IF;
    INSERT INTO issuance_budgets (role, asset, daily_limit, set_by)
    VALUES (p_role, p_asset, p_daily_limit, session_user)
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

-- Freeze or unfreeze a user, with the reason; recorded with who did it.
CREATE FUNCTION walletctl_set_frozen(p_user_id text, p_frozen boolean, p_reason text)
RETURNS user_freezes LANGUAGE plpgsql AS $$
DECLARE
    v_row user_freezes%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT FROM accounts a WHERE a.external_id = p_user_id) THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'WL002';
    END IF;
    INSERT INTO user_freezes (user_id, frozen, reason, actor)
    VALUES (p_user_id, p_frozen, p_reason, session_user)
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

CREATE FUNCTION walletctl_freeze_user(p_user_id text, p_reason text)
RETURNS user_freezes LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM walletctl_set_frozen(p_user_id, true, p_reason)
$$;

CREATE FUNCTION walletctl_unfreeze_user(p_user_id text, p_reason text)
RETURNS user_freezes LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM walletctl_set_frozen(p_user_id, false, p_reason)
$$;

-- Four-eyes approval.

-- File a top-up or bonus above its asset's threshold as a request (walletctl_post refuses
-- it with WL017). Idempotent like a posting: the same key with the same request returns
-- that request (replayed); with a different one it is a conflict. On a partition of a
-- cluster, a request whose approval would create a user of another partition is refused
-- when filed (WL024), as its approval would be.
CREATE FUNCTION walletctl_request_credit(
    p_kind text, p_user_id text, p_asset text, p_amount bigint, p_idempotency_key text,
    p_reason text, p_on_behalf_of text DEFAULT NULL
) RETURNS TABLE (request_id bigint, replayed boolean, approve_above bigint,
                 expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_prior credit_requests%ROWTYPE;
    v_transaction_id bigint;
    v_policy asset_policies%ROWTYPE;
    v_request credit_requests%ROWTYPE;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('topup', 'bonus') THEN
        RAISE EXCEPTION 'only top-ups and bonuses can be requested, not %', p_kind
            USING ERRCODE = 'WL021';
    END IF;
    SELECT * INTO v_prior FROM credit_requests r WHERE r.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_prior.kind = p_kind AND v_prior.user_id = p_user_id AND v_prior.asset = p_asset
           AND v_prior.amount = p_amount THEN
            RETURN QUERY SELECT v_prior.id, true, NULL::bigint, v_prior.expires_at;
            RETURN;
        END IF;
        RAISE EXCEPTION 'idempotency key % was already used by request % for a different request',
            p_idempotency_key, v_prior.id USING ERRCODE = 'WL005';
    END IF;
    SELECT t.id INTO v_transaction_id FROM transactions t WHERE t.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        RAISE EXCEPTION '%', walletctl_refusal('conflict', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, v_transaction_id, NULL)
            USING ERRCODE = 'WL005', DETAIL = v_transaction_id::text;
    END IF;
    IF NOT EXISTS (SELECT FROM asset_types s WHERE s.code = p_asset) THEN
        RAISE EXCEPTION 'asset % not found', p_asset USING ERRCODE = 'WL003';
    END IF;
    SELECT * INTO v_policy FROM asset_policies p WHERE p.asset = p_asset ORDER BY p.id DESC LIMIT 1;
    IF v_policy.approve_above IS NULL OR p_amount <= v_policy.approve_above THEN
        RAISE EXCEPTION '% % % needs no approval (threshold: %); post it instead',
            p_kind, p_amount, p_asset, coalesce(v_policy.approve_above::text, 'none')
            USING ERRCODE = 'WL021';
    END IF;
    IF walletctl_user_frozen(p_user_id) THEN
        RAISE EXCEPTION '%', walletctl_refusal('frozen', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, NULL, NULL)
            USING ERRCODE = 'WL015';
    END IF;
    IF NOT EXISTS (SELECT FROM accounts a WHERE a.external_id = p_user_id)
       AND EXISTS (SELECT FROM walletctl_partition() p
                   WHERE hashtext(p_user_id) & (p.partitions - 1) <> p.partition)
    THEN
        RAISE EXCEPTION '%', walletctl_refusal('wrong_partition', p_user_id, p_asset, p_amount,
                                               p_idempotency_key, NULL, NULL)
            USING ERRCODE = 'WL024',
                  DETAIL = (SELECT hashtext(p_user_id) & (p.partitions - 1)
                            FROM walletctl_partition() p)::text;
    END IF;
    INSERT INTO credit_requests AS r
        (kind, user_id, asset, amount, idempotency_key, reason, on_behalf_of, requested_by,
         created_at, expires_at)
    VALUES (p_kind, p_user_id, p_asset, p_amount, p_idempotency_key, p_reason, p_on_behalf_of,
            session_user, now(), now() + make_interval(hours => v_policy.request_hours))
    RETURNING * INTO v_request;
    RETURN QUERY SELECT v_request.id, false, v_policy.approve_above, v_request.expires_at;
END
$$;

-- Approve a request: a member of walletctl_approver other than the identity that made it.
-- Posts it with the request's idempotency key, charged to the requester's budgets; the
-- actor is the approver, "on behalf of" the requester's note (or the requester). Approving
-- an approved request returns its posting's receipt (replayed) and posts nothing more.
CREATE FUNCTION walletctl_approve_request(p_request_id bigint, p_reason text DEFAULT NULL)
RETURNS walletctl_receipt LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_request credit_requests%ROWTYPE;
    v_decision credit_request_decisions%ROWTYPE;
    v_receipt walletctl_receipt;
BEGIN
    -- Approvers racing on one request queue on its row; the later finds the decision.
    SELECT * INTO v_request FROM credit_requests r WHERE r.id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % not found', p_request_id USING ERRCODE = 'WL018';
    END IF;
    IF v_request.requested_by = session_user THEN
        RAISE EXCEPTION 'four eyes: request % was made by %, who may not approve it; another approver must',
            p_request_id, v_request.requested_by USING ERRCODE = 'WL019';
    END IF;
    SELECT * INTO v_decision FROM credit_request_decisions d WHERE d.request_id = p_request_id;
    IF FOUND THEN
        IF v_decision.decision = 'approved' THEN
            RETURN walletctl_replay_receipt(v_decision.transaction_id);
        END IF;
        IF v_decision.decision = 'expired' THEN
            RAISE EXCEPTION 'request % expired at %; file it again', p_request_id,
                v_request.expires_at USING ERRCODE = 'WL022';
        END IF;
        RAISE EXCEPTION 'request % was already % by %', p_request_id, v_decision.decision,
            v_decision.decided_by USING ERRCODE = 'WL020';
    END IF;
    -- The clock, not the start of this transaction: an approval opened before the expiry
    -- and sent after it is late.
    IF v_request.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'request % expired at %; file it again', p_request_id, v_request.expires_at
            USING ERRCODE = 'WL022';
    END IF;
    -- A frozen user is refused after the balance lock (walletctl_post_one, 'approval').
    v_receipt := public.walletctl_post_one(
        v_request.kind, v_request.user_id, v_request.asset, v_request.amount, v_request.amount,
        v_request.idempotency_key, v_request.reason,
        coalesce(v_request.on_behalf_of, v_request.requested_by), NULL, 'approval');
    IF NOT v_receipt.replayed THEN
        PERFORM public.walletctl_charge_issuance(v_request.requested_by, v_request.asset,
                                                 v_request.amount, v_receipt.created_at);
    END IF;
    INSERT INTO credit_request_decisions (request_id, decision, transaction_id, decided_by, reason)
    VALUES (p_request_id, 'approved', v_receipt.transaction_id, session_user, p_reason);
    RETURN v_receipt;
END
$$;

-- Record the expiry of every request past its time without a decision (an approver, or a
-- cron job holding walletctl_approver); returns the requests it expired. Until then a
-- request past its time is shown as expired and cannot be approved (WL022) all the same.
CREATE FUNCTION walletctl_expire_requests()
RETURNS SETOF credit_request_decisions LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    INSERT INTO credit_request_decisions AS d (request_id, decision, decided_by, reason)
    SELECT r.id, 'expired', session_user, 'not approved before ' || r.expires_at::text
    FROM credit_requests r
    WHERE r.expires_at <= clock_timestamp()
      AND NOT EXISTS (SELECT FROM credit_request_decisions x WHERE x.request_id = r.id)
    ORDER BY r.id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING d.*
$$;

-- Reject a request (any approver, the requester included: withdrawing is rejecting).
-- Rejecting a rejected request returns that decision.
CREATE FUNCTION walletctl_reject_request(p_request_id bigint, p_reason text)
RETURNS credit_request_decisions LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_decision credit_request_decisions%ROWTYPE;
BEGIN
    PERFORM FROM credit_requests r WHERE r.id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % not found', p_request_id USING ERRCODE = 'WL018';
    END IF;
    SELECT * INTO v_decision FROM credit_request_decisions d WHERE d.request_id = p_request_id;
    IF FOUND THEN
        IF v_decision.decision = 'rejected' THEN
            RETURN v_decision;
        END IF;
        RAISE EXCEPTION 'request % was already % by %', p_request_id, v_decision.decision,
            v_decision.decided_by USING ERRCODE = 'WL020';
    END IF;
    INSERT INTO credit_request_decisions (request_id, decision, decided_by, reason)
    VALUES (p_request_id, 'rejected', session_user, p_reason)
    RETURNING * INTO v_decision;
    RETURN v_decision;
END
$$;
