"""Files walletctl writes (reports, exports, metrics): whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from walletctl.errors import InvalidInput


def check_writable(path: Path, option: str) -> None:
    """Fail now, not after the work, if ``path`` cannot be written as atomic_text_file
    writes it: its folder exists and takes a new file (tried for real: permissions alone
    do not tell, for root or on a read-only mount), and the path is not a folder."""
    directory = _folder(path, option)
    if path.is_dir():
        raise InvalidInput(f"{option}: {path} is a directory")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write in {directory}: {exc.strerror}") from None
    os.close(handle)
    os.unlink(temporary)


def _folder(path: Path, option: str) -> Path:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidInput(f"{option}: directory {directory} does not exist")
    return directory


@contextmanager
def atomic_text_file(path: Path, option: str) -> Iterator[TextIO]:
    """Write to a temporary file beside ``path``, renamed over it once complete: a reader
    (a spreadsheet, node_exporter) never sees half a file, and a failure leaves none."""
    directory = _folder(path, option)
    if path.is_dir():
        raise InvalidInput(f"{option}: {path} is a directory")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
