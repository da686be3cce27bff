-- The rules of the ledger, enforced by the database for every role that writes, a superuser
-- included (unless a superuser switches triggers off: then the default reconcile finds it).
--
-- Errors carry SQLSTATEs of their own (class WL); walletctl/core/sqlerrors.py turns them
-- into typed errors:
--   WL001 insufficient funds        WL007 a reversal cannot be reversed
--   WL002 user not found            WL008 key claimed by a concurrent posting: ask again
--   WL003 asset not found           WL009 invalid amount
--   WL004 transaction not found     WL010 append-only
--   WL005 idempotency key reused    WL011 entries do not balance or do not match
--   WL006 already reversed          WL012 a transaction is not shaped as its kind requires
--   WL013 a cached balance differs from its ledger   WL014 duplicated line in a batch
--   WL024 a user created on a partition of a cluster that is not the user's

-- The checks below run as walletctl_owner (SECURITY DEFINER): a deferred check fires at
-- commit, outside the function that wrote, as a role that may not read the tables itself.

-- Invariant 2: the ledger is append-only; corrections are reversals. Accounts, assets and
-- balance rows are never deleted either, so nothing in the ledger can lose what it refers to.
CREATE FUNCTION walletctl_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: walletctl''s ledger is append-only (post a reversal instead)',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'WL010';
END
$$;

-- Invariants 1, 5 and 6 for entries. The posting functions write a transaction's entries
-- in one statement, so it is enough to check, per statement, what the statement adds:
-- - the entries of each transaction sum to zero, belong to an existing transaction, carry
--   its asset, amount and time, and are booked to its user or to the Treasury;
-- - the user's entry has the sign the kind requires (topup and bonus credit the user, a
--   spend debits, a reversal mirrors the user's entry of what it reverses);
-- - each user entry's balance_after is the previous balance_after of that account and
--   asset (in (created_at, id) order) plus its amount, and new entries come after every
--   existing one: the chain of running balances has no gap and nothing is back-dated.
-- One check per statement (not per row) keeps bulk posting set-based; the chain costs one
-- index probe per new user entry (and one per account and asset for "nothing after").
CREATE FUNCTION walletctl_check_new_entries() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_transaction_id bigint;
    v_entry_id bigint;
    v_user_entries bigint;
