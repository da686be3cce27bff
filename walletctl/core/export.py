"""Export the ledger as text: CSV, JSON lines, an hledger journal, a beancount file.

Everything streams: rows come from a server-side cursor in one REPEATABLE READ snapshot and
are written as they arrive, so memory stays flat for any size of ledger.

In the journal formats each walletctl transaction is one transaction with two postings,
the user's account and the Treasury, with walletctl's signs: a user's balance is what
they hold (positive), the Treasury's is minus everything users hold. Accounts are named
``Assets:Users:<user>`` and ``Equity:Treasury``; user ids are escaped so any id makes a
valid account name (letters and digits stay, every other character becomes -XX- with its
hexadecimal code point). With ``since``, an opening transaction per asset carries every
balance as of ``since``, so the external tools' balances equal walletctl's at ``until``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from walletctl.core import validation
from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import InvalidInput

Format = Literal["csv", "jsonl", "ledger", "beancount"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "ledger", "beancount")
FETCH_ROWS = 10_000
TREASURY_ACCOUNT = "Equity:Treasury"

ENTRY_COLUMNS = (
    "entry_id",
    "transaction_id",
    "created_at",
    "kind",
    "user",
    "account",
    "asset",
    "amount",
    "balance_after",
    "idempotency_key",
    "reason",
    "actor",
    "reverses",
)

_ENTRIES_SQL = """
SELECT e.id AS entry_id, e.transaction_id, e.created_at, t.kind, u.external_id AS "user",
       CASE WHEN e.account_id = 0 THEN 'Treasury' ELSE u.external_id END AS account,
       s.code AS asset, e.amount, e.balance_after, t.idempotency_key, t.reason, t.actor,
       t.reverses
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN accounts u ON u.id = t.account_id
JOIN asset_types s ON s.id = e.asset_id
WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
ORDER BY e.id
"""

# One row per transaction, its user's posting in it (the Treasury's is its negation).
_TRANSACTIONS_SQL = """
SELECT t.id, t.created_at, t.kind, u.external_id, s.code, e.amount, t.idempotency_key,
       t.reason, t.actor, t.reverses
FROM transactions t
JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
JOIN accounts u ON u.id = t.account_id
JOIN asset_types s ON s.id = t.asset_id
WHERE t.created_at >= %(since)s AND t.created_at < %(until)s
ORDER BY t.id
"""

# Balances as of `since`: the last entry before it, per user and asset.
_OPENING_SQL = """
SELECT s.code, a.external_id, last.balance_after
FROM balances b
JOIN accounts a ON a.id = b.account_id
JOIN asset_types s ON s.id = b.asset_id
JOIN LATERAL (
    SELECT e.balance_after FROM ledger_entries e
    WHERE e.account_id = b.account_id AND e.asset_id = b.asset_id AND e.created_at < %(since)s
    ORDER BY e.created_at DESC, e.id DESC
    LIMIT 1
) last ON last.balance_after <> 0
ORDER BY s.code, a.external_id
"""

_ACCOUNTS_SQL = """
SELECT a.external_id, min(a.created_at) FROM accounts a WHERE a.id <> 0 GROUP BY a.external_id
ORDER BY 1
"""


def account_name(user_id: str) -> str:
    """A user's account in the journal formats, valid in hledger and beancount alike."""
    escaped = "".join(
        char if char.isascii() and char.isalnum() else f"-{ord(char):X}-" for char in user_id
    )
    return f"Assets:Users:U{escaped}"


def export(
    conn: Connection,
    out: TextIO,
    fmt: Format,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write the ledger (entries with created_at in [since, until)) to ``out``. Returns the
    number of rows (csv, jsonl: entries; ledger, beancount: transactions) written."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    start, end = validation.period(since, until)
    params = {"since": start, "until": end}
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if fmt == "csv":
            return _csv(conn, out, params)
        if fmt == "jsonl":
            return _jsonl(conn, out, params)
        return _journal(conn, out, params, beancount=fmt == "beancount", since=since)


def _rows(
    conn: Connection, sql: str, params: dict[str, Any], *, name: str = "walletctl_export"
) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name=name) as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(sql, params)
        yield from cursor


# csv and jsonl come straight out of COPY: PostgreSQL formats the rows, Python only moves
# blocks of bytes. For JSON lines, csv mode with a quote and a delimiter that JSON text never
# contains (control characters are escaped inside JSON strings) passes each line through as
# it is, where text mode would double every backslash.
_JSONL_COPY_OPTIONS = "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'"


def _csv(conn: Connection, out: TextIO, params: dict[str, Any]) -> int:
    return _copy_out(
        conn,
        out,
        f"COPY ({_ENTRIES_SQL}) TO STDOUT WITH (FORMAT csv, HEADER)",
        params,
        header_lines=1,
    )


