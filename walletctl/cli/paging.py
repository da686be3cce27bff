"""A page of a listing: at most ``limit`` rows, and whether more follow (one row more is
read to know), with the cursor that continues after the last row shown."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class Page:
    def __init__(
        self, rows: Iterable[Mapping[str, Any]], limit: int | None, cursor_key: str
    ) -> None:
        self._rows = rows
        self.limit = limit
        self.cursor_key = cursor_key
        self.shown = 0
        self.more = False
        self._last: Mapping[str, Any] | None = None

    @staticmethod
    def fetch(limit: int | None) -> int | None:
        """How many rows to ask the database for: one more than the page holds."""
        return None if limit is None else limit + 1

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for row in self._rows:
            if self.limit is not None and self.shown == self.limit:
                self.more = True
                break
            self.shown += 1
            self._last = row
            yield row

    @property
    def next_after(self) -> Any:
        """The cursor for the next page (None: this was the last)."""
        return self._last[self.cursor_key] if self.more and self._last is not None else None

    def note(
        self, what: str, total: int | None = None, *, everything: str = "--all for every one"
    ) -> str | None:
        """A line for a person when the page is not everything."""
        if not self.more:
            return None
        of = f" of {total:,}" if total is not None else ""
        return (
            f"{self.shown:,}{of} {what} shown; the next page: --after {self.next_after} "
            f"(or {everything})."
        )
