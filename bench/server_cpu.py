"""CPU time of a PostgreSQL backend, read from /proc (Linux, server on this machine).

On this 2-core machine the Python clients share the CPU with the server, so throughput
alone understates what the server could carry; CPU seconds per posting do not depend on
who else is running. A benchmark client reads its own backend's CPU time before and after
its run, while the connection is still open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(conn: psycopg.Connection[Any]) -> float:
    """User + system CPU seconds of the backend serving ``conn`` so far."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    text = Path(f"/proc/{row[0]}/stat").read_text()
    # The command name is in parentheses and may hold spaces: count fields after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS
