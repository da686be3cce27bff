"""Hostile data put into the ledger the way a superuser (or a bug) could, past every check
walletctl's Python code makes: the one helper the tests use for it, so that it can follow
the schema when the database learns new rules."""

from __future__ import annotations

from typing import Any

import psycopg

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
    """Set a transaction's free text to anything at all, as a superuser would: in a session
    with session_replication_role = replica (no trigger fires, so the append-only rule and
    any trigger-enforced text rule are off), straight UPDATEs of the row. Amounts, entries
    and balances are left alone: the ledger still adds up, only its text is hostile.

    If the database gains CHECK constraints on these columns (replica does not turn
    CHECKs off), this is the one place to adapt."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SET session_replication_role = replica")
        updates: dict[str, Any] = {
            column: value
            for column, value in (
                ("reason", reason),
                ("idempotency_key", idempotency_key),
                ("actor", actor),
            )
            if value is not None
        }
        assignments = ", ".join(f"{column} = %({column})s" for column in updates)
        changed = admin.execute(
            f"UPDATE transactions SET {assignments} WHERE id = %(id)s",
            {**updates, "id": transaction_id},
        )
        assert changed.rowcount == 1, f"transaction {transaction_id} not found"