BEGIN
    SELECT n.transaction_id INTO v_transaction_id
    FROM new_entries n
    LEFT JOIN transactions t ON t.id = n.transaction_id
    LEFT JOIN ledger_entries target ON target.transaction_id = t.reverses
                                   AND target.account_id = t.account_id
    GROUP BY n.transaction_id, t.id
    HAVING sum(n.amount) <> 0
        OR t.id IS NULL
        OR bool_or(n.asset_id <> t.asset_id
                   OR abs(n.amount) <> t.amount
                   OR n.created_at <> t.created_at
                   OR n.account_id NOT IN (t.account_id, 0)
                   OR (n.account_id = t.account_id
                       AND n.amount IS DISTINCT FROM CASE t.kind
                           WHEN 'spend' THEN -t.amount
                           WHEN 'reversal' THEN -target.amount
                           ELSE t.amount END))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the entries of transaction % do not sum to zero or do not match it',
            v_transaction_id
            USING ERRCODE = 'WL011';
    END IF;

    -- The chain. One user entry (a single posting, the usual statement): the two newest
    -- entries of its account and asset must be this one and the one it continues, which
    -- is one short index scan. More (a batch): each new entry against the entry before it,
    -- and nothing existing after the last new one.
    SELECT count(*) FILTER (WHERE n.account_id <> 0) INTO v_user_entries FROM new_entries n;
    IF v_user_entries = 1 THEN
        SELECT n.id INTO v_entry_id
        FROM new_entries n
        CROSS JOIN LATERAL (
            SELECT array_agg(l.id ORDER BY l.created_at DESC, l.id DESC) AS ids,
                   array_agg(l.balance_after ORDER BY l.created_at DESC, l.id DESC) AS balances
            FROM (SELECT e.id, e.created_at, e.balance_after FROM ledger_entries e
                  WHERE e.account_id = n.account_id AND e.asset_id = n.asset_id
                  ORDER BY e.created_at DESC, e.id DESC
                  LIMIT 2) l
        ) newest
        WHERE n.account_id <> 0
          AND (newest.ids[1] <> n.id
               OR coalesce(newest.balances[2], 0) + n.amount IS DISTINCT FROM n.balance_after);
    ELSE
        WITH chain AS (
            SELECT n.id, n.account_id, n.asset_id, n.amount, n.balance_after, n.created_at,
                   lag(n.id) OVER w AS previous_new_id,
                   row_number() OVER w = count(*) OVER (PARTITION BY n.account_id, n.asset_id)
                       AS last_new
            FROM new_entries n
            WHERE n.account_id <> 0
            WINDOW w AS (PARTITION BY n.account_id, n.asset_id ORDER BY n.created_at, n.id)
        )
        SELECT c.id INTO v_entry_id
        FROM chain c
        LEFT JOIN LATERAL (
            SELECT p.id, p.balance_after FROM ledger_entries p
            WHERE p.account_id = c.account_id AND p.asset_id = c.asset_id
              AND (p.created_at, p.id) < (c.created_at, c.id)
            ORDER BY p.created_at DESC, p.id DESC
            LIMIT 1
        ) previous ON true
        WHERE coalesce(previous.balance_after, 0) + c.amount IS DISTINCT FROM c.balance_after
           OR (c.previous_new_id IS NOT NULL AND previous.id IS DISTINCT FROM c.previous_new_id)
           OR (c.last_new AND EXISTS (
                   SELECT FROM ledger_entries x
                   WHERE x.account_id = c.account_id AND x.asset_id = c.asset_id
                     AND (x.created_at, x.id) > (c.created_at, c.id)))
        LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entry % does not continue the running balance of its account (balance_after must be the previous balance_after plus the amount, and nothing may be back-dated)',
            v_entry_id
            USING ERRCODE = 'WL011';
    END IF;
    RETURN NULL;
END
$$;

-- Invariant 5 for transactions, checked at commit (a deferred constraint trigger, so a
-- transaction and its entries may be written by separate statements of one database
-- transaction): every new transaction has both its entries, one for its user and one for
-- the Treasury; a reversal names a transaction of the same user, asset and amount that is
-- not itself a reversal; and the recorded actor is the database identity that was logged
-- in, not a name the caller chose.
CREATE FUNCTION walletctl_check_new_transaction() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- Both entries: (transaction_id, account_id) is unique and the entries' trigger allows
    -- only the user and the Treasury, so two entries are exactly those two.
    IF NEW.actor <> session_user
       OR (SELECT count(*) FROM ledger_entries e WHERE e.transaction_id = NEW.id) <> 2
       OR (NEW.reverses IS NOT NULL AND NOT EXISTS (
               SELECT FROM transactions target
               WHERE target.id = NEW.reverses AND target.kind <> 'reversal'
                 AND target.account_id = NEW.account_id AND target.asset_id = NEW.asset_id
                 AND target.amount = NEW.amount))
    THEN
        RAISE EXCEPTION 'transaction % is not shaped as its kind requires (both entries, the logged-in actor, a reversal mirroring its target)',
            NEW.id
            USING ERRCODE = 'WL012';
    END IF;
    RETURN NULL;
END
$$;

-- Invariant 6 for the cache: at commit, every balances row that changed equals the
-- balance_after of its account and asset's last entry (0 with none). So balances move only
-- together with the entry that explains them, whoever writes. Deferred, because a posting
-- moves the balance (taking the row lock) before it writes the entries.
CREATE FUNCTION walletctl_check_balance() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_balance bigint;
    v_ledger bigint;
