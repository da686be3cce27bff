"""Where output goes and how it looks: decided here once, not in each command.

- ``--json``: one JSON document on stdout (JSON lines for long listings);
- ``--csv``: CSV with a header (listings only); a cell a spreadsheet would run as a formula
  gets a leading ``'`` (see walletctl.core.csv_cells); ``--raw-csv``: CSV as it is;
- stdout is a terminal: rich tables and panels (no colour when NO_COLOR is set);
- otherwise (a pipe, a file): plain text, tab-separated, no colour, no box drawing.

Data goes to stdout; messages, warnings and errors go to stderr. rich is imported only
when a terminal will show its output.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, TextIO


class Mode(Enum):
    RICH = "rich"
    PLAIN = "plain"
    JSON = "json"
    CSV = "csv"
    RAW_CSV = "raw_csv"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    numeric: bool = False


def choose_mode(
    *, json_output: bool = False, csv_output: bool = False, raw_csv: bool = False
) -> Mode:
    if json_output and (csv_output or raw_csv):
        from walletctl.errors import InvalidInput

        raise InvalidInput(
            f"--json and {'--raw-csv' if raw_csv else '--csv'} cannot be used together"
        )
    if json_output:
        return Mode.JSON
    if raw_csv:
        return Mode.RAW_CSV
    if csv_output:
        return Mode.CSV
    return Mode.RICH if sys.stdout.isatty() else Mode.PLAIN


_json_annotations: dict[str, Any] = {}


def annotate_json(key: str, value: Any) -> None:
    """Add ``key`` to every JSON object this command prints at the top level (a record, each
    line of JSON lines, each element of a JSON list): where a report was read from, say."""
    _json_annotations[key] = value


def clear_annotations() -> None:
    _json_annotations.clear()


def _annotated(value: Any) -> Any:
    if _json_annotations and isinstance(value, Mapping):
        return {**value, **_json_annotations}
    return value


def message(text: str) -> None:
    """A line for the person running the command, on stderr."""
    print(text, file=sys.stderr, flush=True)


def error(text: str) -> None:
    print(f"walletctl: error: {text}", file=sys.stderr, flush=True)


def to_json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json_value(value), ensure_ascii=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _plain(value: Any) -> str:
    # A tab or newline inside a value would break the columns of a plain listing.
    return _text(value).replace("\t", " ").replace("\n", " ")


def csv_cell(value: Any, *, raw: bool = False) -> str:
    """A value for a CSV cell (the csv module quotes what needs quoting). Unless ``raw``,
    a cell a spreadsheet would run as a formula gets a leading ' (walletctl.core.csv_cells
    has the rule)."""
    if raw:
        return _text(value)
    from walletctl.core.csv_cells import neutralised

    return neutralised(_text(value))


def _pretty(value: Any, numeric: bool) -> str:
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return _plain(value)


class Output:
    """Renders one command's data in the chosen mode."""

    def __init__(self, mode: Mode, stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream = stream or sys.stdout

    def _console(self) -> Any:
        from rich.console import Console

        return Console(file=self.stream, no_color=bool(os.environ.get("NO_COLOR")) or None)

    def record(self, data: Mapping[str, Any], *, title: str, numeric: Sequence[str] = ()) -> None:
        """One object: a panel on a terminal, ``key<TAB>value`` lines in a pipe."""
        if self.mode is Mode.JSON:
            print(dumps(_annotated(data)), file=self.stream)
        elif self.mode is Mode.RICH:
            from rich.table import Table

            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for key, value in data.items():
                table.add_row(key.replace("_", " "), _pretty(value, key in numeric))
            self._console().print(table)
        else:
            for key, value in data.items():
                print(f"{key}\t{_plain(value)}", file=self.stream)

    def table(
        self,
        rows: Iterable[Mapping[str, Any]],
        columns: Sequence[Column],
        *,
        title: str,
        json_lines: bool = False,
        footer: Mapping[str, Any] | None = None,
        styles: Mapping[str, Any] | None = None,
    ) -> int:
        """A listing. Streams in the JSON-lines, CSV and plain modes. Returns the row count."""
        count = 0
        if self.mode is Mode.JSON:
            if json_lines:
                for row in rows:
                    print(dumps(_annotated(row)), file=self.stream)
                    count += 1
            else:
                materialised = [_annotated(row) for row in rows]
                count = len(materialised)
                print(dumps(materialised), file=self.stream)
        elif self.mode in (Mode.CSV, Mode.RAW_CSV):
            raw = self.mode is Mode.RAW_CSV
            writer = csv.writer(self.stream, lineterminator="\n")
            writer.writerow([column.key for column in columns])
            for row in rows:
                writer.writerow([csv_cell(row.get(column.key), raw=raw) for column in columns])
                count += 1
        elif self.mode is Mode.PLAIN:
            print("\t".join(column.key for column in columns), file=self.stream)
            for row in rows:
                print(
                    "\t".join(_plain(row.get(column.key)) for column in columns), file=self.stream
                )
                count += 1
        else:
            from rich.table import Table

            table = Table(title=title, title_justify="left", show_footer=footer is not None)
            for column in columns:
                table.add_column(
                    column.title,
                    justify="right" if column.numeric else "left",
                    footer=_pretty((footer or {}).get(column.key), column.numeric),
                )
            for row in rows:
                style = (styles or {}).get(str(row.get("status", "")))
                table.add_row(
                    *(_pretty(row.get(column.key), column.numeric) for column in columns),
                    style=style,
                )
                count += 1
            self._console().print(table)
        return count
