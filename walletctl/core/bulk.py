"""Bulk posting: files of top-ups, bonuses or spends, validated whole, posted in batches.

A file is CSV with a header, or JSON lines, with the fields user, amount, and optionally
asset, key and reason. Every row carries an idempotency key (its own, or ``P:<row>`` from a
key prefix), so running a file again, after any crash, posts exactly the rows that are
missing: the rest come back as replays.

Batches go to walletctl_post_batch (walletctl/sql/batch.sql), one database transaction
each, which gives every row the guarantees of a single posting through the same rules.
With ``atomic``, the whole file is one batch that posts entirely or not at all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from walletctl.core import validation
from walletctl.core.models import Connection, PostingKind
from walletctl.core.sqlerrors import KEY_CLAIMED_CONCURRENTLY, raise_translated
from walletctl.errors import ConcurrentRun, InvalidInput, WalletError
from walletctl.textrules import MAX_ID_LENGTH

FileFormat = Literal["csv", "jsonl"]
Outcome = Literal["posted", "replayed", "conflict", "insufficient", "not_found", "invalid"]
OUTCOMES: tuple[Outcome, ...] = (
    "posted",
    "replayed",
    "conflict",
    "insufficient",
    "not_found",
    "invalid",
)
FIELDS = ("user", "amount", "asset", "key", "reason")
DEFAULT_BATCH_SIZE = 5000
_BATCH_ATTEMPTS = 3
_FILE_LOCK_CLASS = 0x77_6C  # the first half of the two-int advisory lock: "wl"

BATCH_SQL = "SELECT * FROM walletctl_post_batch(%s, %s, %s, %s, %s, %s, %s, %s, %s)"


@dataclass(frozen=True, slots=True)
class BulkRow:
    """One valid row of a file. ``line`` is where it starts in the file (1-based)."""

    line: int
    user_id: str
    amount: int
    asset: str
    idempotency_key: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class InvalidRow:
    line: int
    error: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowOutcome:
    line: int
    outcome: Outcome
    user_id: str
    amount: int | None
    asset: str | None
    idempotency_key: str | None
    transaction_id: int | None = None
    balance_after: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedFile:
    rows: list[BulkRow]
    invalid: list[InvalidRow]
    digest: bytes
    """SHA-256 of the file's bytes: what the file lock is keyed on."""

    @property
    def total(self) -> int:
        return sum(row.amount for row in self.rows)


def _fields(record: Record) -> dict[str, Any]:
    return {} if isinstance(record, str) else dict(zip(FIELDS, record, strict=True))


def detect_format(name: str, text: str) -> FileFormat:
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return "jsonl" if first.startswith(("{", "[")) else "csv"


