"""How output looks, decided here once: the format, the layout, the escaping.

Formats (``--format``, walletctl.cli.formats parses the options):

- ``table``: rich tables for a person (the default on a terminal). Every value is printed
  literally (no rich markup, control characters escaped); numbers are never cut: other
  columns wrap first, optional columns go, and when even that cannot fit, each row is
  printed as ``field: value`` lines. Long output goes through the pager.
- ``tsv``: the default in a pipe: a header line and tab-separated rows, or ``field<TAB>value``
  lines for one object; a backslash, tab, LF or CR inside a value is written ``\\\\``,
  ``\\t``, ``\\n``, ``\\r``.
- ``csv``: a header and rows; cells a spreadsheet would run are neutralised unless raw.
- ``json``: one JSON object (a listing is an object with the rows under a plural name, its
  totals and cursor beside them, and any notices).
- ``jsonl``: one JSON object per line (rows of a listing; an object alone is one line).

Times are ISO 8601 in UTC everywhere (walletctl.core.models.iso_time); tables show them to
the second. Data goes to stdout, messages and errors to stderr (walletctl.cli.env).
rich is imported only when a table is drawn.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any, TextIO

from walletctl.cli.env import Environment
from walletctl.core.values import iso_time
from walletctl.errors import InvalidInput


class Format(Enum):
    TABLE = "table"
    TSV = "tsv"
    CSV = "csv"
    JSON = "json"
    JSONL = "jsonl"


FORMAT_NAMES = tuple(fmt.value for fmt in Format)


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    numeric: bool = False
    optional: bool = False
    """A table may leave it out on a narrow terminal (tsv, csv and json always have it)."""


@dataclass
class Record:
    """One object: a receipt, a user, a checkpoint."""

    data: Mapping[str, Any]
    title: str
    numeric: Sequence[str] = ()


@dataclass
class Listing:
    """Rows of one shape. ``name`` is the rows' key in a JSON document, ``meta`` what goes
    beside them (totals, the next cursor), ``note`` a line for a person after the rows (a
    table shows it; the other formats say it on stderr)."""

    rows: Iterable[Mapping[str, Any]]
    columns: Sequence[Column]
    title: str
    name: str
    meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(default_factory=dict)
    """Read once the rows have been written (a page knows its cursor only then)."""
    footer: Mapping[str, Any] | None = None
    styles: Mapping[str, str] | None = None
    note: str | Callable[[], str | None] | None = None
    streams: bool = False
    """Rows may be many: tsv, csv and jsonl write them as they come."""

    def resolved_meta(self) -> Mapping[str, Any]:
        return self.meta() if callable(self.meta) else self.meta

    def resolved_note(self) -> str | None:
        return self.note() if callable(self.note) else self.note


class Output:
    """Writes one command's data to the environment's stdout (or a file) in one format."""

    def __init__(
        self,
        env: Environment,
        fmt: Format,
        *,
        raw_csv: bool = False,
        stream: TextIO | None = None,
        json_alias: bool = False,
    ) -> None:
        self.env = env
        self.format = fmt
        self.json_alias = json_alias
        """--json rather than --format json: JSON lines for a listing that streams."""
        self.raw_csv = raw_csv
        self.stream = stream or env.out
        self._parts = 0

    # The shapes a command hands over.

    def record(self, record: Record) -> None:
        fmt = self.format
        if fmt in (Format.JSON, Format.JSONL):
            self._json(self._with_notices(to_json(record.data)))
        elif fmt is Format.CSV:
            self._csv([dict(record.data)], list(record.data))
        elif fmt is Format.TSV:
            self._separate()
            self._write(
                "".join(f"{key}\t{tsv_cell(value)}\n" for key, value in record.data.items())
            )
        else:
            from walletctl.cli import tables

            self._table_text(tables.record(self.env, record))

    def committed(self, record: Record) -> None:
        """What a posting that committed did (a receipt, a filed request). It is in the
        ledger whatever happens now, so nothing here may turn it into a failure: if the
        chosen format cannot be rendered, the receipt is written as plain ``field<TAB>value``
        lines, and failing that its transaction goes to stderr. (A closed pipe still ends the
        run quietly, exit 0.)"""
        try:
            self.record(record)
            self.stream.flush()
        except BrokenPipeError:
            raise
        except Exception as exc:
            lines = "".join(f"{key}\t{tsv_cell(value)}\n" for key, value in record.data.items())
            try:
                self.stream.write(lines)
                self.stream.flush()
            except BrokenPipeError:
                raise
            except Exception:
                self.env.message(lines.encode("ascii", "backslashreplace").decode("ascii"))
            self.env.message(
                f"walletctl: note: the receipt was written as plain text ({type(exc).__name__})"
            )

    def listing(self, listing: Listing) -> int:
        """Returns the number of rows written."""
        fmt = self.format
        if fmt is Format.JSON and self.json_alias and listing.streams:
            fmt = Format.JSONL
        count = 0
        if fmt is Format.JSON:
            rows = [to_json(row) for row in listing.rows]
            count = len(rows)
            document = {**to_json(listing.resolved_meta()), listing.name: rows}
            self._json(self._with_notices(document))
        elif fmt is Format.JSONL:
            for row in listing.rows:
                self._json(to_json(row))
                count += 1
        elif fmt is Format.CSV:
            count = self._csv(listing.rows, [column.key for column in listing.columns])
        elif fmt is Format.TSV:
            self._separate()
            self._write("\t".join(column.key for column in listing.columns) + "\n")
            for row in listing.rows:
                self._write("\t".join(tsv_cell(row.get(c.key)) for c in listing.columns) + "\n")
                count += 1
        else:
            from walletctl.cli import tables

            rows = list(listing.rows)
            count = len(rows)
            self._table_text(tables.listing(self.env, listing, rows, listing.resolved_note()))
            return count
        note = listing.resolved_note()
        if note:
            self.env.message(note)
        return count

    def document(self, record: Record, listing: Listing, *, show_record: bool = True) -> None:
        """An object with rows inside it (a transaction and its entries, a user and their
        balances, reconcile and its checks). json: one object; jsonl and csv: the rows, each
        with the object's fields; tsv and table: the object, then the rows."""
        fmt = self.format
        if fmt is Format.JSON:
            rows = [to_json(row) for row in listing.rows]
            document = {**to_json(record.data), listing.name: rows}
            self._json(self._with_notices(document))
        elif fmt in (Format.JSONL, Format.CSV):
            merged = [{**record.data, **row} for row in listing.rows]
            keys = list(dict.fromkeys([*record.data, *(c.key for c in listing.columns)]))
            if fmt is Format.CSV:
                self._csv(merged, keys)
            else:
                for row in merged:
                    self._json(to_json(row))
        else:
            if show_record:
                self.record(record)
            self.listing(listing)

    def check_sections(self, names: Sequence[str]) -> None:
        """Refuse, before any work is done, a format that cannot hold several listings."""
        if self.format is Format.CSV:
            raise InvalidInput(
                f"this prints several tables ({', '.join(names)}); CSV holds one: use "
                "--format table, tsv, json or jsonl"
            )

    def sections(
        self, listings: Sequence[Listing], *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Several listings of different shapes (policy show, demo): json gives one object
        with each under its name; jsonl one line per row with a ``section`` field; table and
        tsv one after the other. CSV has one header per file, so it is refused."""
        fmt = self.format
        if fmt is Format.JSON:
            document = {**to_json(meta or {})}
            for listing in listings:
                document[listing.name] = [to_json(row) for row in listing.rows]
            self._json(self._with_notices(document))
        elif fmt is Format.JSONL:
            for listing in listings:
                for row in listing.rows:
                    self._json({"section": listing.name, **to_json(row)})
        elif fmt is Format.CSV:
            self.check_sections([listing.name for listing in listings])
        else:
            for listing in listings:
                self.listing(listing)

    # Writers.

    def _with_notices(self, document: dict[str, Any]) -> dict[str, Any]:
        # What the environment says of the whole report (where it was read: read_from), then
        # its notices: never over a field of the document's own.
        extra = {
            key: to_json(value)
            for key, value in self.env.report_fields.items()
            if key not in document
        }
        if self.env.notices and "notices" not in document:
            extra["notices"] = list(self.env.notices)
        return {**document, **extra} if extra else document

    def _json(self, value: Any) -> None:
        self._write(json.dumps(value, ensure_ascii=not self.env.stdout_is_unicode) + "\n")

    def _csv(self, rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> int:
        writer = csv.writer(self.stream, lineterminator="\n")
        writer.writerow(keys)
        count = 0
        for row in rows:
            writer.writerow([csv_cell(row.get(key), raw=self.raw_csv) for key in keys])
            count += 1
        return count

    def _separate(self) -> None:
        # Two parts of one tsv document (an object, then its rows) get a blank line between.
        if self._parts:
            self._write("\n")
        self._parts += 1

    def _table_text(self, text: str) -> None:
        if self.stream is self.env.out:
            self.env.page(text)
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        self.stream.write(text)


# Values, per format.


def to_json(value: Any) -> Any:
    """A view's value as JSON: times ISO 8601 in UTC; everything else as it is."""
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def text(value: Any) -> str:
    """A value as one line of text (csv, tsv): no value is a blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(to_json(value), ensure_ascii=False)
    return str(value)


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_cell(value: Any) -> str:
    """A tsv field: a tab or line break inside it would break the columns, so it is
    written as an escape (and a backslash doubled), as PostgreSQL's text COPY does."""
    return text(value).translate(_TSV_ESCAPES)


def csv_cell(value: Any, *, raw: bool = False) -> str:
    """A value for a CSV cell (the csv module quotes what needs quoting). Unless ``raw``,
    a cell a spreadsheet would run as a formula gets a leading ' (walletctl.core.csv_cells
    has the rule)."""
    if raw:
        return text(value)
    from walletctl.core.csv_cells import neutralised

    return neutralised(text(value))


def table_time(value: datetime) -> str:
    """A time in a table: ISO 8601 in UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
