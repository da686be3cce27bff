"""The README's shell blocks run as written, in order, on a fresh machine (as sqlite-utils
checks its documentation): the quick start and "Everyday use" cannot drift again.

Every ```sh block runs, in README order, in ONE bash process (like one terminal session:
the quick start's `. .venv/bin/activate` holds for the blocks after it), with `set -e`
(any line that fails fails the test), in a fresh empty folder, with a fresh HOME, no
config file, no database URL, on a fresh embedded data folder. A block right after a line
`<!-- readme-test: skip -->` is not run (the test-suite and benchmark commands, and
commands that need a real multi-role server).

Two lines are adapted, and only these (the test fails if either is missing, so a README
change has to come here too):
- `python3 -m venv .venv` runs as `<this interpreter> -m venv --without-pip .venv`: a
  real virtualenv, without needing ensurepip or the network;
- `pip install .` writes `.venv/bin/walletctl`, a script that runs this checkout's
  walletctl with the interpreter the tests run under (installing would need the network
  and a build, which is CI's job in .ci/run, not this test's).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from . import embedded_helpers
from .embedded_helpers import IS_ROOT, OsUser, stop_quietly, user_folder

pytestmark = pytest.mark.embedded

open_tmp = embedded_helpers.open_tmp

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARKER = "<!-- readme-test: skip -->"
VENV_LINE = "python3 -m venv .venv"
INSTALL_LINE = "pip install ."


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```sh block not preceded by the skip marker."""
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```sh":
            end = lines.index("```", index + 1)
            skipped = index > 0 and lines[index - 1].strip() == SKIP_MARKER
            if not skipped:
                blocks.append((index + 1, "\n".join(lines[index + 1 : end])))
            index = end
        index += 1
    return blocks


def test_the_block_extraction_honours_the_skip_marker() -> None:
    text = "a\n```sh\necho one\n```\n<!-- readme-test: skip -->\n```sh\nexit 1\n```\n"
    assert shell_blocks(text) == [(2, "echo one")]


def _script(python: str, pythonpath: str) -> str:
    """The README's blocks as one bash script, with the two adaptations."""
    used = {VENV_LINE: 0, INSTALL_LINE: 0}
    wrapper = (
        "#!/bin/sh\n"
        f'PYTHONPATH={shlex.quote(pythonpath)} exec {shlex.quote(python)} -m walletctl "$@"\n'
    )
    parts = ["set -eo pipefail"]
    for number, block in shell_blocks(README.read_text(encoding="utf-8")):
        parts.append(f"echo '### README.md line {number}' >&2")
        for line in block.splitlines():
            stripped = line.strip()
            if stripped == VENV_LINE:
                used[VENV_LINE] += 1
                parts.append(f"{shlex.quote(python)} -m venv --without-pip .venv")
            elif stripped == INSTALL_LINE:
                used[INSTALL_LINE] += 1
                parts.append(
                    f"printf %s {shlex.quote(wrapper)} > .venv/bin/walletctl && "
                    "chmod +x .venv/bin/walletctl"
                )
            else:
                parts.append(line)
    assert used == {VENV_LINE: 1, INSTALL_LINE: 1}, f"the quick start changed: {used}"
    return "\n".join(parts) + "\n"


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"a README line failed (exit {result.returncode}); the last block started:\n"
        + result.stderr[result.stderr.rfind("### README.md") :]
    )
    # The quick start's demo ran, on a server it created, and said where the data lives.
    assert "demo-user\tGOLD\t430" in result.stdout
    assert "created and started the embedded PostgreSQL server" in result.stderr
    # Everyday use: the spend with a key was replayed, not posted twice; reconcile passed.
    assert "replayed: key shop-order-77" in result.stderr
    assert "kind\treversal" in result.stdout
    assert "FAIL" not in result.stdout


def _clean_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_the_readme_runs_as_written_as_this_user(open_tmp: Path) -> None:
    home = open_tmp / "home"
    work = open_tmp / "work"
    home.mkdir()
    work.mkdir()
    # This checkout first, then whatever PYTHONPATH this test run was given.
    repo = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")])
    )
    env = _clean_env(home)
    # As root the default is /var/lib/walletctl, the machine's; a fresh one instead.
    data_dir = open_tmp / "data" if IS_ROOT else None
    if data_dir is not None:
        env["WALLETCTL_DATA_DIR"] = str(data_dir)
    try:
        result = subprocess.run(
            ["bash", "-c", _script(sys.executable, repo)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        _check(result)
        assert (work / "march.csv").is_file() and (work / ".venv" / "bin" / "activate").is_file()
    finally:
        stop_quietly(data_dir or home / ".local" / "share" / "walletctl")


def test_the_readme_runs_as_written_as_a_second_user(open_tmp: Path, other_user: OsUser) -> None:
    """A non-root user on a fresh HOME: the default data folder under it, as documented."""
    base = user_folder(open_tmp, other_user, "user", 0o755)
    home = user_folder(base, other_user, "home")
    work = user_folder(base, other_user, "work")
    script = base / "readme.sh"
    script.write_text(_script(other_user.python, other_user.pythonpath))
    script.chmod(0o644)
    environment = _clean_env(home)
    command = [
        "runuser",
        "-u",
        other_user.name,
        "--",
        "env",
        "-i",
        *(f"{key}={value}" for key, value in environment.items()),
        "bash",
        "-c",
        f"cd {shlex.quote(str(work))} && bash {shlex.quote(str(script))}",
    ]
    data_dir = home / ".local" / "share" / "walletctl"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        _check(result)
        assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    finally:
        stop_quietly(data_dir)


other_user = embedded_helpers.other_user
