r"""Export the ledger as text: CSV, JSON lines, an hledger journal, a beancount file.

Everything streams: rows come from a server-side cursor in one REPEATABLE READ snapshot and
are written as they arrive, so memory stays flat for any size of ledger.

In the journal formats the ledger is seen from the issuer's books (README "Exports: the
chart of accounts"): what a user holds is owed by the issuer, a liability,
``Liabilities:Users:U<user>``; each transaction's other side is the account of its kind:
``Assets:Clearing:Topups`` (credits sold: the payment side owes or paid their price),
``Expenses:Bonuses`` (credits given away), ``Income:Spends`` (credits redeemed: revenue);
a reversal posts to the account of what it reverses. So `hledger bs` shows the outstanding
credits as a liability and `hledger is` bonuses as an expense and spends as revenue. User
ids are escaped so any id makes a valid account name (letters and digits stay, every other
character becomes -XX- with its hexadecimal code point). With ``since``, an opening
transaction per asset carries every balance as of ``since`` against
``Equity:Opening-Balances``, so the tools' balances equal walletctl's at ``until``.

No value can change the structure of a file. Free text (reasons, keys, actors) is written
so that the format's parser reads it back as one value: in beancount, inside a string with
``\``, ``"``, LF, CR and TAB escaped as beancount reads them back; in hledger, which has no
escapes, every character it could split on (line breaks, ``;`` in a description, ``,`` in a
tag value, spaces at either end) and every unprintable character is written as a
Python-style escape (``\x0d``, ``\u2028``; a backslash as ``\x5c``). Asset codes are
checked against the commodity syntax and the file is refused if one does not fit. In CSV,
cells a spreadsheet would run as a formula get a leading ``'`` unless ``raw_csv`` (see
``csv_cells``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import csv_cells, validation
from walletctl.core.models import Connection, iso_time
from walletctl.core.sqlerrors import translated
from walletctl.core.summary import TRANSACTION_FILTER_SQL, ReportFilter
from walletctl.errors import InvalidInput, WalletError

Format = Literal["csv", "jsonl", "ledger", "beancount"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "ledger", "beancount")
FETCH_ROWS = 10_000

# The chart of accounts of the journal formats (README: Exports).
USERS_ACCOUNT = "Liabilities:Users"
COUNTER_ACCOUNTS = {
    "topup": "Assets:Clearing:Topups",
    "bonus": "Expenses:Bonuses",
    "spend": "Income:Spends",
}
OPENING_ACCOUNT = "Equity:Opening-Balances"
CHART_OF_ACCOUNTS = (*COUNTER_ACCOUNTS.values(), OPENING_ACCOUNT)

# Every time an export writes: ISO 8601 in UTC with microseconds, the form every view of
# walletctl uses (walletctl.cli.views), made by the server so COPY can stream it.
ISO_TIME_SQL = """to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""

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
    "on_behalf_of",
    "reverses",
)

_ENTRIES_SQL = (
    """
SELECT e.id AS entry_id, e.transaction_id, """
    + ISO_TIME_SQL.format(column="e.created_at")
    + """ AS created_at,
       t.kind, u.external_id AS "user",
       CASE WHEN e.account_id = 0 THEN 'Treasury' ELSE u.external_id END AS account,
       s.code AS asset, e.amount, e.balance_after, t.idempotency_key, t.reason, t.actor,
       t.on_behalf_of, t.reverses
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN accounts u ON u.id = t.account_id
JOIN asset_types s ON s.id = e.asset_id
WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
"""
    + TRANSACTION_FILTER_SQL
    + """
ORDER BY e.id
"""
)

# One row per transaction: its user's entry (the other side is its negation) and, for a
# reversal, the kind of what it reverses (whose counter-account it posts to).
_TRANSACTIONS_SQL = (
    """
SELECT t.id, t.created_at, t.kind, u.external_id, s.code, e.amount, t.idempotency_key,
       t.reason, t.actor, t.on_behalf_of, t.reverses, target.kind
FROM transactions t
JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
JOIN accounts u ON u.id = t.account_id
JOIN asset_types s ON s.id = t.asset_id
LEFT JOIN transactions target ON target.id = t.reverses
WHERE t.created_at >= %(since)s AND t.created_at < %(until)s
"""
    + TRANSACTION_FILTER_SQL
    + """
ORDER BY t.id
"""
)

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
    return f"{USERS_ACCOUNT}:U{escaped}"


