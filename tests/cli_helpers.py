"""Running walletctl the way users do: through CliRunner, or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import typer.main
from typer.testing import CliRunner, Result

from walletctl.cli.app import app


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str


class Cli:
    """walletctl in-process, against one database, with a fixed actor and no config file."""

    def __init__(self, database_url: str, env: Mapping[str, str] | None = None) -> None:
        self.env = {
            "WALLETCTL_DATABASE_URL": database_url,
            "WALLETCTL_ACTOR": "tester",
            "WALLETCTL_CONFIG": os.devnull,  # no config file
            **(env or {}),
        }
        self.runner = CliRunner(env=self.env)

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(app, list(args), input=input)


def run_process(
    *args: str, env: Mapping[str, str], input: str | None = None, timeout: float = 120
) -> Run:
    """walletctl as a separate process: the real entry point, real pipes."""
    completed = subprocess.run(
        [sys.executable, "-m", "walletctl", *args],
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)


def leaf_commands() -> list[tuple[str, Any]]:
    """Every command walletctl has, by its full name (``user list``), with its click
    command."""
    found: list[tuple[str, Any]] = []

    def walk(group: Any, prefix: str) -> None:
        for name, sub in group.commands.items():
            path = f"{prefix}{name}"
            if hasattr(sub, "commands"):
                walk(sub, f"{path} ")
            else:
                found.append((path, sub))

    walk(typer.main.get_command(app), "")
    return found
