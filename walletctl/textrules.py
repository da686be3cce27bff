"""The rules for text stored in the ledger, written once for Python and for PostgreSQL.

The core checks them before a request reaches the server (a clear message naming the
field); the database checks the same rules as CHECK constraints (walletctl/schema.py), so a
caller of the SQL API, or a person with psql, is held to them too. The patterns below are
valid both as Python regular expressions and as PostgreSQL's (ARE) ones; a property test
(tests/test_text_rules.py) sends the same strings through both and expects the same verdict.
"""

from __future__ import annotations

MAX_ID_LENGTH = 200
"""User ids, idempotency keys, actors and "on behalf of" notes."""
MAX_REASON_LENGTH = 1000

CONTROL_CHARACTERS = r"[\x01-\x1f\x7f-\x9f]"
"""C0 controls (TAB, LF and CR included), DEL and the C1 controls. NUL cannot be stored in
PostgreSQL text at all."""

EDGE_SPACE = r"^ | $"
"""A leading or trailing space: two ids that differ only by it would look the same."""

TREASURY_LABEL = "Treasury"
"""How statements and exports name the Treasury's side; no user may carry this id (in any
letter case), so that a statement line is never ambiguous."""


def identifier_check(column: str) -> str:
    """The CHECK expression for a user id, key, actor or note stored in ``column``."""
    return (
        f"char_length({column}) BETWEEN 1 AND {MAX_ID_LENGTH} "
        f"AND {column} !~ '{CONTROL_CHARACTERS}' AND {column} !~ '{EDGE_SPACE}'"
    )


def reason_check(column: str) -> str:
    """The CHECK expression for a reason (NULL allowed here; required per kind elsewhere)."""
    return (
        f"char_length({column}) BETWEEN 1 AND {MAX_REASON_LENGTH} "
        f"AND {column} !~ '{CONTROL_CHARACTERS}'"
    )
