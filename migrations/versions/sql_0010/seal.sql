-- Sealed history: checkpoints hashing every transaction and entry up to a horizon.
--
-- The digests are defined once, here, next to the data they cover: sealing and verifying
-- both call walletctl_seal_blocks, so the two cannot disagree on the encoding.
--
-- A transaction's digest is the SHA-256 of one text: its columns and its entries' columns
-- as a PostgreSQL row literal (which quotes and escapes every field, so no two different
-- rows can print the same), times as microseconds since the epoch (independent of the
-- session's time zone and date style). A block is the transactions whose ids fall in one
-- run of 1,000 ids; its digest is the SHA-256 of its transactions' digests in id order,
-- and fingerprints keeps the first 4 bytes of each of them, to name what changed.
CREATE FUNCTION walletctl_seal_digests(p_after bigint, p_through bigint)
RETURNS TABLE (transaction_id bigint, entries bigint, digest bytea)
LANGUAGE sql STABLE AS $$
    WITH entries AS (
        SELECT e.transaction_id,
               count(*) AS entry_count,
               array_agg(ROW(e.id, e.account_id, e.asset_id, e.amount, e.balance_after,
                             (extract(epoch FROM e.created_at) * 1000000)::bigint)
                         ORDER BY e.id)::text AS entries
        FROM ledger_entries e
        WHERE e.transaction_id > p_after AND e.transaction_id <= p_through
        GROUP BY e.transaction_id
    )
    SELECT t.id,
           coalesce(e.entry_count, 0),
           sha256(convert_to(ROW(t.id, t.kind, t.account_id, t.asset_id, t.amount,
                                 t.idempotency_key, t.reason, t.actor, t.reverses,
                                 (extract(epoch FROM t.created_at) * 1000000)::bigint,
                                 e.entries)::text, 'UTF8'))
    FROM transactions t
    LEFT JOIN entries e ON e.transaction_id = t.id
    WHERE t.id > p_after AND t.id <= p_through
$$;

CREATE FUNCTION walletctl_seal_blocks(p_after bigint, p_through bigint)
RETURNS TABLE (
    block bigint, first_transaction_id bigint, last_transaction_id bigint,
    transactions integer, entries integer, digest bytea, fingerprints bytea
) LANGUAGE sql STABLE AS $$
    SELECT (d.transaction_id - 1) / 1000, min(d.transaction_id), max(d.transaction_id),
           count(*)::integer, sum(d.entries)::integer,
           sha256(string_agg(d.digest, ''::bytea ORDER BY d.transaction_id)),
           string_agg(substring(d.digest FROM 1 FOR 4), ''::bytea ORDER BY d.transaction_id)
    FROM walletctl_seal_digests(p_after, p_through) d
    GROUP BY 1
    ORDER BY 1
$$;

-- A seal's ticket: the horizon a seal may go up to (the highest committed transaction id)
-- and the ledger's writers in flight when it was read, recorded where no login role can
-- write. A posting still in flight may hold a lower id than one already committed: every id
-- is drawn by the INSERT into transactions, under a ROW EXCLUSIVE lock on that table kept
-- to the end of the transaction, so every posting that may still commit at or below the
-- horizon holds that lock when the writers are read (in a statement after the horizon's:
-- one that takes the lock later draws a higher id). walletctl_seal seals a ticket only once
-- each of those writers had ended before its snapshot, so no caller, whatever horizon it
-- would like, can seal below a posting that then commits. Any role may hold a transaction
-- id (pg_current_xact_id()); no login role can hold that lock by itself, so only postings
-- are waited for. pg_stat_activity shows 32-bit xids: widened to xid8 around the current
-- xmax.
CREATE FUNCTION walletctl_seal_ticket(OUT ticket bigint, OUT horizon bigint, OUT writers text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_xmax numeric;
BEGIN
    -- At READ COMMITTED each statement below reads anew: the horizon, then the writers.
    -- In an older snapshot the horizon could miss a posting that has since committed and
    -- so is no writer any more.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'walletctl_seal_ticket runs at READ COMMITTED only (this transaction is %)',
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'WL023';
    END IF;
    SELECT coalesce(max(t.id), 0), pg_snapshot_xmax(pg_current_snapshot())::text::numeric
    INTO horizon, v_xmax FROM transactions t;
    -- The writers from pg_locks, which is read live (pg_stat_activity is copied once per
    -- transaction, so a caller that read it earlier would hide the writers since): each
    -- backend holding ROW EXCLUSIVE on transactions, by the transaction ids it holds.
    SELECT coalesce(array_agg(
               (v_xmax + mod(w.xid - mod(v_xmax, 4294967296) + 6442450944, 4294967296)
                - 2147483648)::text), '{}')
    INTO writers
    FROM (SELECT DISTINCT x.transactionid::text::numeric AS xid
          FROM pg_locks r
          JOIN pg_locks x ON x.pid = r.pid AND x.locktype = 'transactionid'
                         AND x.mode = 'ExclusiveLock' AND x.granted
          WHERE r.locktype = 'relation' AND r.relation = 'transactions'::regclass
            AND r.database = (SELECT d.oid FROM pg_database d
                              WHERE d.datname = current_database())
            AND r.mode = 'RowExclusiveLock' AND r.granted AND r.pid <> pg_backend_pid()
          UNION
          SELECT p.transaction::text::numeric FROM pg_prepared_xacts p
          WHERE p.database = current_database()) w;
    INSERT INTO seal_tickets (horizon, writers, requested_by)
    VALUES (horizon, writers, session_user)
    RETURNING id INTO ticket;
END
$$;

-- Seal everything up to the ticket's horizon that the last checkpoint did not: compute the
-- blocks and the per-asset totals here, in the database, so that a caller can choose only
-- when to seal, never how far nor what a checkpoint says. The checkpoint's hash is the same as
-- walletctl.core.checkpoints.checkpoint_hash computes when it verifies the chain.
--
-- Everything is read in one snapshot when the caller's transaction is REPEATABLE READ
-- (walletctl seal reconciles and seals in one such transaction); the snapshot is recorded
-- with the checkpoint, taken before anything is hashed, so that a row of a sealed
-- transaction written by a database transaction it did not see (an edit after the seal, or
-- a posting that committed late below the horizon) can be told apart by its xmin.
CREATE FUNCTION walletctl_seal(p_ticket bigint) RETURNS SETOF seal_checkpoints LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    v_ticket seal_tickets%ROWTYPE;
    v_horizon bigint;
    v_previous seal_checkpoints%ROWTYPE;
    v_previous_horizon bigint;
    v_previous_hash bytea;
    v_transactions bigint;
    v_entries bigint;
    v_hash bytea;
    v_checkpoint seal_checkpoints%ROWTYPE;
    v_snapshot pg_snapshot := pg_current_snapshot();
BEGIN
    SELECT * INTO v_ticket FROM seal_tickets k WHERE k.id = p_ticket;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no seal ticket %: take one with walletctl_seal_ticket()', p_ticket
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(v_ticket.writers) AS w(xid)
               WHERE NOT pg_visible_in_snapshot(w.xid::xid8, v_snapshot)) THEN
        RAISE EXCEPTION 'cannot seal ticket % yet: a posting in flight when it was taken had not ended when this transaction''s snapshot was taken (walletctl seal waits for them)',
            p_ticket USING ERRCODE = '55000';
    END IF;
    v_horizon := v_ticket.horizon;
    -- One sealer at a time; the chain's unique previous_id would refuse a second anyway.
    LOCK TABLE seal_checkpoints IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_previous FROM seal_checkpoints c ORDER BY c.id DESC LIMIT 1;
    v_previous_horizon := coalesce(v_previous.horizon, 0);
    v_previous_hash := coalesce(v_previous.hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    IF v_horizon IS NULL OR v_horizon <= v_previous_horizon
       OR v_horizon > (SELECT coalesce(max(t.id), 0) FROM transactions t) THEN
        RAISE EXCEPTION 'cannot seal up to transaction %: the last checkpoint is at %, the ledger ends at %',
            v_horizon, v_previous_horizon, (SELECT coalesce(max(t.id), 0) FROM transactions t)
            USING ERRCODE = '22023';
    END IF;

    CREATE TEMPORARY TABLE walletctl_new_blocks ON COMMIT DROP AS
    SELECT * FROM walletctl_seal_blocks(v_previous_horizon, v_horizon);
    CREATE TEMPORARY TABLE walletctl_new_totals ON COMMIT DROP AS
    SELECT coalesce(n.asset_id, p.asset_id) AS asset_id,
           coalesce(p.entries_total, 0) + coalesce(n.entries_total, 0) AS entries_total,
           coalesce(p.outstanding, 0) + coalesce(n.outstanding, 0) AS outstanding
    FROM (SELECT e.asset_id, sum(e.amount) AS entries_total,
                 sum(e.amount) FILTER (WHERE e.account_id <> 0) AS outstanding
          FROM ledger_entries e
          WHERE e.transaction_id > v_previous_horizon AND e.transaction_id <= v_horizon
          GROUP BY e.asset_id) n
    FULL JOIN (SELECT t.asset_id, t.entries_total, t.outstanding FROM seal_asset_totals t
               WHERE t.checkpoint_id = v_previous.id) p ON p.asset_id = n.asset_id;

    SELECT coalesce(sum(b.transactions), 0), coalesce(sum(b.entries), 0)
    INTO v_transactions, v_entries FROM walletctl_new_blocks b;
    v_hash := sha256(
        v_previous_hash
        || convert_to(format(E'%s:%s:%s:%s\n', v_previous_horizon, v_horizon, v_transactions,
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
    SELECT v_previous.id, v_previous_horizon, v_horizon, v_transactions, v_entries,
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
