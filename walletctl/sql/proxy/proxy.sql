-- The proxy database of a sharded walletctl (README "Beyond one machine").
--
-- A proxy is not a ledger: it holds no tables of the ledger and no alembic_version. It
-- holds PL/Proxy functions with the names and signatures of the SQL API (posting.sql,
-- batch.sql), each run on the partition that holds its user, and the cluster's
-- configuration. `walletctl cluster create` runs this file as a superuser every time
-- (idempotent: CREATE OR REPLACE); a command pointed at a proxy checks that the proxy's
-- functions have the bodies of this file (walletctl/cluster/proxy_sql.py), as `db status`
-- does for a ledger's.
--
-- Routing:
--   a user's postings, balances and batches rows: RUN ON hashtext(user_id), so the
--     partition is hashtext(user_id) & (partitions - 1) (PL/Proxy's rule);
--   a transaction: its id. Partition p's transaction ids are p modulo the number of
--     partitions (cluster create sets each partition's identity to start at p and
--     increment by the number of partitions), so RUN ON the id's low bits finds it;
--   global reads: RUN ON ALL, one row per partition and asset, which walletctl adds up.
--
-- Who connects to the partitions: PL/Proxy appends user=CURRENT_USER to a connect string
-- without user= (doc/config.md), every function here is SECURITY INVOKER, and a call
-- after SET ROLE is refused (get_cluster_version), so the partitions see the role that
-- logged in to the proxy as session_user: it is the actor
-- recorded, and it has there the privileges its walletctl roles give it, no more. The
-- configuration uses PL/Proxy's configuration functions rather than SQL/MED, because a
-- role with USAGE on a SQL/MED server may create its own user mapping (user 'postgres')
-- and so connect to the partitions as someone else.
--
-- Every function here has its search_path pinned (pg_catalog first): a schema or a
-- search_path planted by whoever owns the proxy database cannot change what RUN ON
-- hashtext(...) or an operator in them resolves to. walletctl's own connections refuse a
-- session whose search_path reaches any other schema (walletctl.database).
--
-- PL/Proxy runs each call on a partition as a transaction of its own, committed there
-- when the call returns: a proxy transaction that rolls back does not undo it. So nothing
-- here spans partitions in one transaction; walletctl refuses --dry-run and --atomic
-- batches that span partitions through a proxy.

CREATE SCHEMA IF NOT EXISTS plproxy;

-- The partitions' connect strings, in partition order (no user=, no password=), and the
-- version PL/Proxy compares on every call to see that they changed. Written only by
-- `walletctl cluster create` and `walletctl cluster move` (as a superuser).
CREATE TABLE IF NOT EXISTS plproxy.walletctl_partitions (
    partition integer PRIMARY KEY CHECK (partition >= 0),
    connstr text NOT NULL CHECK (connstr !~* '(^|\s)(user|password)\s*=')
);
CREATE TABLE IF NOT EXISTS plproxy.walletctl_config_version (
    version integer NOT NULL,
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
INSERT INTO plproxy.walletctl_config_version (version) VALUES (1) ON CONFLICT DO NOTHING;

-- PL/Proxy asks for the version before every call, as the caller (SECURITY INVOKER: so
-- it sees the caller's current_user). It connects to the partitions as current_user, the
-- role a login has switched to with SET ROLE, and the partitions record that role as the
-- actor: a login that is a member of another login role would post as it. So a call
-- under another role than the login is refused here, before any partition is reached.
-- (PL/Proxy's default_user = session_user does not do it: it applies from a backend's
-- second call on.)
CREATE OR REPLACE FUNCTION plproxy.get_cluster_version(cluster_name text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_user <> session_user THEN
        RAISE EXCEPTION 'walletctl: the proxy is used as the role that logged in (%), not '
            'as % after SET ROLE: the partitions record the role that reaches them as the '
            'actor', session_user, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF cluster_name = 'walletctl' THEN
        RETURN (SELECT v.version FROM plproxy.walletctl_config_version v);
    END IF;
    RAISE EXCEPTION 'unknown cluster %', cluster_name;
END
$$;

CREATE OR REPLACE FUNCTION plproxy.get_cluster_partitions(cluster_name text) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cluster_name = 'walletctl' THEN
        RETURN QUERY SELECT p.connstr FROM plproxy.walletctl_partitions p ORDER BY p.partition;
        RETURN;
    END IF;
    RAISE EXCEPTION 'unknown cluster %', cluster_name;
END
$$;

-- A partition that stops answering must not hold a posting forever.
CREATE OR REPLACE FUNCTION plproxy.get_cluster_config(
    cluster_name text, OUT key text, OUT val text
) RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'connection_lifetime', '1800'
$$;

DO $types$
BEGIN
    IF to_regtype('public.walletctl_receipt') IS NULL THEN
        CREATE TYPE public.walletctl_receipt AS (
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
    END IF;
END
$types$;

-- How many partitions, and which one holds a user or a transaction (what PL/Proxy's RUN
-- ON below computes; walletctl's reads route with the same functions).
CREATE OR REPLACE FUNCTION walletctl_partitions() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)::integer FROM plproxy.walletctl_partitions
$$;

CREATE OR REPLACE FUNCTION walletctl_user_partition(p_user_id text) RETURNS integer
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT hashtext(p_user_id) & (walletctl_partitions() - 1)
$$;

-- The low 31 bits of the id: PL/Proxy keeps hash & (partitions - 1) of it, the id modulo
-- the number of partitions.
CREATE OR REPLACE FUNCTION walletctl_transaction_hash(p_transaction_id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (p_transaction_id & 2147483647)::integer
$$;

CREATE OR REPLACE FUNCTION walletctl_post(
    p_kind text, p_user_id text, p_asset text, p_amount bigint,
    p_idempotency_key text, p_reason text, p_on_behalf_of text DEFAULT NULL
) RETURNS walletctl_receipt LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    RUN ON hashtext(p_user_id);
$$;

CREATE OR REPLACE FUNCTION walletctl_reverse(
    p_transaction_id bigint, p_idempotency_key text, p_reason text,
    p_on_behalf_of text DEFAULT NULL
) RETURNS walletctl_receipt LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    RUN ON walletctl_transaction_hash(p_transaction_id);
$$;

CREATE OR REPLACE FUNCTION walletctl_balances(p_user_id text)
RETURNS TABLE (asset text, balance bigint, updated_at timestamptz) LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    RUN ON hashtext(p_user_id);
$$;

-- Each partition's rows of the batch, split by user, on that partition's
-- walletctl_post_batch. Internal: walletctl_post_batch below checks the batch first.
CREATE OR REPLACE FUNCTION walletctl_post_batch_split(
    p_kind text, p_on_behalf_of text, p_lines bigint[], p_users text[], p_assets text[],
    p_amounts bigint[], p_keys text[], p_reasons text[], p_atomic boolean
) RETURNS TABLE (
    line bigint, outcome text, transaction_id bigint, balance_after bigint, detail text
) LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    SPLIT p_lines, p_users, p_assets, p_amounts, p_keys, p_reasons;
    RUN ON hashtext(p_users);
    TARGET walletctl_post_batch;
$$;

-- The batch of the SQL API. Each partition checks its own rows; what only the whole batch
-- shows is checked here: line numbers distinct across partitions (WL014), and an atomic
-- batch on one partition (PL/Proxy commits each partition's part on its own, so a batch
-- over two cannot be all or nothing: refused, nothing posted).
CREATE OR REPLACE FUNCTION walletctl_post_batch(
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
) LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    IF (SELECT count(DISTINCT l) <> count(*) OR bool_or(l IS NULL) FROM unnest(p_lines) AS l) THEN
        RAISE EXCEPTION 'the line numbers of a batch must be present and distinct'
            USING ERRCODE = 'WL014';
    END IF;
    IF p_atomic AND (SELECT count(DISTINCT walletctl_user_partition(u)) > 1
                     FROM unnest(p_users) AS u) THEN
        RAISE EXCEPTION 'an atomic batch must stay on one partition: its users live on several, and each partition commits its part on its own'
            USING ERRCODE = '0A000';
    END IF;
    RETURN QUERY
    SELECT * FROM walletctl_post_batch_split(p_kind, p_on_behalf_of, p_lines, p_users, p_assets,
                                             p_amounts, p_keys, p_reasons, p_atomic);
END
$$;

-- A new asset type on every partition (each partition that already has it returns no
-- row). Asset types are never changed or deleted.
CREATE OR REPLACE FUNCTION walletctl_add_asset(p_code text, p_name text)
RETURNS TABLE (code text, name text, created_at timestamptz) LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    RUN ON ALL;
$$;

-- Per partition and asset: what users hold, how many hold some, the partition's Treasury
-- balance. The cluster's Treasury is the sum over partitions (walletctl adds them up).
CREATE OR REPLACE FUNCTION walletctl_outstanding()
RETURNS TABLE (asset text, outstanding bigint, holders bigint, treasury_balance bigint)
LANGUAGE plproxy SET search_path = pg_catalog, public, pg_temp AS $$
    CLUSTER 'walletctl';
    RUN ON ALL;
    SELECT s.code::text AS asset, coalesce(sum(b.balance), 0)::bigint AS outstanding,
           count(b.account_id) FILTER (WHERE b.balance > 0) AS holders,
           -coalesce(sum(b.balance), 0)::bigint AS treasury_balance
    FROM public.asset_types s  -- run on the partitions, by the session PL/Proxy opens
    LEFT JOIN public.balances b ON b.asset_id = s.id
    GROUP BY s.code;
$$;

-- A bulk file run through the proxy holds its file's run lock here (one run per file and
-- kind at a time across the cluster), as a run does on a ledger (walletctl/sql/locks.sql:
-- the same functions, on this table): a row inserted, and never committed, by the
-- transaction the run keeps open. Not an advisory lock, which any role could take. No
-- role but its owner holds any privilege on the table; only walletctl_batch may take a
-- file's lock.
CREATE TABLE IF NOT EXISTS plproxy.walletctl_run_locks (name text PRIMARY KEY);

CREATE OR REPLACE FUNCTION walletctl_take_run_lock(p_name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lock_timeout text := current_setting('lock_timeout');
    v_inserted integer;
BEGIN
    PERFORM FROM plproxy.walletctl_run_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        RETURN true;
    END IF;
    BEGIN
        PERFORM set_config('lock_timeout', '1ms', true);
        INSERT INTO plproxy.walletctl_run_locks (name) VALUES (p_name) ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_inserted = ROW_COUNT;
        PERFORM set_config('lock_timeout', v_lock_timeout, true);
    EXCEPTION WHEN lock_not_available THEN
        RETURN false;  -- another run's row, inserted and not committed: its lock
    END;
    IF v_inserted = 1 THEN
        RETURN true;
    END IF;
    PERFORM FROM plproxy.walletctl_run_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION walletctl_lock_file(p_kind text, p_digest bytea) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('topup', 'bonus', 'spend') THEN
        RAISE EXCEPTION 'unknown kind of file: %', p_kind USING ERRCODE = '22023';
    END IF;
    IF p_digest IS NULL OR octet_length(p_digest) <> 32 THEN
        RAISE EXCEPTION 'a file is locked by the SHA-256 of its bytes (32 bytes)'
            USING ERRCODE = '22023';
    END IF;
    RETURN public.walletctl_take_run_lock('file:' || p_kind || ':' || encode(p_digest, 'hex'));
END
$$;

-- Who may call what: as on a partition (privileges.sql), and nothing else. The schema
-- public belongs to walletctl_owner, as on a ledger: on PostgreSQL 15 it belongs to
-- pg_database_owner, so a login owning the proxy database could create a function there
-- (an overload of walletctl_post taking an integer amount, which a call with a literal
-- would resolve to) and have it run as every caller.
ALTER SCHEMA public OWNER TO walletctl_owner;
REVOKE ALL ON SCHEMA plproxy FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA plproxy FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA plproxy FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA plproxy, public
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;
GRANT SELECT ON plproxy.walletctl_config_version
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;
GRANT EXECUTE ON FUNCTION plproxy.get_cluster_version(text),
                          plproxy.get_cluster_partitions(text),
                          plproxy.get_cluster_config(text),
                          walletctl_partitions(),
                          walletctl_user_partition(text),
                          walletctl_transaction_hash(bigint),
                          walletctl_balances(text)
    TO walletctl_operator, walletctl_batch, walletctl_service, walletctl_finance,
       walletctl_approver, walletctl_admin;
GRANT EXECUTE ON FUNCTION walletctl_outstanding()
    TO walletctl_operator, walletctl_batch, walletctl_finance, walletctl_approver,
       walletctl_admin;
GRANT EXECUTE ON FUNCTION walletctl_post(text, text, text, bigint, text, text, text),
                          walletctl_reverse(bigint, text, text, text)
    TO walletctl_operator, walletctl_service;
GRANT EXECUTE ON FUNCTION walletctl_add_asset(text, text) TO walletctl_operator;
GRANT EXECUTE ON FUNCTION
    walletctl_post_batch(text, text, bigint[], text[], text[], bigint[], text[], text[], boolean),
    walletctl_post_batch_split(text, text, bigint[], text[], text[], bigint[], text[], text[],
                               boolean)
    TO walletctl_batch, walletctl_service;
GRANT EXECUTE ON FUNCTION walletctl_lock_file(text, bytea) TO walletctl_batch;
