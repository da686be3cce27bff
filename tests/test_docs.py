"""The README documents every command and every option (as sqlite-utils' tests/test_docs.py
does for its docs), and the CLI stays a thin skin: command modules never import each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from walletctl.cli.app import app

from .cli_helpers import leaf_commands

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


COMMANDS = leaf_commands()


def _mentions(option: str) -> bool:
    """The option in the README as a word of its own (in a code span)."""
    return re.search(rf"`[^`\n]*(?<![\w-]){re.escape(option)}(?![\w-])[^`\n]*`", README) is not None


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_and_option_is_in_the_readme(name: str, command: Any) -> None:
    assert re.search(rf"`{re.escape(name)}[ `]", README), f"`{name}` is not in the README"
    for parameter in command.params:
        for option in parameter.opts:
            if option.startswith("--") and option != "--help":
                assert _mentions(option), f"{name}: {option} is not in the README"
    assert command.help, f"{name} has no help"
    assert "Exit codes:" in (command.epilog or ""), f"{name}: its help lists no exit codes"


def test_the_global_options_are_in_the_readme() -> None:
    root = typer.main.get_command(app)
    for parameter in root.params:
        for option in parameter.opts:
            if option.startswith("--") and option != "--help":
                assert _mentions(option), option


COMMAND_MODULES = sorted((ROOT / "walletctl" / "cli").glob("*_commands.py"))


@pytest.mark.parametrize("module", COMMAND_MODULES, ids=[path.stem for path in COMMAND_MODULES])
def test_command_modules_never_import_each_other(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    others = {f"walletctl.cli.{path.stem}" for path in COMMAND_MODULES} - {
        f"walletctl.cli.{module.stem}"
    }
    assert not imported & others, f"{module.name} imports {imported & others}"


def test_the_core_never_prints_nor_imports_the_cli() -> None:
    for path in (ROOT / "walletctl" / "core").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "print(" not in source, path
        assert not re.search(r"^(from|import) (typer|rich|walletctl\.cli)", source, re.M), path
