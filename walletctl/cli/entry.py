"""The console script. Kept tiny: `walletctl --version` answers before Typer is imported."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] in (["--version"], ["-V"]):
        from walletctl import __version__

        print(f"walletctl {__version__}")
        return
    from walletctl.cli.app import app

    app()