@on_proxy("export")
def export(
    conn: Connection,
    out: TextIO,
    fmt: Format,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    raw_csv: bool = False,
    where: ReportFilter | None = None,
) -> int:
    """Write the ledger (entries with created_at in [since, until), of the transactions
    ``where`` selects) to ``out``. Returns the number of rows (csv, jsonl: entries; ledger,
    beancount: transactions) written. ``raw_csv`` writes CSV cells as they are, for
    programs rather than spreadsheets. A filtered journal is a selection, not a ledger: it
    has no opening balances."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    where = where or ReportFilter()
    start, end = validation.period(since, until)
    params = {"since": start, "until": end, **where.params()}
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if fmt == "csv":
            return _csv(conn, out, params, raw=raw_csv)
        if fmt == "jsonl":
            return _jsonl(conn, out, params)
        opening = since if where.selects_all else None
        return _journal(conn, out, params, beancount=fmt == "beancount", since=opening)


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


# The entries' text columns: the ones a value could start with a formula in.
_TEXT_COLUMNS = frozenset(
    ("kind", "user", "account", "asset", "idempotency_key", "reason", "actor", "on_behalf_of")
)


def _csv(conn: Connection, out: TextIO, params: dict[str, Any], *, raw: bool) -> int:
    query = _ENTRIES_SQL
    if not raw:
        columns = ", ".join(_csv_column(name) for name in ENTRY_COLUMNS)
        query = f"SELECT {columns} FROM ({_ENTRIES_SQL}) entry"
    return _copy_out(conn, out, f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", params)


def _csv_column(name: str) -> str:
    column = f'entry."{name}"'
    if name in _TEXT_COLUMNS:
        column = csv_cells.neutralised_sql(column)
    return f'{column} AS "{name}"'


def _jsonl(conn: Connection, out: TextIO, params: dict[str, Any]) -> int:
    columns = ", ".join(f"'{name}', entry.\"{name}\"" for name in ENTRY_COLUMNS)
    query = (
        f"COPY (SELECT json_build_object({columns})::text FROM ({_ENTRIES_SQL}) entry) "
        f"TO STDOUT WITH ({_JSONL_COPY_OPTIONS})"
    )
    return _copy_out(conn, out, query, params)


def _copy_out(conn: Connection, out: TextIO, query: str, params: dict[str, Any]) -> int:
    # Times in UTC whatever the session's zone, so that an export reads the same anywhere.
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    with conn.cursor() as cursor:
        with cursor.copy(query, params) as copy:
            for block in copy:
                out.write(bytes(block).decode("utf-8"))
        # The server's count of rows: a quoted CSV value may hold line breaks of its own.
        return cursor.rowcount


# What beancount reads back inside a string: with these escaped, nothing ends the string
# early, and every other character (a raw control character too) stays part of it.
_BEANCOUNT_ESCAPES = str.maketrans(
    {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)


def _quote(text: str) -> str:
    """A beancount string: a narration or a metadata value."""
    # Most text has nothing to escape: five scans in C cost less than one translate().
    if "\\" in text or '"' in text or "\n" in text or "\r" in text or "\t" in text:
        text = text.translate(_BEANCOUNT_ESCAPES)
    return f'"{text}"'


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _hledger_text(text: str, special: Literal[";", ","]) -> str:
    """Free text for an hledger description (special ``;``) or tag value (special ``,``).
    hledger has no escapes: a line break ends the transaction's line, ``;`` starts its
    comment, ``,`` ends a tag's value, and the spaces at either end are trimmed. Those,
    backslash, and every unprintable character (control, format, line and paragraph
    separators, spaces other than ' ') are written as Python-style escapes (``\x0d``,
    ``\x5c``, ``\u2028``), which read back exactly."""
    if (
        text.isprintable()
        and "\\" not in text
        and special not in text
        and not text.startswith(" ")
        and not text.endswith(" ")
    ):
        return text
    inner = text.strip(" ")
    leading = len(text) - len(text.lstrip(" "))
    trailing = len(text) - len(inner) - leading if inner else 0
    escaped = "".join(
        _escaped(char) if char in ("\\", special) or not char.isprintable() else char
        for char in inner
    )
    return "\\x20" * leading + escaped + "\\x20" * trailing


def _commodity(code: str) -> str:
    """An asset code as a commodity. The database's CHECK keeps codes to the syntax both
    tools accept; a code that got past it is refused rather than written."""
    try:
        return validation.asset_code(code)
    except InvalidInput:
        raise WalletError(
            f"asset code {code!r} in the ledger is not a valid commodity; export refused"
        ) from None


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
    commodities: dict[str, str] = {}
    for row in _rows(conn, _TRANSACTIONS_SQL, params):
        (
            transaction_id,
            created_at,
            kind,
            user,
            asset,
            amount,
            key,
            reason,
            actor,
            on_behalf_of,
            reverses,
            reversed_kind,
        ) = row
        day = created_at.astimezone(UTC).date().isoformat()
        what = f"{kind} {transaction_id}" + (f" reverses {reverses}" if reverses else "")
        narration = f"{what}: {reason}" if reason else what
        account = account_name(user)
        counter = COUNTER_ACCOUNTS[reversed_kind or kind]
        commodity = commodities.get(asset) or commodities.setdefault(asset, _commodity(asset))
        # The user's entry moves what the issuer owes: a liability, credit-normal, so a
        # credit to the user is a negative posting to their account.
        if beancount:
            out.write(f"{day} * {_quote(narration)}\n")
            out.write(f"  transaction_id: {transaction_id}\n")
            out.write(f"  idempotency_key: {_quote(key)}\n")
            out.write(f"  actor: {_quote(actor)}\n")
            if on_behalf_of is not None:
                out.write(f"  on_behalf_of: {_quote(on_behalf_of)}\n")
            out.write(f"  time: {_quote(iso_time(created_at))}\n")
            out.write(f"  {account}  {-amount} {commodity}\n")
            out.write(f"  {counter}  {amount} {commodity}\n\n")
        else:
            note = _hledger_text(narration, ";")
            behalf = f", on_behalf_of:{_tag(on_behalf_of)}" if on_behalf_of is not None else ""
            out.write(
                f"{day} * {note}  ; transaction:{transaction_id}, actor:{_tag(actor)}{behalf}, "
                f"key:{_tag(key)}\n"
            )
            out.write(f'    {account}  {-amount} "{commodity}"\n')
            out.write(f'    {counter}  {amount} "{commodity}"\n\n')
        count += 1
    return count


def _tag(text: str) -> str:
    """An hledger tag value: it ends at a comma or the end of the line."""
    return _hledger_text(text, ",")


def _beancount_header(conn: Connection, out: TextIO) -> None:
    """Beancount wants every account and commodity opened before use (on any date not
    after it); the opens stream from the accounts table."""
    out.write('option "title" "walletctl ledger"\n\n')
    for chart_account in CHART_OF_ACCOUNTS:
        out.write(f"1970-01-01 open {chart_account}\n")
    for (code,) in conn.execute("SELECT code FROM asset_types ORDER BY code"):
        out.write(f"1970-01-01 commodity {_commodity(code)}\n")
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
        out.write(f"  {OPENING_ACCOUNT}  {total} {suffix}\n\n")

    for asset, user, balance in _rows(
        conn, _OPENING_SQL, {"since": since}, name="walletctl_export_opening"
    ):
        if asset != current_asset:
            if current_asset is not None:
                close(current_asset, total)
            current_asset, total = asset, 0
            commodity = _commodity(asset) if beancount else f'"{_commodity(asset)}"'
            out.write(
                f'{day} * "opening balances of {asset} as of {since.isoformat()}"\n'
                if beancount
                else f"{day} * opening balances of {asset} as of {since.isoformat()}\n"
            )
        out.write(f"  {account_name(user)}  {-balance} {commodity}\n")
        total += balance
    if current_asset is not None:
        close(current_asset, total)
