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

INVISIBLE_CHARACTERS = (
    r"[\u00a0\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u1680"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0"
    r"\ufff0-\ufffb\U000e0000-\U000e007f]"
)
"""Characters that show as nothing, or as an ordinary space, in an identifier: spaces other
than U+0020 (no-break, em, ideographic...), zero-width characters and joiners, bidirectional
marks and overrides, variation selectors, the byte order mark, Hangul fillers, tag
characters. `alice` and `alice` followed by U+200B would be two users that look like one
(and `Treasury` plus an invisible character would look like the Treasury), so identifiers
may not hold them. Reasons may: they are shown escaped where it matters (the exports)."""

TREASURY_LABEL = "Treasury"
"""How statements and exports name the Treasury's side; no user may carry this id (in any
letter case), so that a statement line is never ambiguous."""


def identifier_check(column: str) -> str:
    """The CHECK expression for a user id, key, actor or note stored in ``column``.

    Identifiers are also in Unicode normal form C, so that one name has one spelling: `é`
    as one code point and as `e` plus a combining accent would otherwise be two users."""
    return (
        f"char_length({column}) BETWEEN 1 AND {MAX_ID_LENGTH} "
        f"AND {column} !~ '{CONTROL_CHARACTERS}' AND {column} !~ '{EDGE_SPACE}' "
        f"AND {column} !~ '{INVISIBLE_CHARACTERS}' AND {column} IS NFC NORMALIZED"
    )


def reason_check(column: str) -> str:
    """The CHECK expression for a reason (NULL allowed here; required per kind elsewhere)."""
    return (
        f"char_length({column}) BETWEEN 1 AND {MAX_REASON_LENGTH} "
        f"AND {column} !~ '{CONTROL_CHARACTERS}'"
    )
