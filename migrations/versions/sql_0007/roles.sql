-- walletctl's group roles: cluster-wide, created once per server (walletctl db roles).
--
-- None of them can log in. People, services and cron jobs log in as roles of their own and
-- are made members of one of these (walletctl db grant LOGIN_ROLE --as KIND):
--   walletctl_owner     owns every table, sequence, type and function; never logs in
--   walletctl_operator  single postings, reversals, assets, reads
--   walletctl_batch     bulk files, seal, reads
--   walletctl_service   an application: postings and balance reads through the SQL API
--   walletctl_finance   reads only: balances, audit, summary, export, reconcile
--   walletctl_approver  approves or rejects requests for large credits (four eyes), reads
--   walletctl_admin     changes policy: approval thresholds, budgets, frozen users; reads
-- What each may do is granted per database in privileges.sql.
DO $roles$
DECLARE
    v_role text;
    v_existing pg_roles%ROWTYPE;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[
        'walletctl_owner', 'walletctl_operator', 'walletctl_batch', 'walletctl_service',
        'walletctl_finance', 'walletctl_approver', 'walletctl_admin'
    ] LOOP
        SELECT * INTO v_existing FROM pg_roles r WHERE r.rolname = v_role;
        IF NOT FOUND THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        ELSIF v_existing.rolsuper OR v_existing.rolbypassrls THEN
            -- A group role with powers beyond its grants would make every member a
            -- superuser of the ledger; only a superuser can take them back.
            RAISE EXCEPTION 'role % is a superuser or bypasses row security; a superuser must run ALTER ROLE % NOSUPERUSER NOBYPASSRLS',
                v_role, v_role USING ERRCODE = '42501';
        ELSIF v_existing.rolcanlogin THEN
            EXECUTE format('ALTER ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END
$roles$;
