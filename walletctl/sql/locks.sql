-- Run locks: one seal at a time, one run per file (and kind) at a time.
--
-- A run holds its lock for its whole length by keeping a transaction open on a connection
-- of its own (walletctl/core/locks.py): the lock is a row of run_locks, named after the
-- run, that the functions below insert or lock in that transaction, and it ends with the
-- transaction (rolled back when the run ends, or by the server when the client dies). Not
-- an advisory lock: any role that can connect may take any advisory lock, and could so
-- keep every seal or a bulk file out for as long as it likes. No login role holds any
-- privilege on run_locks, and only walletctl_batch may execute the two functions that
-- take its rows.
--
-- walletctl's runs never commit their lock transaction (they roll it back when done), so
-- the table is normally empty and a run's lock is the row it inserted and has not
-- committed: another run's insert of the same name would wait for it to end, so it waits
-- at most 1 ms (lock_timeout) and is refused. A row someone did commit (a member of
-- walletctl_batch calling a function by hand) is locked FOR UPDATE SKIP LOCKED instead.
CREATE FUNCTION walletctl_take_run_lock(p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock_timeout text := current_setting('lock_timeout');
    v_inserted integer;
BEGIN
    PERFORM FROM public.run_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        RETURN true;
    END IF;
    BEGIN
        PERFORM set_config('lock_timeout', '1ms', true);
        INSERT INTO public.run_locks (name) VALUES (p_name) ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_inserted = ROW_COUNT;
        PERFORM set_config('lock_timeout', v_lock_timeout, true);
    EXCEPTION WHEN lock_not_available THEN
        RETURN false;  -- another run's row, inserted and not committed: its lock
    END;
    IF v_inserted = 1 THEN
        RETURN true;
    END IF;
    -- The row exists: locked by another run, or released since the first look.
    PERFORM FROM public.run_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
    RETURN FOUND;
END
$$;

-- The seal's lock (walletctl seal): true when this transaction now holds it.
CREATE FUNCTION walletctl_lock_seal() RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT public.walletctl_take_run_lock('seal')
$$;

-- The lock of one file of one kind, by the SHA-256 of its bytes (walletctl topup|bonus|spend
-- --file): true when this transaction now holds it.
CREATE FUNCTION walletctl_lock_file(p_kind text, p_digest bytea) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
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