BEGIN
    SELECT b.balance,
           coalesce((SELECT e.balance_after FROM ledger_entries e
                     WHERE e.account_id = b.account_id AND e.asset_id = b.asset_id
                     ORDER BY e.created_at DESC, e.id DESC
                     LIMIT 1), 0)
    INTO v_balance, v_ledger
    FROM balances b
    WHERE b.account_id = NEW.account_id AND b.asset_id = NEW.asset_id;
    IF v_balance IS DISTINCT FROM v_ledger THEN
        RAISE EXCEPTION 'the cached balance of account % asset % would be %, its ledger says %',
            NEW.account_id, NEW.asset_id, v_balance, coalesce(v_ledger, 0)
            USING ERRCODE = 'WL013';
    END IF;
    RETURN NULL;
END
$$;

-- Placement, on a partition of a cluster (README "Beyond one machine"): partition p of N
-- numbers its transactions p, p + N, p + 2N, ... (its identity column starts at p, or N for
-- p = 0, and increments by N: walletctl/cluster/admin.py number_partition), so the
-- database knows which partition it is, and a user belongs to partition
-- hashtext(user) & (N - 1), where the proxy routes it (PL/Proxy's RUN ON hashtext). One
-- row, (N, p), read from the catalog; none on a database that is no partition (its ids
-- increment by 1). A one-row set-returning SQL function with a single SELECT, so that it is
-- inlined into the query that calls it.
CREATE FUNCTION walletctl_partition() RETURNS TABLE (partitions bigint, partition bigint)
LANGUAGE sql STABLE AS $$
    SELECT s.seqincrement, s.seqstart % s.seqincrement
    FROM pg_catalog.pg_sequence s
    WHERE s.seqrelid = pg_catalog.pg_get_serial_sequence('public.transactions', 'id')::regclass
      AND s.seqincrement > 1
$$;

-- A user is created only on its own partition, whoever inserts it: a login role connected
-- directly to a partition could otherwise credit a user the proxy routes elsewhere, and
-- that user's credits would be split over two partitions, each balance showing part. The
-- posting functions create users by INSERT ... ON CONFLICT DO NOTHING, which fires this for
-- existing users too: it costs one catalog row and a hash, and a user on its own partition
-- always passes (as does the Treasury, which has no external id). Batches refuse such a
-- row alone before they create users (batch.sql); this is the rule under them.
CREATE FUNCTION walletctl_check_placement() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_partitions bigint;
    v_partition bigint;
BEGIN
    SELECT p.partitions, p.partition INTO v_partitions, v_partition FROM walletctl_partition() p;
    IF FOUND AND hashtext(NEW.external_id) & (v_partitions - 1) <> v_partition THEN
        RAISE EXCEPTION '%', walletctl_refusal('wrong_partition', NEW.external_id, NULL, NULL,
                                               NULL, NULL, NULL)
            USING ERRCODE = 'WL024',
                  DETAIL = (hashtext(NEW.external_id) & (v_partitions - 1))::text;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER asset_types_append_only BEFORE UPDATE OR DELETE ON asset_types
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER asset_types_no_truncate BEFORE TRUNCATE ON asset_types
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER balances_no_delete BEFORE DELETE ON balances
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON balances
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_checkpoints_append_only BEFORE UPDATE OR DELETE ON seal_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_checkpoints_no_truncate BEFORE TRUNCATE ON seal_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_blocks_append_only BEFORE UPDATE OR DELETE ON seal_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_blocks_no_truncate BEFORE TRUNCATE ON seal_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_asset_totals_append_only BEFORE UPDATE OR DELETE ON seal_asset_totals
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();
CREATE TRIGGER seal_asset_totals_no_truncate BEFORE TRUNCATE ON seal_asset_totals
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_refuse_change();

CREATE TRIGGER accounts_placement BEFORE INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION walletctl_check_placement();
CREATE TRIGGER ledger_entries_check_new AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletctl_check_new_entries();
CREATE CONSTRAINT TRIGGER transactions_check_new AFTER INSERT ON transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION walletctl_check_new_transaction();
CREATE CONSTRAINT TRIGGER balances_match_ledger AFTER INSERT OR UPDATE ON balances
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION walletctl_check_balance();
