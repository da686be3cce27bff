"""The tables of the ledger: the one description that alembic's migrations are generated from.

Only the migrations and the tests import this module; the runtime talks SQL through psycopg
(see walletctl/core), so that a command does not pay SQLAlchemy's import time.

What the database itself enforces beyond these tables (zero-sum per transaction, the
append-only rules, the writer functions, the privileges) is in plain SQL in walletctl/sql/,
next to the invariant it protects; migrations/ holds frozen deltas of both.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
)

from walletctl.textrules import TREASURY_LABEL, identifier_check, reason_check

TREASURY_ACCOUNT_ID = 0
"""The issuer's account: every credit a user receives is a debit here, and the reverse."""

POSTING_KINDS = ("topup", "bonus", "spend", "reversal")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

asset_types = Table(
    "asset_types",
    metadata,
    Column("id", SmallInteger, Identity(), primary_key=True),
    Column("code", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(r"code ~ '^[A-Z]([A-Z0-9_]{0,22}[A-Z0-9])?$'", name="code_format"),
    CheckConstraint(identifier_check("name"), name="name_format"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    # The id the rest of the company knows the user by; NULL only for the Treasury.
    Column("external_id", Text, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        f"(id = {TREASURY_ACCOUNT_ID}) = (external_id IS NULL)", name="treasury_is_account_zero"
    ),
    CheckConstraint(identifier_check("external_id"), name="external_id_format"),
    CheckConstraint(
        f"lower(external_id) <> lower('{TREASURY_LABEL}')", name="external_id_not_treasury"
    ),
)

# A cache of the ledger, written in the same database transaction as the entries, so that
# a balance read is one row and a spend is one conditional UPDATE. Users only: the Treasury
# has no row here, because a row would have to be locked by every posting in the system.
balances = Table(
    "balances",
    metadata,
    Column("account_id", BigInteger, ForeignKey("accounts.id"), primary_key=True),
    Column("asset_id", SmallInteger, ForeignKey("asset_types.id"), primary_key=True),
    Column("balance", BigInteger, nullable=False),
    # Non-decreasing per row even if the clock steps back; the entries take their time from
    # here, so a user's entries are in the same order by time as by id.
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("balance >= 0", name="balance_not_negative"),
    CheckConstraint(f"account_id <> {TREASURY_ACCOUNT_ID}", name="users_only"),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("kind", Text, nullable=False),
    # account_id and asset_id carry no foreign key: a key check takes a KEY SHARE lock on
    # the referenced row, and every posting would then lock the same asset row. The posting
    # function resolves both by lookup and accounts/asset_types refuse DELETE, so no
    # reference can dangle; reconcile checks it again.
    Column("account_id", BigInteger, nullable=False),
    Column("asset_id", SmallInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("reason", Text),
    # Who posted it: the database identity that was logged in (session_user), recorded by
    # the posting functions, never taken from the caller.
    Column("actor", Text, nullable=False),
    # Optional: the person or system the actor says it acted for (the CLI's --actor).
    Column("on_behalf_of", Text),
    Column("reverses", BigInteger, ForeignKey("transactions.id")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(f"kind IN {POSTING_KINDS!r}", name="kind_known"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(f"account_id <> {TREASURY_ACCOUNT_ID}", name="posts_to_a_user"),
    CheckConstraint("(kind = 'reversal') = (reverses IS NOT NULL)", name="reversal_names_target"),
    CheckConstraint(
        "kind NOT IN ('bonus', 'reversal') OR reason IS NOT NULL", name="reason_required"
    ),
    CheckConstraint(identifier_check("idempotency_key"), name="idempotency_key_format"),
    CheckConstraint(identifier_check("actor"), name="actor_format"),
    CheckConstraint(identifier_check("on_behalf_of"), name="on_behalf_of_format"),
    CheckConstraint(reason_check("reason"), name="reason_format"),
)
# A transaction is reversed at most once. Partial: most transactions reverse nothing, and an
# index entry per posting for a NULL would be work for nothing.
Index(
    "uq_transactions_reverses",
    transactions.c.reverses,
    unique=True,
    postgresql_where=transactions.c.reverses.isnot(None),
)

# Period summaries read transactions by time. Rows arrive in time order, so a BRIN index
# (a few pages, next to nothing per posting) finds a period without a B-tree's upkeep.
Index(
    "ix_transactions_created_at",
    transactions.c.created_at,
    postgresql_using="brin",
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    # No foreign keys here either (see transactions): the statement-level trigger
    # ledger_entries_check_new checks each new entry against its transaction instead.
    Column("transaction_id", BigInteger, nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("asset_id", SmallInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    # The user's balance right after this entry: a past balance is one index lookup.
    Column("balance_after", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("amount <> 0", name="amount_not_zero"),
    CheckConstraint(
        f"(account_id = {TREASURY_ACCOUNT_ID}) = (balance_after IS NULL)",
        name="balance_after_for_users",
    ),
    CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
    # At most one entry per account in a transaction (so: one for the user, one for the
    # Treasury). In transaction order and covering the amounts, it lets reconcile check
    # every transaction in one streaming pass over the index, without sorting.
    UniqueConstraint("transaction_id", "account_id", postgresql_include=["asset_id", "amount"]),
)

# Statements, point-in-time balances and per-account sums all read one account and asset in
# time order; created_at never decreases per (account, asset), so (created_at, id) is also
# the order in which the entries were posted. Covering amount and balance_after, it serves
# --as-of and reconcile's running-balance pass from the index alone.
Index(
    "ix_ledger_entries_account_asset_time",
    ledger_entries.c.account_id,
    ledger_entries.c.asset_id,
    ledger_entries.c.created_at,
    ledger_entries.c.id,
    postgresql_include=["amount", "balance_after"],
)

# Sealed history (walletctl seal). A checkpoint seals every transaction with an id up to its
# horizon; its hash covers the previous checkpoint's hash, so the checkpoints form a chain.
# All three tables are append-only, like the ledger.
seal_checkpoints = Table(
    "seal_checkpoints",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("previous_id", BigInteger, ForeignKey("seal_checkpoints.id"), unique=True),
    # Transactions with previous_horizon < id <= horizon are sealed by this checkpoint.
    Column("previous_horizon", BigInteger, nullable=False),
    Column("horizon", BigInteger, nullable=False),
    Column("transactions", BigInteger, nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("previous_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False, unique=True),
    # The files behind the ledger tables when sealed: a TRUNCATE or a table rewrite
    # changes them, which reconcile notices without reading the history.
    Column("transactions_filenode", BigInteger, nullable=False),
    Column("ledger_entries_filenode", BigInteger, nullable=False),
    # Rows updated or deleted in transactions and ledger_entries, as PostgreSQL's
    # statistics counted them when sealed: append-only tables never change it, so a
    # different number sends reconcile to re-hash the history.
    Column("ledger_changes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The tripwire's other references (since migration 0006; NULL in older checkpoints):
    # rows inserted into the ledger tables as the statistics counted them, which never go
    # down unless the statistics are lost; when this database's statistics were last reset
    # (any reset, of one table or all, moves it);
    Column("ledger_inserts", BigInteger),
    Column("stats_reset", DateTime(timezone=True)),
    # the snapshot the checkpoint was computed in, and the last heap page of each ledger
    # table then: a row of a sealed transaction stored on or after that page by a database
    # transaction the snapshot did not see was written after the seal (edited, or late).
    Column("snapshot", Text),
    Column("transactions_last_page", BigInteger),
    Column("ledger_entries_last_page", BigInteger),
    CheckConstraint("horizon > previous_horizon", name="horizon_advances"),
)

# A seal's ticket (walletctl_seal_ticket, walletctl/sql/seal.sql): the horizon a seal may go
# up to and the ledger's writers in flight when it was read (xid8s as text); walletctl_seal
# seals a ticket only once all of them ended before its snapshot. No login role may read or
# write it.
seal_tickets = Table(
    "seal_tickets",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("horizon", BigInteger, nullable=False),
    Column("writers", ARRAY(Text), nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# A block: the sealed transactions whose ids fall in one run of 1,000 ids. digest is the
# SHA-256 of their SHA-256 digests in id order; fingerprints keeps the first 4 bytes of
# each, so that a changed block can name the transaction that changed.
seal_blocks = Table(
    "seal_blocks",
    metadata,
    Column("checkpoint_id", BigInteger, ForeignKey("seal_checkpoints.id"), primary_key=True),
    Column("block", BigInteger, primary_key=True),
    Column("first_transaction_id", BigInteger, nullable=False),
    Column("last_transaction_id", BigInteger, nullable=False),
    Column("transactions", Integer, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("fingerprints", LargeBinary, nullable=False),
)

# Per asset at the horizon: the sum of all sealed entries (zero) and of the users' entries
# (the outstanding liability), so that reconcile can check totals from the horizon on.
seal_asset_totals = Table(
    "seal_asset_totals",
    metadata,
    Column("checkpoint_id", BigInteger, ForeignKey("seal_checkpoints.id"), primary_key=True),
    Column("asset_id", SmallInteger, ForeignKey("asset_types.id"), primary_key=True),
    Column("entries_total", Numeric, nullable=False),
    Column("outstanding", Numeric, nullable=False),
)


# Operator controls (walletctl/sql/controls.sql). The policy tables are append-only: the
# policy in force is each key's newest row, and every change is a row naming who made it
# (session_user). Assets are named by code (codes never change), so that a posting finds
# the policy of its asset with one index probe.

# Four-eyes approval: top-ups and bonuses above approve_above (NULL: none) become requests
# that a second identity must approve within request_hours.
asset_policies = Table(
    "asset_policies",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("asset", Text, ForeignKey("asset_types.code"), nullable=False),
    Column("approve_above", BigInteger),
    Column("request_hours", Integer, nullable=False),
    Column("set_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("approve_above >= 0", name="approve_above_not_negative"),
    CheckConstraint("request_hours BETWEEN 1 AND 8760", name="request_hours_range"),
    CheckConstraint(identifier_check("set_by"), name="set_by_format"),
)
Index("ix_asset_policies_asset_id", asset_policies.c.asset, asset_policies.c.id)

# Issuance budgets: what a role (a login role, or a group role whose members share it) may
# credit per asset and UTC day; daily_limit NULL removes the budget.
issuance_budgets = Table(
    "issuance_budgets",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("role", Text, nullable=False),
    Column("asset", Text, ForeignKey("asset_types.code"), nullable=False),
    Column("daily_limit", BigInteger),
    Column("set_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("daily_limit >= 0", name="daily_limit_not_negative"),
    CheckConstraint(identifier_check("role"), name="role_format"),
    CheckConstraint(identifier_check("set_by"), name="set_by_format"),
)
Index(
    "ix_issuance_budgets_asset_role_id",
    issuance_budgets.c.asset,
    issuance_budgets.c.role,
    issuance_budgets.c.id,
)

# What each budget has used per UTC day: a counter moved in the posting's own database
# transaction, under its row lock, so concurrent postings cannot exceed the budget together.
# No foreign keys: a key check would lock the asset row for every posting.
issuance_usage = Table(
    "issuance_usage",
    metadata,
    Column("role", Text, primary_key=True),
    Column("asset", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("used", BigInteger, nullable=False),
    CheckConstraint("used >= 0", name="used_not_negative"),
)

# Frozen users: the newest row per user says whether it is frozen.
user_freezes = Table(
    "user_freezes",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("user_id", Text, ForeignKey("accounts.external_id"), nullable=False),
    Column("frozen", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(reason_check("reason"), name="reason_format"),
    CheckConstraint(identifier_check("actor"), name="actor_format"),
)
Index("ix_user_freezes_user_id_id", user_freezes.c.user_id, user_freezes.c.id)

# Requests for credits above an asset's threshold, and their decisions (one per request):
# approved (with the transaction it posted), rejected (with a reason), or expired (recorded
# by walletctl_expire_requests once past expires_at).
credit_requests = Table(
    "credit_requests",
    metadata,
    Column("id", BigInteger, Identity(start=1), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("asset", Text, ForeignKey("asset_types.code"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("reason", Text),
    Column("on_behalf_of", Text),
    Column("requested_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("kind IN ('topup', 'bonus')", name="kind_credit"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("kind <> 'bonus' OR reason IS NOT NULL", name="reason_required"),
    CheckConstraint(identifier_check("user_id"), name="user_id_format"),
    CheckConstraint(identifier_check("idempotency_key"), name="idempotency_key_format"),
    CheckConstraint(identifier_check("on_behalf_of"), name="on_behalf_of_format"),
    CheckConstraint(identifier_check("requested_by"), name="requested_by_format"),
    CheckConstraint(reason_check("reason"), name="reason_format"),
)

credit_request_decisions = Table(
    "credit_request_decisions",
    metadata,
    Column("request_id", BigInteger, ForeignKey("credit_requests.id"), primary_key=True),
    Column("decision", Text, nullable=False),
    Column("transaction_id", BigInteger, ForeignKey("transactions.id")),
    Column("decided_by", Text, nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("decision IN ('approved', 'rejected', 'expired')", name="decision_known"),
    CheckConstraint(
        "(decision = 'approved') = (transaction_id IS NOT NULL)", name="approval_posts"
    ),
    CheckConstraint("decision <> 'rejected' OR reason IS NOT NULL", name="rejection_reason"),
    CheckConstraint(identifier_check("decided_by"), name="decided_by_format"),
    CheckConstraint(reason_check("reason"), name="reason_format"),
)

# Run locks (walletctl/sql/locks.sql): a seal or a bulk file run holds its lock as a row
# of its name inserted, and never committed, by the transaction it keeps open for the run.
# No login role may read or write it; only the lock functions touch it.
run_locks = Table(
    "run_locks",
    metadata,
    Column("name", Text, primary_key=True),
)
