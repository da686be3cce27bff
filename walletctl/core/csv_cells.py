"""CSV cells a spreadsheet will not run: the one rule for every CSV walletctl writes.

A spreadsheet opening a CSV file runs a cell that starts with ``=``, ``+``, ``-`` or ``@``
as a formula (``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``), and a leading tab or carriage
return can hide such a start. OWASP's rule: such a cell gets a leading single quote, which
makes the spreadsheet show it as text. A cell that is a plain number (``-120``, ``+5``,
``-1.5``) is left as it is: a signed amount is data, not a formula, and a spreadsheet reads
it as the number it is.

``neutralised`` applies the rule to a Python string; ``neutralised_sql`` to a column of a
query (the CSV export comes straight out of PostgreSQL's COPY). Both read the same
constants, and a test checks that they agree.
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = r"[+-]?[0-9]+(\.[0-9]+)?"
_PLAIN_NUMBER_RE = re.compile(_PLAIN_NUMBER)


def neutralised(cell: str) -> str:
    """``cell``, with a leading ``'`` if a spreadsheet would take it for a formula."""
    if cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER_RE.fullmatch(cell):
        return "'" + cell
    return cell


def neutralised_sql(column: str) -> str:
    """A SQL expression: the text ``column`` with the same rule applied. The first
    character is compared by its code (ascii() gives the code point in UTF-8): no text is
    built and no collation consulted for the many cells that start with none of them."""
    starts = ", ".join(str(ord(char)) for char in FORMULA_STARTS)
    return (
        f"CASE WHEN ascii({column}) IN ({starts}) AND {column} !~ '^{_PLAIN_NUMBER}$' "
        f"THEN '''' || {column} ELSE {column} END"
    )
