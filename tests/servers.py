"""Servers a test (or a benchmark) starts for itself: a PostgreSQL primary with a streaming
standby, and PgBouncer, each on a free local port, each stopped at the end even on failure.

PostgreSQL and PgBouncer refuse to run as root, so as root they run as the ``postgres`` OS
user (``runuser``), in a folder made for them under the temp dir; otherwise as the user
running the tests. Binaries: ``WALLETCTL_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin`` (Debian's layout), else ``pg_config --bindir``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SERVER_ACCOUNT = "postgres"


def pg_bindir() -> Path:
    override = os.environ.get("WALLETCTL_PG_BIN")
    if override:
        return Path(override)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name)
    )
    if debian:
        return debian[-1]
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


def _as_server_account(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_ACCOUNT, "--", *command]


def _run(command: list[str], *, timeout: float = 120) -> None:
    done = subprocess.run(
        _as_server_account(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


def free_port() -> int:
    """A TCP port nothing listens on right now (the server that takes it may still lose a
    race with another suite: starting retries on another port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scratch_folder(prefix: str) -> Path:
    """A new folder under the temp dir the servers' account owns (mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_ACCOUNT)
        os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


@dataclass
class Server:
    """A PostgreSQL server of a test: its data folder, port and socket folder."""

    data: Path
    port: int
    socket_dir: Path
    log: Path
    running: bool = field(default=False)

    def url(self, database: str = "postgres", user: str = SERVER_ACCOUNT) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        pg_ctl = str(pg_bindir() / "pg_ctl")
        _run([pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if not self.running:
            return
        _run([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
        self.running = False


# Fast and small: these servers hold a few test databases for a few seconds.
_TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "60",
    "shared_buffers": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "wal_writer_delay": "10ms",
    "full_page_writes": "off",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
}


def _configure(data: Path, port: int, socket_dir: Path, settings: dict[str, str]) -> None:
    lines = [f"port = {port}", f"unix_socket_directories = '{socket_dir}'"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# walletctl tests\n" + "\n".join(lines) + "\n")


def _start_on_a_free_port(
    folder: Path, name: str, prepare: list[str], settings: dict[str, str]
) -> Server:
    """Create (``prepare``: initdb or pg_basebackup into folder/name) and start a server,
    on another port if the one picked was taken meanwhile."""
    data = folder / name
    socket_dir = folder / f"{name}-socket"
    for attempt in range(5):
        shutil.rmtree(data, ignore_errors=True)
        _run([*prepare, "-D", str(data)])
        for made in (socket_dir,):
            made.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                account = pwd.getpwnam(SERVER_ACCOUNT)
                os.chown(made, account.pw_uid, account.pw_gid)
        server = Server(data, free_port(), socket_dir, folder / f"{name}.log")
        _configure(data, server.port, socket_dir, settings)
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def start_primary(folder: Path, settings: dict[str, str] | None = None) -> Server:
    """A new primary (trust authentication, TCP on 127.0.0.1 only) in folder/primary."""
    prepare = [str(pg_bindir() / "initdb"), "--auth=trust", "-U", SERVER_ACCOUNT, "-E", "UTF8"]
    return _start_on_a_free_port(folder, "primary", prepare, settings or _TEST_SETTINGS)


def start_standby(
    primary: Server, folder: Path, name: str = "standby", settings: dict[str, str] | None = None
) -> Server:
    """A streaming standby of ``primary`` (pg_basebackup -R), in folder/<name>."""
    prepare = [
        str(pg_bindir() / "pg_basebackup"),
        "-h", "127.0.0.1", "-p", str(primary.port), "-U", SERVER_ACCOUNT,
        "-R", "-X", "stream", "-c", "fast",
    ]  # fmt: skip
    return _start_on_a_free_port(folder, name, prepare, settings or _TEST_SETTINGS)


def wait_for_replay(primary_url: str, standby_url: str, timeout: float = 60) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(primary_url, autocommit=True) as primary:
        row = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby_url, autocommit=True) as standby:
        while True:
            done = standby.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
            ).fetchone()
            if done and done[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not replay up to {row[0]} in {timeout} s")
            time.sleep(0.02)


@dataclass
class ReplicatedServers:
    folder: Path
    primary: Server
    standby: Server

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            with suppress(Exception):
                server.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def primary_and_standby(
    settings: dict[str, str] | None = None,
) -> Iterator[ReplicatedServers]:
    """A primary and its streaming standby, stopped and removed at the end (and at exit, if
    the process is interrupted before the end)."""
    folder = scratch_folder("walletctl-replication-")
    servers: ReplicatedServers | None = None
    try:
        primary = start_primary(folder, settings)
        servers = ReplicatedServers(folder, primary, primary)
        atexit.register(servers.stop)
        servers.standby = start_standby(primary, folder, settings=settings)
        yield servers
    finally:
        if servers is not None:
            servers.stop()
            atexit.unregister(servers.stop)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PgBouncer:
    """A PgBouncer in front of one PostgreSQL server, every database, any user (its
    authentication is trust; the server authenticates the user as it would directly)."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    def url(self, database: str, user: str = SERVER_ACCOUNT) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def route(self, url: str) -> str:
        """The same database and user as ``url``, through this PgBouncer."""
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(url)
        return self.url(str(params.get("dbname", "postgres")), str(params.get("user", "postgres")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


PGBOUNCER_SETTINGS = {
    "pool_mode": "transaction",
    "default_pool_size": "8",
    "max_client_conn": "400",
}


def start_pgbouncer(
    server_host: str, server_port: int, settings: dict[str, str] | None = None
) -> PgBouncer:
    """PgBouncer (the Debian package's binary) on a free local port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    folder = scratch_folder("walletctl-pgbouncer-")
    auth_file = folder / "users.txt"
    auth_file.write_text(f'"{SERVER_ACCOUNT}" ""\n')
    for attempt in range(5):
        port = free_port()
        ini = folder / "pgbouncer.ini"
        lines = [
            "[databases]",
            f"* = host={server_host} port={server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {auth_file}",
            # Users other than the auth file's are looked up on the server, as this one.
            f"auth_user = {SERVER_ACCOUNT}",
            f"logfile = {folder / 'pgbouncer.log'}",
            f"pidfile = {folder / 'pgbouncer.pid'}",
            *(f"{name} = {value}" for name, value in (settings or PGBOUNCER_SETTINGS).items()),
        ]
        ini.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_ACCOUNT)
            for path in (ini, auth_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        # Started as the server account directly (not through runuser, which on a signal
        # waits two seconds before it passes on a kill), so stop() ends PgBouncer itself.
        account = {"user": SERVER_ACCOUNT, "group": SERVER_ACCOUNT, "extra_groups": []}
        process = subprocess.Popen(
            [binary, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **(account if os.geteuid() == 0 else {}),  # type: ignore[arg-type]
        )
        bouncer = PgBouncer(folder, port, process)
        if _accepts(port, process):
            return bouncer
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if attempt == 4:
            log = folder / "pgbouncer.log"
            detail = log.read_text() if log.exists() else ""
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"pgbouncer did not start:\n{detail}")
    raise AssertionError("unreachable")


def _accepts(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False
