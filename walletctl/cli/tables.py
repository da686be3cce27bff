"""Tables for a person on a terminal (the ``table`` format), rendered to text here.

Every value is printed literally: cells and titles are rich ``Text`` (never parsed as
markup, so a user id ``[/x]`` or ``[red]alice`` is shown as it is) and control characters
are shown as escapes (a value cannot move the cursor or clear the screen). Numbers are
never cut: text columns wrap first; if a number still does not fit, the optional columns
are left out (named under the table); if even that does not fit, each row is printed as
``field: value`` lines, which a terminal wraps without losing a digit.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from walletctl.cli.env import Environment
from walletctl.cli.output import Column, Listing, Record, table_time, text

TEXT_MIN_WIDTH = 10


def record(env: Environment, shown: Record) -> str:
    numeric = set(shown.numeric)
    cells = [
        (_label(key), _cell(value, numeric=key in numeric)) for key, value in shown.data.items()
    ]
    expected = Counter(cell for key, cell in cells if key and _is_number(shown.data, key, numeric))

    def build() -> Table:
        table = Table(title=_safe(shown.title), show_header=False, title_justify="left")
        table.add_column(style="bold", overflow="fold")
        table.add_column(overflow="fold")
        for label, cell in cells:
            table.add_row(Text(label), Text(cell))
        return table

    rendered = _render(env, build())
    if _intact(rendered, expected, env.width):
        return rendered
    return _lines(
        shown.title,
        [dict(cells)],
        [
            Column(label, label, numeric=key in numeric)
            for (label, _), key in zip(cells, shown.data, strict=True)
        ],
        width=env.width,
    )


def listing(
    env: Environment, shown: Listing, rows: Sequence[Mapping[str, Any]], note: str | None
) -> str:
    # Columns with no value in any row say nothing on a terminal.
    columns = [
        column
        for column in shown.columns
        if any(row.get(column.key) not in (None, "") for row in rows)
        or (shown.footer and shown.footer.get(column.key) is not None)
        or not rows
    ]
    cells = [
        {column.key: _cell(row.get(column.key), numeric=column.numeric) for column in columns}
        for row in rows
    ]
    footer = {
        column.key: _cell((shown.footer or {}).get(column.key), numeric=column.numeric)
        for column in columns
    }
    expected = Counter(
        row[column.key] for row in cells for column in columns if column.numeric and row[column.key]
    )
    # The layouts to try, fullest first: every column, then without each optional column
    # in turn (from the last). The first whose rows each fit on one line wins; failing
    # that, the first that wraps text but keeps every number whole; failing that, blocks.
    layouts = [list(columns)]
    while any(column.optional for column in layouts[-1]):
        dropped = [column for column in layouts[-1] if column.optional][-1]
        layouts.append([column for column in layouts[-1] if column is not dropped])
    tables = [_table(shown, layout, cells, footer, rows) for layout in layouts]
    chosen = next(
        (
            index
            for index, table in enumerate(tables)
            if _natural_width(env, table) <= (env.width or 80)
        ),
        None,
    )
    rendered = "" if chosen is None else _render(env, tables[chosen])
    if chosen is None:
        for index, table in enumerate(tables):
            rendered = _render(env, table)
            if _intact(rendered, expected, env.width):
                chosen = index
                break
    if chosen is None:
        return _lines(shown.title, cells, columns, note=note, width=env.width)
    left_out = [column for column in columns if column not in layouts[chosen]]
    notes = []
    if left_out:
        names = ", ".join(column.key for column in left_out)
        notes.append(f"Not shown at this width: {names} (--format tsv shows every column).")
    if note:
        notes.append(note)
    return rendered + "".join(_wrapped(note, env.width) for note in notes)


def _table(
    shown: Listing,
    columns: Sequence[Column],
    cells: Sequence[Mapping[str, str]],
    footer: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
) -> Table:
    table = Table(
        title=_safe(shown.title),
        title_justify="left",
        show_footer=shown.footer is not None,
    )
    for column in columns:
        widest = max(
            (
                len(value)
                for value in (*(row[column.key] for row in cells), footer.get(column.key, ""))
            ),
            default=0,
        )
        table.add_column(
            Text(column.title),
            footer=Text(footer.get(column.key, "")),
            justify="right" if column.numeric else "left",
            overflow="fold",
            # A number column is never narrower than its widest number (its title may wrap);
            # text may wrap, but not to nothing: a table that cannot give each column this
            # much is too wide, and the rows are printed as blocks instead.
            min_width=max(widest, 1) if column.numeric else min(max(widest, 1), TEXT_MIN_WIDTH),
        )
    for row, original in zip(cells, rows, strict=True):
        style = (shown.styles or {}).get(str(original.get("status", "")))
        table.add_row(*(Text(row[column.key]) for column in columns), style=style)
    return table


def _natural_width(env: Environment, table: Table) -> int:
    """How wide the table is when no cell wraps."""
    from rich.measure import Measurement

    console = _console(env, io.StringIO())
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _console(env: Environment, buffer: io.StringIO) -> Console:
    return Console(
        file=buffer,
        width=env.width or 80,
        force_terminal=bool(env.stdout_isatty),
        no_color=bool(env.no_color),
        color_system=None if env.no_color else "auto",
        highlight=False,
        markup=False,
        emoji=False,
        _environ=dict(env.environ),
    )


def _render(env: Environment, table: Table) -> str:
    buffer = io.StringIO()
    # Not cropped: a table wider than the terminal must show as too wide, not be cut.
    _console(env, buffer).print(table, crop=False)
    return buffer.getvalue()


def _intact(rendered: str, expected: Counter[str], width: int | None) -> bool:
    """Every number appears whole (as often as the rows hold it), and no line is wider
    than the terminal."""
    if any(rendered.count(number) < times for number, times in expected.items()):
        return False
    from rich.text import Text as RichText

    plain = RichText.from_ansi(rendered).plain
    return all(len(line) <= (width or 80) for line in plain.splitlines())


def _lines(
    title: str,
    cells: Sequence[Mapping[str, str]],
    columns: Sequence[Column],
    *,
    note: str | None = None,
    width: int | None = None,
) -> str:
    """Each row as ``field: value`` lines, wrapped to the terminal; a number that does not
    fit beside its field goes on a line of its own, whole."""
    import textwrap

    limit = width or 80
    out = textwrap.wrap(_safe_line(title), limit) or [""]
    for index, row in enumerate(cells):
        if index:
            out.append("")
        for column in columns:
            value = row.get(column.key, "")
            if value == "":
                continue
            line = f"{column.title}: {value}"
            if len(line) <= limit:
                out.append(line)
            elif column.numeric:
                out.extend([f"{column.title}:", f"  {value}"])
            else:
                out.extend(textwrap.wrap(line, limit, subsequent_indent="  "))
    if note:
        out.extend(["", *textwrap.wrap(_safe_line(note), limit)])
    return "\n".join(out) + "\n"


def _wrapped(note: str, width: int | None) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(_safe_line(note), width or 80)) + "\n"


def _is_number(data: Mapping[str, Any], key: str, numeric: set[str]) -> bool:
    value = data.get(key)
    return key in numeric and isinstance(value, int) and not isinstance(value, bool)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _cell(value: Any, *, numeric: bool) -> str:
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, datetime):
        return table_time(value)
    return _escaped(text(value))


def _escaped(value: str) -> str:
    """Control and other unprintable characters as escapes: a value from the ledger can
    hold them (a superuser's edit) and a terminal would obey them."""
    if value.isprintable():
        return value
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in value
    )


def _safe(title: str) -> Text:
    return Text(_escaped(title))


def _safe_line(line: str) -> str:
    return _escaped(line)