def parse_file(
    data: bytes,
    *,
    name: str,
    kind: PostingKind,
    default_asset: str | None,
    key_prefix: str | None,
    default_reason: str | None,
    fmt: FileFormat | None = None,
) -> ParsedFile:
    """Read and validate every row; nothing touches the database."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name}: not UTF-8 text (byte {exc.start})") from None
    if key_prefix is not None:
        validation.identifier(key_prefix, "key prefix")
    chosen = fmt or detect_format(name, text)
    records = _csv_records(text, name) if chosen == "csv" else _jsonl_records(text)
    rows: list[BulkRow] = []
    invalid: list[InvalidRow] = []
    first_line_of_key: dict[str, int] = {}
    validator = _RowValidator(kind, default_asset, key_prefix, default_reason)
    for number, (line, record) in enumerate(records, start=1):
        try:
            row = validator.row(line, number, record)
        except WalletError as exc:
            invalid.append(InvalidRow(line, str(exc), _fields(record)))
            continue
        earlier = first_line_of_key.setdefault(row.idempotency_key, line)
        if earlier != line:
            invalid.append(
                InvalidRow(
                    line,
                    f"idempotency key {row.idempotency_key} is also on line {earlier}",
                    _fields(record),
                )
            )
            continue
        rows.append(row)
    if not rows and not invalid:
        raise InvalidInput(f"{name}: no rows")
    return ParsedFile(rows, invalid, hashlib.sha256(data).digest())


# A record is (user, amount, asset, key, reason) as found in the file (None when absent),
# or a string saying why the line is not a record at all.
Record = tuple[Any, Any, Any, Any, Any] | str


def _csv_records(text: str, name: str) -> Iterator[tuple[int, Record]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    unknown = [field for field in header if field not in FIELDS]
    if unknown or "user" not in header or "amount" not in header or len(set(header)) < len(header):
        raise InvalidInput(
            f"{name}: the header must name user and amount (and may name asset, key, reason), "
            f"each once; got {', '.join(header) or 'nothing'}"
        )
    width = len(header)
    where = [header.index(field) if field in header else None for field in FIELDS]
    for values in reader:
        if not values:
            continue
        if len(values) != width:
            yield (
                reader.line_num,
                (
                    f"{len(values)} fields where the header names {width}"
                    if len(values) < width
                    else "more fields than the header names"
                ),
            )
            continue
        # The line the record ends on: its only line, unless a quoted field spans lines.
        yield (
            reader.line_num,
            tuple(  # type: ignore[misc]
                None if index is None else values[index] for index in where
            ),
        )


def _jsonl_records(text: str) -> Iterator[tuple[int, Record]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(record, dict):
            yield line, "not a JSON object"
            continue
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            yield line, f"unknown field(s): {', '.join(unknown)}"
            continue
        yield line, tuple(record.get(field) for field in FIELDS)  # type: ignore[misc]


class _RowValidator:
    """Validates rows. A file repeats its users, assets and reasons many times, and their
    checks are most of the time parsing takes: each distinct value is checked once."""

    def __init__(
        self,
        kind: PostingKind,
        default_asset: str | None,
        key_prefix: str | None,
        default_reason: str | None,
    ) -> None:
        self.reason_required = kind == "bonus"
        self.default_asset = default_asset
        self.key_prefix = key_prefix
        self.default_reason = default_reason
        self.users: set[str] = set()
        self.assets: set[str] = set()
        self.reasons: set[str | None] = set()

    def row(self, line: int, number: int, record: Record) -> BulkRow:
        if isinstance(record, str):
            raise InvalidInput(record)
        user, amount, asset, key, reason = record
        if isinstance(amount, str):
            parsed_amount = validation.parse_amount(amount)
        else:
            parsed_amount = validation.amount(amount)
        asset = asset or self.default_asset
        if not asset:
            raise InvalidInput("no asset: add an asset column or pass --asset")
        if key and self.key_prefix:
            raise InvalidInput("the row has a key and --key-prefix was given: use one of them")
        if key:
            key = validation.idempotency_key(key)
        elif self.key_prefix:
            # The prefix was checked once; ":<number>" adds nothing but length to check.
            key = f"{self.key_prefix}:{number}"
            if len(key) > MAX_ID_LENGTH:
                validation.idempotency_key(key)
        else:
            raise InvalidInput("no idempotency key: add a key column or pass --key-prefix")
        reason = reason or self.default_reason
        if user not in self.users:
            self.users.add(validation.user_id(user))
        if asset not in self.assets:
            self.assets.add(validation.asset_code(asset))
        if reason not in self.reasons:
            self.reasons.add(validation.reason(reason, required=self.reason_required))
        return BulkRow(line, user, parsed_amount, asset, key, reason or None)


class _StoppedByAnother(ConcurrentRun):
    """A connection of a parallel run stopped because another one failed."""


def try_lock_file(conn: Connection, kind: PostingKind, digest: bytes) -> bool:
    """Take the session lock for this file and kind; False if another run holds it."""
    key = int.from_bytes(hashlib.sha256(kind.encode() + digest).digest()[:4], "big", signed=True)
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_FILE_LOCK_CLASS, key)).fetchone()
    return bool(row and row[0])


def post_rows_in_parallel(
    connect: Callable[[], AbstractContextManager[Connection]],
    kind: PostingKind,
    rows: Sequence[BulkRow],
    *,
    on_behalf_of: str | None = None,
    jobs: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[RowOutcome]:
    """Post ``rows`` over ``jobs`` connections at once; returns the outcomes in file order.

    The rows are split by user: all of one user's rows go to one connection, in file order,
    so they apply in file order as they would on one connection, and no two connections
    ever wait for the same balance row."""
    if jobs < 1:
        raise InvalidInput("jobs must be at least 1")
    shards: list[list[BulkRow]] = [[] for _ in range(jobs)]
    for row in rows:
        shards[zlib.crc32(row.user_id.encode()) % jobs].append(row)
    stop = threading.Event()

    def run(shard: list[BulkRow]) -> list[RowOutcome]:
        with connect() as conn:
            try:
                return list(
                    post_rows(
                        conn,
                        kind,
                        shard,
                        on_behalf_of=on_behalf_of,
                        batch_size=batch_size,
                        progress=progress,
                        stop=stop,
                    )
                )
            except BaseException:
                stop.set()  # the other connections finish their batch and stop
                raise

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run, shard) for shard in shards if shard]
        failures = [future.exception() for future in futures]
    # The error that stopped the run, not a connection that stopped because of it.
    causes = [error for error in failures if error is not None]
    if causes:
        raise next((e for e in causes if not isinstance(e, _StoppedByAnother)), causes[0])
    results = [future.result() for future in futures]
    return sorted(
        (outcome for result in results for outcome in result), key=lambda outcome: outcome.line
    )


def post_rows(
    conn: Connection,
    kind: PostingKind,
    rows: Sequence[BulkRow],
    *,
    on_behalf_of: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    atomic: bool = False,
) -> Iterator[RowOutcome]:
    """Post ``rows`` in batches, one database transaction each; yields each row's outcome.

    A crash between batches loses nothing: committed batches are replays next time. With
    ``atomic``, all rows are one batch: every row posts (or replays), or none does and the
    first row that could not post raises its typed error, naming its line."""
    if batch_size < 1:
        raise InvalidInput("batch size must be at least 1")
    if atomic:
        batch_size = max(len(rows), 1)
    on_behalf_of = validation.on_behalf_of(on_behalf_of)
    for start in range(0, len(rows), batch_size):
        if stop is not None and stop.is_set():
            raise _StoppedByAnother("stopped: another connection of this run failed")
        batch = rows[start : start + batch_size]
        by_line = {row.line: row for row in batch}
        for line, outcome, transaction_id, balance_after, detail in _post_batch(
            conn, kind, on_behalf_of, batch, atomic=atomic
        ):
            row = by_line[line]
            yield RowOutcome(
                line,
                outcome,
                row.user_id,
                row.amount,
                row.asset,
                row.idempotency_key,
                transaction_id,
                balance_after,
                detail,
            )
        if progress is not None:
            progress(len(batch))


def _post_batch(
    conn: Connection,
    kind: PostingKind,
    on_behalf_of: str | None,
    batch: Sequence[BulkRow],
    *,
    atomic: bool,
) -> list[tuple[Any, ...]]:
    params = (
        kind,
        on_behalf_of,
        [row.line for row in batch],
        [row.user_id for row in batch],
        [row.asset for row in batch],
        [row.amount for row in batch],
        [row.idempotency_key for row in batch],
        [row.reason for row in batch],
        atomic,
    )
    for _ in range(_BATCH_ATTEMPTS):
        try:
            with conn.transaction():
                return conn.execute(BATCH_SQL, params).fetchall()
        except psycopg.Error as exc:
            if exc.sqlstate == KEY_CLAIMED_CONCURRENTLY:
                continue  # a key was claimed meanwhile: the batch again sees it as a replay
            raise_translated(exc)
    raise ConcurrentRun("keys of a batch kept being claimed by concurrent postings; run again")
