"""Hostile data put into the ledger the way a superuser (or a bug) could, past every check
walletctl's Python code makes: the one helper the tests use for it, so that it can follow
the schema when the database learns new rules."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import psycopg
from psycopg import sql

# Text that has broken or bent a file format: line breaks (LF, CR, CRLF, the Unicode and
# NEL ones), tabs, the comment and tag separators of hledger, quotes and backslashes of
# beancount, a whole forged transaction, formulas for a spreadsheet, invisible characters.
FORGED_HLEDGER_TRANSACTION = (
    '\r\n2020-01-01 * forged\r\n    Assets:Users:Umallory  1000000 "GOLD"\r\n'
    '    Equity:Treasury  -1000000 "GOLD"\r\n'
)
HOSTILE_TEXTS = [
    "cr\ronly",
    "lf\nonly",
    "tab\there",
    "semi;colon ; comment",
    "comma, date:2020-01-01, key:forged",
    'quote" and \\" and \\',
    FORGED_HLEDGER_TRANSACTION,
    '"\n2020-01-01 * "forged"\n  Assets:Users:Umallory  1000000 GOLD\n',
    "line\u2028separator\u2029paragraph\x85nel\x0bvt\x0cff\x1cfs",
    "\u202eright-to-left override, zero\u200bwidth, bom\ufeff",
    "  spaces around  ",
    '=HYPERLINK("http://evil.example","click")',
    "@SUM(1+1)",
    "\t=1+1",
]


def rewrite_text_as_superuser(
    url: str,
    transaction_id: int,
    *,
    reason: str | None = None,
    idempotency_key: str | None = None,
    actor: str | None = None,
) -> None:
    """Set a transaction's free text to anything at all, as a superuser would, past every
    rule the database has on it: in one transaction with session_replication_role = replica
    (no trigger fires: the append-only rule and any trigger-enforced text rule are off),
    the CHECK constraints of transactions that name these columns (replica does not turn
    CHECKs off) dropped, the row updated, and the constraints added back NOT VALID, then
    validated again where the new text allows it. Amounts, entries and balances are left
    alone: the ledger still adds up, only its text is hostile."""
    updates: dict[str, Any] = {
        column: value
        for column, value in (
            ("reason", reason),
            ("idempotency_key", idempotency_key),
            ("actor", actor),
        )
        if value is not None
    }
    with psycopg.connect(url) as admin:  # one transaction, committed on leaving
        admin.execute("SET LOCAL session_replication_role = replica")
        checks = [
            (name, definition.removesuffix(" NOT VALID"))
            for name, definition in admin.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'transactions'::regclass AND contype = 'c'"
            ).fetchall()
            if any(column in definition for column in updates)
        ]
        for name, _ in checks:
            admin.execute(
                sql.SQL("ALTER TABLE transactions DROP CONSTRAINT {}").format(sql.Identifier(name))
            )
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
            for column in updates
        )
        changed = admin.execute(
            sql.SQL("UPDATE transactions SET {} WHERE id = %(id)s").format(assignments),
            {**updates, "id": transaction_id},
        )
        assert changed.rowcount == 1, f"transaction {transaction_id} not found"
        for name, definition in checks:
            admin.execute(
                sql.SQL("ALTER TABLE transactions ADD CONSTRAINT {} {} NOT VALID").format(
                    sql.Identifier(name), sql.SQL(definition)
                )
            )
    with psycopg.connect(url, autocommit=True) as admin:
        for name, _ in checks:
            # Where the hostile text breaks a rule, the rule stays NOT VALID (new rows obey it).
            with suppress(psycopg.errors.CheckViolation):
                admin.execute(
                    sql.SQL("ALTER TABLE transactions VALIDATE CONSTRAINT {}").format(
                        sql.Identifier(name)
                    )
                )
