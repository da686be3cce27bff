-- Who owns and who may do what, in this database. Run by `walletctl db upgrade` (through
-- the migrations) and `walletctl db roles`; idempotent.
--
-- walletctl_owner owns everything and never logs in. No other role holds a write privilege
-- on any table, so none can write around the functions, switch a trigger off, drop a
-- constraint or replace a function. Writes happen only inside the SECURITY DEFINER
-- functions below, whose EXECUTE is granted per role.

-- Ownership: every table, sequence, view, function and type of walletctl's schema.
DO $owner$
DECLARE
    v_object record;
BEGIN
    FOR v_object IN
        SELECT format('ALTER TABLE %s OWNER TO walletctl_owner', c.oid::regclass) AS command
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND c.relowner <> 'walletctl_owner'::regrole
        UNION ALL
        SELECT format('ALTER SEQUENCE %s OWNER TO walletctl_owner', c.oid::regclass)
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
          AND c.relowner <> 'walletctl_owner'::regrole
          AND NOT EXISTS (SELECT FROM pg_depend d  -- identity sequences follow their table
                          WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO walletctl_owner', p.oid::regprocedure)
        FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'walletctl\_%'
          AND p.proowner <> 'walletctl_owner'::regrole
        UNION ALL
        SELECT format('ALTER TYPE %s OWNER TO walletctl_owner', t.oid::regtype)
        FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typname LIKE 'walletctl\_%'
          AND t.typtype = 'c' AND t.typrelid IN (SELECT c.oid FROM pg_class c WHERE c.relkind = 'c')
          AND t.typowner <> 'walletctl_owner'::regrole
    LOOP
        EXECUTE v_object.command;
    END LOOP;
END
$owner$;

-- The schema belongs to walletctl_owner too. Since PostgreSQL 15 `public` belongs to
-- pg_database_owner, so whoever owns the database (a login made by createdb, a managed
-- service's master user) could create objects in it: a function overloading an internal
-- one, or a table standing in for a temporary one, which the SECURITY DEFINER functions
-- would then find and run as walletctl_owner. No role but walletctl_owner may create here.
ALTER SCHEMA public OWNER TO walletctl_owner;

-- Nothing for anyone by default: PUBLIC may execute new functions and, before PostgreSQL
-- 15, create objects in public.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;

-- Any privilege on walletctl's tables and sequences held by a role other than the owner
-- (granted by hand, or left by an older walletctl) is taken back; reads are granted anew.
DO $revoke$
DECLARE
    v_grant record;
BEGIN
    FOR v_grant IN
        SELECT DISTINCT c.oid::regclass AS relation, acl.grantee::regrole AS grantee,
               c.relkind = 'S' AS is_sequence
        FROM pg_class c, aclexplode(c.relacl) acl
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND acl.grantee <> 0 AND acl.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM %s',
                       CASE WHEN v_grant.is_sequence THEN 'SEQUENCE' ELSE 'TABLE' END,
                       v_grant.relation, v_grant.grantee);
    END LOOP;
    FOR v_grant IN
        SELECT DISTINCT p.oid::regprocedure AS routine, acl.grantee::regrole AS grantee
        FROM pg_proc p, aclexplode(p.proacl) acl
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'walletctl\_%'
          AND acl.grantee <> 0 AND acl.grantee <> p.proowner
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %s', v_grant.routine, v_grant.grantee);
    END LOOP;
END
$revoke$;

GRANT USAGE ON SCHEMA public
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;

-- Reads. Every command checks the schema's revision first.
GRANT SELECT ON alembic_version
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;
GRANT SELECT ON accounts, asset_types, balances, transactions, ledger_entries,
                seal_checkpoints, seal_blocks, seal_asset_totals,
                asset_policies, issuance_budgets, issuance_usage, user_freezes,
                credit_requests, credit_request_decisions
    TO walletctl_operator, walletctl_batch, walletctl_finance, walletctl_approver,
       walletctl_admin;
GRANT EXECUTE ON FUNCTION walletctl_seal_digests(bigint, bigint),
                          walletctl_seal_blocks(bigint, bigint)
    TO walletctl_operator, walletctl_batch, walletctl_finance, walletctl_approver,
       walletctl_admin;
GRANT EXECUTE ON FUNCTION walletctl_balances(text)
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;

-- Writes, each through its function.
GRANT EXECUTE ON FUNCTION walletctl_post(text, text, text, bigint, text, text, text),
                          walletctl_reverse(bigint, text, text, text)
    TO walletctl_operator, walletctl_service;
GRANT EXECUTE ON FUNCTION walletctl_add_asset(text, text) TO walletctl_operator;
GRANT EXECUTE ON FUNCTION
    walletctl_post_batch(text, text, bigint[], text[], text[], bigint[], text[], text[], boolean)
    TO walletctl_batch, walletctl_service;
GRANT EXECUTE ON FUNCTION walletctl_seal_ticket(), walletctl_seal(bigint) TO walletctl_batch;

-- Run locks (locks.sql): the seal's and a bulk file's, for those who run them. No other
-- role may take them (an advisory lock, which any role may take, would let one keep every
-- seal or a file out).
GRANT EXECUTE ON FUNCTION walletctl_lock_seal(), walletctl_lock_file(text, bytea)
    TO walletctl_batch;

-- Operator controls (controls.sql): operators and services file requests, approvers decide them, admins
-- change policy.
GRANT EXECUTE ON FUNCTION
    walletctl_request_credit(text, text, text, bigint, text, text, text)
    TO walletctl_operator, walletctl_service;
GRANT EXECUTE ON FUNCTION walletctl_approve_request(bigint, text),
                          walletctl_reject_request(bigint, text),
                          walletctl_expire_requests()
    TO walletctl_approver;
GRANT EXECUTE ON FUNCTION walletctl_set_approval(text, bigint, integer),
                          walletctl_set_budget(text, text, bigint),
                          walletctl_freeze_user(text, text),
                          walletctl_unfreeze_user(text, text)
    TO walletctl_admin;