def _jsonl(conn: Connection, out: TextIO, params: dict[str, Any]) -> int:
    columns = ", ".join(f"'{name}', entry.\"{name}\"" for name in ENTRY_COLUMNS)
    query = (
        f"COPY (SELECT json_build_object({columns})::text FROM ({_ENTRIES_SQL}) entry) "
        f"TO STDOUT WITH ({_JSONL_COPY_OPTIONS})"
    )
    return _copy_out(conn, out, query, params, header_lines=0)


def _copy_out(
    conn: Connection, out: TextIO, query: str, params: dict[str, Any], *, header_lines: int
) -> int:
    # Times in UTC whatever the session's zone, so that an export reads the same anywhere.
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    lines = 0
    with conn.cursor() as cursor, cursor.copy(query, params) as copy:
        for block in copy:
            text = bytes(block).decode("utf-8")
            lines += text.count("\n")
            out.write(text)
    return lines - header_lines


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _quote(text: str) -> str:
    """A string for a beancount/hledger narration or metadata value."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _journal(
    conn: Connection,
    out: TextIO,
    params: dict[str, Any],
    *,
    beancount: bool,
    since: datetime | None,
) -> int:
    if beancount:
        _beancount_header(conn, out)
    if since is not None:
        _opening_balances(conn, out, since, beancount=beancount)
    count = 0
    for row in _rows(conn, _TRANSACTIONS_SQL, params):
        (transaction_id, created_at, kind, user, asset, amount, key, reason, actor, reverses) = row
        day = created_at.astimezone(UTC).date().isoformat()
        what = f"{kind} {transaction_id}" + (f" reverses {reverses}" if reverses else "")
        narration = f"{what}: {reason}" if reason else what
        account = account_name(user)
        if beancount:
            out.write(f"{day} * {_quote(narration)}\n")
            out.write(f"  transaction_id: {transaction_id}\n")
            out.write(f"  idempotency_key: {_quote(key)}\n")
            out.write(f"  actor: {_quote(actor)}\n")
            out.write(f"  time: {_quote(created_at.astimezone(UTC).isoformat())}\n")
            out.write(f"  {account}  {amount} {asset}\n")
            out.write(f"  {TREASURY_ACCOUNT}  {-amount} {asset}\n\n")
        else:
            note = narration.replace(";", ",").replace("\n", " ")
            out.write(
                f"{day} * {note}  ; transaction:{transaction_id}, actor:{_tag(actor)}, "
                f"key:{_tag(key)}\n"
            )
            out.write(f'    {account}  {amount} "{asset}"\n')
            out.write(f'    {TREASURY_ACCOUNT}  {-amount} "{asset}"\n\n')
        count += 1
    return count


def _tag(text: str) -> str:
    # hledger tag values end at a comma or the end of the line.
    return text.replace(",", " ").replace("\n", " ")


def _beancount_header(conn: Connection, out: TextIO) -> None:
    """Beancount wants every account and commodity opened before use (on any date not
    after it); the opens stream from the accounts table."""
    out.write('option "title" "walletctl ledger"\n\n')
    out.write(f"1970-01-01 open {TREASURY_ACCOUNT}\n")
    for (code,) in conn.execute("SELECT code FROM asset_types ORDER BY code"):
        out.write(f"1970-01-01 commodity {code}\n")
    for row in _rows(conn, _ACCOUNTS_SQL, {}, name="walletctl_export_accounts"):
        out.write(f"1970-01-01 open {account_name(row[0])}\n")
    out.write("\n")


def _opening_balances(conn: Connection, out: TextIO, since: datetime, *, beancount: bool) -> None:
    day = since.astimezone(UTC).date().isoformat()
    current_asset: str | None = None
    total = 0
    commodity = ""

    def close(asset: str, total: int) -> None:
        suffix = asset if beancount else f'"{asset}"'
        out.write(f"  {TREASURY_ACCOUNT}  {-total} {suffix}\n\n")

    for asset, user, balance in _rows(
        conn, _OPENING_SQL, {"since": since}, name="walletctl_export_opening"
    ):
        if asset != current_asset:
            if current_asset is not None:
                close(current_asset, total)
            current_asset, total = asset, 0
            commodity = asset if beancount else f'"{asset}"'
            out.write(
                f'{day} * "opening balances of {asset} as of {since.isoformat()}"\n'
                if beancount
                else f"{day} * opening balances of {asset} as of {since.isoformat()}\n"
            )
        out.write(f"  {account_name(user)}  {balance} {commodity}\n")
        total += balance
    if current_asset is not None:
        close(current_asset, total)
