"""The environment a command runs in: streams, terminal, colour, width, pager, the output
format chosen, and whether messages are wanted. One object, decided once per run.

As in httpie's ``Environment`` (httpie/context.py): by default it describes the real
process; every attribute can be given instead, which is how tests simulate a 40-column
colour terminal, a closed pipe or an ASCII-only stdout without a pseudo-terminal. Output
(walletctl.cli.output), prompts and the error handler read it; nothing else looks at
sys.stdout, os.environ["NO_COLOR"] or the terminal size.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_PAGER = "less -FRX"


@dataclass
class Environment:
    """Unset attributes (None) are read from the process when the run starts (``bind``)."""

    stdin: TextIO | None = None
    stdout: TextIO | None = None
    stderr: TextIO | None = None
    stdin_isatty: bool | None = None
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None
    width: int | None = None
    """Columns of the terminal (COLUMNS, else the terminal's, else 80)."""
    height: int | None = None
    no_color: bool | None = None
    """NO_COLOR set (https://no-color.org): tables, but no colour."""
    pager: str | None = None
    """The pager command for long output on a terminal (WALLETCTL_PAGER, PAGER, less);
    empty: none."""
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    quiet: bool = False
    """--quiet: no messages on stderr (errors still)."""
    errors_as_json: bool = False
    """Errors as one JSON object on stderr (--format json/jsonl, --json)."""
    use_pager: bool = True
    """--no-pager turns it off."""
    notices: list[str] = field(default_factory=list)
    """Notes about the whole report (e.g. a replica's lag): a line on stderr, and a
    ``notices`` field of a --format json document."""
    report_fields: dict[str, Any] = field(default_factory=dict)
    """Fields about the whole report that its --format json document carries (``read_from``:
    the standby it read and how far behind it was)."""

    def bind(self) -> Environment:
        """Fill in what was not given from the real process. Stdout and stderr that cannot
        encode a character write an escape instead of failing (a posting that committed
        must never end in an encoding error)."""
        if self.stdin is None:
            self.stdin = sys.stdin
        if self.stdout is None:
            self.stdout = sys.stdout
        if self.stderr is None:
            self.stderr = sys.stderr
        for stream in (self.stdout, self.stderr):
            if isinstance(stream, io.TextIOWrapper):
                with suppress(ValueError, OSError):  # closed, or not reconfigurable
                    stream.reconfigure(errors="backslashreplace")
        if self.stdin_isatty is None:
            self.stdin_isatty = _isatty(self.stdin)
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)
        if self.width is None or self.height is None:
            size = shutil.get_terminal_size((80, 24))
            self.width = self.width or _positive(self.environ.get("COLUMNS")) or size.columns
            self.height = self.height or _positive(self.environ.get("LINES")) or size.lines
        if self.no_color is None:
            self.no_color = bool(self.environ.get("NO_COLOR"))
        if self.pager is None:
            self.pager = self.environ.get("WALLETCTL_PAGER", self.environ.get("PAGER"))
            if self.pager is None:
                self.pager = DEFAULT_PAGER
        return self

    @property
    def out(self) -> TextIO:
        assert self.stdout is not None, "Environment.bind() first"
        return self.stdout

    @property
    def err(self) -> TextIO:
        assert self.stderr is not None, "Environment.bind() first"
        return self.stderr

    @property
    def stdout_is_unicode(self) -> bool:
        encoding = (getattr(self.stdout, "encoding", None) or "utf-8").lower().replace("-", "")
        return encoding.startswith("utf")

    def message(self, text: str) -> None:
        """A line for the person running the command, on stderr (not under --quiet)."""
        if not self.quiet:
            self._write_err(text)

    def notice(self, text: str) -> None:
        """A note about the whole report: on stderr now, and in a JSON document."""
        self.notices.append(text)
        self._write_err(f"walletctl: note: {text}")

    def error_line(self, text: str) -> None:
        self._write_err(f"walletctl: error: {text}")

    def _write_err(self, text: str) -> None:
        with suppress(BrokenPipeError, ValueError):  # stderr closed: nowhere left to say it
            print(text, file=self.err, flush=True)

    def page(self, text: str) -> None:
        """Write ``text`` to stdout, through the pager when it is longer than the terminal
        and stdout is one."""
        lines = text.count("\n")
        if (
            self.stdout_isatty
            and self.use_pager
            and self.pager
            and self.height is not None
            and lines >= self.height
        ):
            self.out.flush()
            try:
                subprocess.run(
                    shlex.split(self.pager),
                    input=text.encode("utf-8", "backslashreplace"),
                    check=False,
                    env={**os.environ, "LESSCHARSET": "utf-8"},
                )
            except (OSError, ValueError):  # no such pager: write it ourselves
                pass
            else:
                return
        self.out.write(text)
        self.out.flush()


def _isatty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, OSError):
        return False


def _positive(text: str | None) -> int | None:
    if text and text.strip().isdigit() and int(text) > 0:
        return int(text)
    return None


_current = [Environment()]


def current() -> Environment:
    """The environment of the run in progress (the process's until a run binds one)."""
    return _current[-1]


def use(environment: Environment) -> Environment:
    """Make ``environment`` the run's (bound to the process where not given)."""
    _current[-1] = environment.bind()
    return _current[-1]
