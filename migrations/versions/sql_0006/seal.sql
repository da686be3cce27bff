-- walletctl_seal as revision 0006 defines it (frozen; walletctl/sql/seal.sql is the current
-- SQL). The digest functions it calls are 0002's, unchanged.

-- Seal everything up to p_horizon that the last checkpoint did not: compute the blocks and
-- the per-asset totals here, in the database, so that a caller can choose only how far to
-- seal, never what a checkpoint says. The checkpoint's hash is the same as
-- walletctl.core.checkpoints.checkpoint_hash computes when it verifies the chain.
--
-- Everything is read in one snapshot when the caller's transaction is REPEATABLE READ
-- (walletctl seal reconciles and seals in one such transaction); the snapshot is recorded
-- with the checkpoint, taken before anything is hashed, so that a row of a sealed
-- transaction written by a database transaction it did not see (an edit after the seal, or
-- a posting that committed late below the horizon) can be told apart by its xmin.
CREATE FUNCTION walletctl_seal(p_horizon bigint) RETURNS SETOF seal_checkpoints LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_previous seal_checkpoints%ROWTYPE;
    v_previous_horizon bigint;
    v_previous_hash bytea;
    v_transactions bigint;
    v_entries bigint;
    v_hash bytea;
    v_checkpoint seal_checkpoints%ROWTYPE;
    v_snapshot pg_snapshot := pg_current_snapshot();
BEGIN
    -- One sealer at a time; the chain's unique previous_id would refuse a second anyway.
    LOCK TABLE seal_checkpoints IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_previous FROM seal_checkpoints c ORDER BY c.id DESC LIMIT 1;
    v_previous_horizon := coalesce(v_previous.horizon, 0);
    v_previous_hash := coalesce(v_previous.hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    IF p_horizon IS NULL OR p_horizon <= v_previous_horizon
       OR p_horizon > (SELECT coalesce(max(t.id), 0) FROM transactions t) THEN
        RAISE EXCEPTION 'cannot seal up to transaction %: the last checkpoint is at %, the ledger ends at %',
            p_horizon, v_previous_horizon, (SELECT coalesce(max(t.id), 0) FROM transactions t)
            USING ERRCODE = '22023';
    END IF;

    CREATE TEMPORARY TABLE walletctl_new_blocks ON COMMIT DROP AS
    SELECT * FROM walletctl_seal_blocks(v_previous_horizon, p_horizon);
    CREATE TEMPORARY TABLE walletctl_new_totals ON COMMIT DROP AS
    SELECT coalesce(n.asset_id, p.asset_id) AS asset_id,
           coalesce(p.entries_total, 0) + coalesce(n.entries_total, 0) AS entries_total,
           coalesce(p.outstanding, 0) + coalesce(n.outstanding, 0) AS outstanding
    FROM (SELECT e.asset_id, sum(e.amount) AS entries_total,
                 sum(e.amount) FILTER (WHERE e.account_id <> 0) AS outstanding
          FROM ledger_entries e
          WHERE e.transaction_id > v_previous_horizon AND e.transaction_id <= p_horizon
          GROUP BY e.asset_id) n
    FULL JOIN (SELECT t.asset_id, t.entries_total, t.outstanding FROM seal_asset_totals t
               WHERE t.checkpoint_id = v_previous.id) p ON p.asset_id = n.asset_id;

    SELECT coalesce(sum(b.transactions), 0), coalesce(sum(b.entries), 0)
    INTO v_transactions, v_entries FROM walletctl_new_blocks b;
    v_hash := sha256(
        v_previous_hash
        || convert_to(format(E'%s:%s:%s:%s\n', v_previous_horizon, p_horizon, v_transactions,
                             v_entries), 'UTF8')
        || coalesce((SELECT string_agg(b.digest, ''::bytea ORDER BY b.block)
                     FROM walletctl_new_blocks b), ''::bytea)
        || convert_to(coalesce((SELECT string_agg(format(E'\n%s:%s:%s', t.asset_id,
                                                         t.entries_total, t.outstanding),
                                                  '' ORDER BY t.asset_id)
                                FROM walletctl_new_totals t), ''), 'UTF8'));

    -- The tripwire's references (walletctl/core/tripwire.py): the files behind the ledger
    -- tables, the statistics' counts of rows updated or deleted (append-only: they never
    -- change) and inserted (they never go down), when the statistics were last reset, the
    -- snapshot, and the last heap page of each table, read after the snapshot was taken so
    -- that every row the snapshot sees is stored on or before it.
    INSERT INTO seal_checkpoints
        (previous_id, previous_horizon, horizon, transactions, entries, previous_hash, hash,
         transactions_filenode, ledger_entries_filenode, ledger_changes, ledger_inserts,
         stats_reset, snapshot, transactions_last_page, ledger_entries_last_page)
    SELECT v_previous.id, v_previous_horizon, p_horizon, v_transactions, v_entries,
           v_previous_hash, v_hash, pg_relation_filenode('transactions'),
           pg_relation_filenode('ledger_entries'),
           coalesce(sum(s.n_tup_upd + s.n_tup_del), 0)::bigint,
           coalesce(sum(s.n_tup_ins), 0)::bigint,
           (SELECT d.stats_reset FROM pg_stat_database d WHERE d.datname = current_database()),
           v_snapshot::text,
           greatest(pg_relation_size('transactions')
                    / current_setting('block_size')::bigint - 1, 0),
           greatest(pg_relation_size('ledger_entries')
                    / current_setting('block_size')::bigint - 1, 0)
    FROM pg_stat_user_tables s
    WHERE s.schemaname = 'public' AND s.relname IN ('transactions', 'ledger_entries')
    RETURNING * INTO v_checkpoint;
    INSERT INTO seal_blocks SELECT v_checkpoint.id, b.* FROM walletctl_new_blocks b;
    INSERT INTO seal_asset_totals (checkpoint_id, asset_id, entries_total, outstanding)
    SELECT v_checkpoint.id, t.asset_id, t.entries_total, t.outstanding FROM walletctl_new_totals t;
    RETURN NEXT v_checkpoint;
END
$$;
