"""Options shared by several commands, and the parsing of what people type into them."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from walletctl.errors import InvalidInput

DEFAULT_ASSET = "GOLD"

AssetOption = Annotated[
    str,
    typer.Option("--asset", "-a", help="Asset code.", envvar="WALLETCTL_ASSET"),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        "-k",
        help="Idempotency key. Retrying with the same key never posts twice. "
        "Without it walletctl makes one and prints it.",
        show_default=False,
    ),
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", "-r", help="Why: stored on the transaction.")
]
ReasonFilter = Annotated[
    str | None,
    typer.Option(
        "--reason", help="Only transactions with exactly this reason.", show_default=False
    ),
]
ActorFilter = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Only transactions posted by this database role (the recorded actor).",
        show_default=False,
    ),
]
OnBehalfOfFilter = Annotated[
    str | None,
    typer.Option(
        "--on-behalf-of",
        help="Only transactions carrying this 'on behalf of' note (a posting's --actor).",
        show_default=False,
    ),
]
KindFilter = Annotated[
    str | None,
    typer.Option("--kind", help="Only topup, bonus, spend or reversal.", show_default=False),
]
AssetFilter = Annotated[
    str | None, typer.Option("--asset", "-a", help="Only this asset.", show_default=False)
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        help="At most this many rows (default: 100 in a table; everything in tsv, csv and "
        "JSON, which programs read).",
        show_default=False,
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every row: no --limit.")]
NewestFirstOption = Annotated[bool, typer.Option("--newest-first", help="The most recent first.")]
DEFAULT_TABLE_LIMIT = 100
ActorOption = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help=(
            "On whose behalf (default: WALLETCTL_ACTOR): a note stored beside the actor, "
            "which is always the database role logged in."
        ),
        show_default=False,
    ),
]
YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Confirm an amount above the confirmation threshold."),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Show what would be posted (with the balance after) and write nothing."
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="From this time on (ISO 8601: 2026-11-01 or "
        "2026-11-01T12:00:00+01:00; UTC when no offset is given).",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="Before this time (same format as --since).", show_default=False),
]

FileOption = Annotated[
    str | None,
    typer.Option(
        "--file",
        "-f",
        help="Post every row of this file (CSV with a header, or JSON lines; - for stdin): "
        "fields user, amount, and optionally asset, key, reason.",
        show_default=False,
    ),
]
FileFormatOption = Annotated[
    str | None,
    typer.Option(
        "--file-format",
        help="The --file's format: csv or jsonl (default: from its name or its content).",
        show_default=False,
    ),
]
KeyPrefixOption = Annotated[
    str | None,
    typer.Option(
        "--key-prefix",
        help="Key each row P:<hash of its user, asset, amount and which occurrence of them it "
        "is> (for files without a key column): adding, removing or moving other rows never "
        "changes a row's key.",
        show_default=False,
    ),
]
AllowUnterminatedOption = Annotated[
    bool,
    typer.Option(
        "--allow-unterminated",
        help="Accept stdin whose last line has no newline at its end (by default refused as "
        "possibly cut short).",
    ),
]
ValidateOnlyOption = Annotated[
    bool, typer.Option("--validate-only", help="Check every row, post nothing.")
]
SkipInvalidOption = Annotated[
    bool, typer.Option("--skip-invalid", help="Post the valid rows even if some are invalid.")
]
AtomicOption = Annotated[
    bool,
    typer.Option(
        "--atomic",
        help="All rows or none: one database transaction; the first row that cannot post "
        "stops the file, and nothing is written.",
    ),
]
ReportOption = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Write each row's outcome here (CSV, or JSON lines for .jsonl).",
        show_default=False,
    ),
]
MaxTotalOption = Annotated[
    int | None,
    typer.Option(
        "--max-total",
        min=1,
        help="Refuse the file (exit 8) if its rows add up to more than this.",
        show_default=False,
    ),
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", min=1, max=100_000, help="Rows per database transaction.")
]
JobsOption = Annotated[
    int,
    typer.Option(
        "--jobs",
        min=1,
        max=16,
        help="Connections posting at once; each user's rows stay on one of them, in file order.",
    ),
]


def row_limit(limit: int | None, every: bool, *, table: bool) -> int | None:
    """How many rows a listing shows: --limit, or all with --all; by default a page of
    DEFAULT_TABLE_LIMIT in a table (a person scrolls), everything in the formats programs
    read (a script must never get a silently shortened listing)."""
    if every and limit is not None:
        raise InvalidInput("--all and --limit cannot be used together")
    if every:
        return None
    if limit is not None:
        return limit
    return DEFAULT_TABLE_LIMIT if table else None


def parse_transaction_id(text: str, what: str = "transaction id") -> int:
    """A transaction id as typed: a positive whole number."""
    from walletctl.core import validation

    cleaned = text.strip()
    if not cleaned.isascii() or not cleaned.isdigit():
        raise InvalidInput(f"{what} must be a positive whole number, got {text[:60]!r}")
    return validation.transaction_id(int(cleaned))


def on_behalf_of(option: str | None) -> str | None:
    """Whom a posting is for, as the operator says: --actor or WALLETCTL_ACTOR. Only a note:
    the actor the ledger records is the database identity that logged in."""
    if option is not None:
        return option
    return os.environ.get("WALLETCTL_ACTOR") or None


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or time; without an offset it is read as UTC."""
    if text is None:
        return None
    cleaned = text.strip()
    try:
        if _DATE_ONLY.fullmatch(cleaned):
            value = datetime.fromisoformat(cleaned)
        else:
            value = datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{option} must be an ISO 8601 date or time such as 2026-11-01 or "
            f"2026-11-01T12:00:00Z, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
