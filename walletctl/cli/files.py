"""Files walletctl writes (reports, exports, metrics): whole or not at all.

A regular file is written beside itself and renamed over the old one. What is not a
regular file is written into as it is, as a shell's ``>`` would: a symbolic link is
followed (the link stays, its target is written), and a device or named pipe
(``/dev/null``, ``/dev/stdout``, a FIFO a reader waits on) is opened and written, never
replaced by a file of the same name (as root, renaming over ``/dev/null`` would replace the
machine's own device).
"""

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
    do not tell, for root or on a read-only mount), and the path is not a folder; a device
    or named pipe is writable by its permissions (opening a pipe would wait for a reader)."""
    target, directory = _destination(path, option)
    if directory is None:
        if not os.access(target, os.W_OK):
            raise InvalidInput(f"{option}: cannot write {path}: Permission denied")
        return
    handle, temporary = _temporary_beside(target, directory, option)
    os.close(handle)
    os.unlink(temporary)


def _destination(path: Path, option: str) -> tuple[Path, Path | None]:
    """Where writing ``path`` lands (a symbolic link's target, a dangling link's too), and
    the folder a temporary file goes in; no folder for a device or named pipe, which is
    written into as it is. Refused: a folder, or a folder that does not exist."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file() and not target.is_dir():
        return target, None  # a device, named pipe or socket
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidInput(f"{option}: directory {directory} does not exist")
    if target.is_dir():
        raise InvalidInput(f"{option}: {path} is a directory")
    return target, directory


def _temporary_beside(target: Path, directory: Path, option: str) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write in {directory}: {exc.strerror}") from None


@contextmanager
def atomic_text_file(path: Path, option: str) -> Iterator[TextIO]:
    """Write to a temporary file beside ``path``, renamed over it once complete: a reader
    (a spreadsheet, node_exporter) never sees half a file, and a failure leaves none. A
    device or named pipe is written into directly (see the module's docstring)."""
    target, directory = _destination(path, option)
    if directory is None:
        with _written_in_place(target, path, option) as out:
            yield out
        return
    handle, temporary = _temporary_beside(target, directory, option)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextmanager
def _written_in_place(target: Path, path: Path, option: str) -> Iterator[TextIO]:
    try:
        with open(target, "w", encoding="utf-8", newline="") as out:
            yield out
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write {path}: {exc.strerror}") from None
