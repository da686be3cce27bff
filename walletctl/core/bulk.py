"""Bulk posting: files of top-ups, bonuses or spends, validated whole, posted in batches.

A file is CSV with a header, or JSON lines, with the fields user, amount, and optionally
asset, key and reason. Every row carries an idempotency key (its own, or one derived from a
key prefix and what the row is, see ``derived_key``), so running a file again, after any
crash or after other rows were added, removed or moved, posts exactly the rows that are
missing: the rest come back as replays.

Before anything is posted, ``check_against_ledger`` reads (SELECT only) whether the file's
assets exist and, for spends, its users: such rows are bad rows with their line numbers,
like any other mistake in the file.

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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import locks, validation
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
FAILED_OUTCOMES: frozenset[Outcome] = frozenset(
    ("conflict", "insufficient", "not_found", "invalid")
)
"""Outcomes of rows that were not posted: a file with any of them did not fully post (the
CLI's exit 9). ``posted`` and ``replayed`` rows are in the ledger."""
FIELDS = ("user", "amount", "asset", "key", "reason")
DEFAULT_BATCH_SIZE = 5000
_BATCH_ATTEMPTS = 3

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


@dataclass(frozen=True, slots=True)
class Tally:
    """What a file's run came to: rows and their amounts (as in the file, positive) per
    outcome, invalid rows included."""

    rows: dict[Outcome, int]
    amounts: dict[Outcome, int]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def failed(self) -> int:
        """Rows that are not in the ledger."""
        return sum(self.rows[outcome] for outcome in FAILED_OUTCOMES)

    @property
    def complete(self) -> bool:
        """Every row was posted or replayed."""
        return self.failed == 0


def tally(outcomes: Sequence[RowOutcome], invalid: Sequence[InvalidRow] = ()) -> Tally:
    rows: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
    amounts: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes:
        rows[outcome.outcome] += 1
        amounts[outcome.outcome] += outcome.amount or 0
    rows["invalid"] += len(invalid)
    return Tally(rows, amounts)


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
    for line, record in records:
        try:
            row = validator.row(line, record)
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


@contextmanager
def _csv_field_size_limit(limit: int) -> Iterator[None]:
    """The csv module refuses fields over a limit (128 KiB by default) with an error that
    ends the reading of the file. The whole file is already in memory, so a field as long
    as the file costs nothing more; the row validator then refuses the value for being too
    long, as a bad row with its line number."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, limit))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_records(text: str, name: str) -> Iterator[tuple[int, Record]]:
    with _csv_field_size_limit(len(text) + 1):
        yield from _csv_records_within_limit(text, name)


def _csv_records_within_limit(text: str, name: str) -> Iterator[tuple[int, Record]]:
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
        except (ValueError, RecursionError) as exc:
            # An integer of more than 4,300 digits, or arrays nested thousands deep.
            yield line, f"not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"
            continue
        if not isinstance(record, dict):
            yield line, "not a JSON object"
            continue
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            yield line, f"unknown field(s): {', '.join(unknown)}"
            continue
        nested = [field for field in FIELDS if isinstance(record.get(field), list | dict)]
        if nested:
            yield line, f"{nested[0]} must be one value, got a JSON {_json_kind(record[nested[0]])}"
            continue
        yield line, tuple(record.get(field) for field in FIELDS)  # type: ignore[misc]


def _json_kind(value: Any) -> str:
    return "array" if isinstance(value, list) else "object"


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
        self.occurrences: dict[tuple[str, str, int], int] = {}

    def row(self, line: int, record: Record) -> BulkRow:
        if isinstance(record, str):
            raise InvalidInput(record)
        user, amount, asset, key, reason = record
        if isinstance(amount, str):
            parsed_amount = validation.parse_amount(amount)
        else:
            parsed_amount = validation.amount(amount)
        asset = asset if _given(asset) else self.default_asset
        if not _given(asset):
            raise InvalidInput("no asset: add an asset column or pass --asset")
        has_key = _given(key)
        if has_key and self.key_prefix:
            raise InvalidInput("the row has a key and --key-prefix was given: use one of them")
        if not has_key and not self.key_prefix:
            raise InvalidInput("no idempotency key: add a key column or pass --key-prefix")
        reason = reason if _given(reason) else self.default_reason
        # Each distinct value is checked once; the user is checked before it goes into a key.
        if user not in self.users:
            self.users.add(validation.user_id(user))
        if asset not in self.assets:
            self.assets.add(validation.asset_code(asset))
        if reason not in self.reasons:
            self.reasons.add(validation.reason(reason, required=self.reason_required))
        if has_key:
            key = validation.idempotency_key(key)
        else:
            assert self.key_prefix is not None
            identity = (user, asset, parsed_amount)
            occurrence = self.occurrences.get(identity, 0) + 1
            self.occurrences[identity] = occurrence
            key = derived_key(self.key_prefix, user, asset, parsed_amount, occurrence)
            if len(key) > MAX_ID_LENGTH:
                validation.idempotency_key(key)
        return BulkRow(line, user, parsed_amount, asset, key, reason or None)


class _StoppedByAnother(ConcurrentRun):
    """A connection of a parallel run stopped because another one failed."""


def _given(value: Any) -> bool:
    """A field is absent when missing or empty; a JSON 0 or false is a value (and a wrong
    one), not a reason to fall back on a default."""
    return value is not None and value != ""


def derived_key(prefix: str, user: str, asset: str, amount: int, occurrence: int) -> str:
    """The key of a row of a file run with ``--key-prefix``: the prefix, a colon and 32 hex
    digits of a SHA-256 of what the row is: its user, asset and amount, and which
    occurrence of that (user, asset, amount) it is, counting from the top of the file.

    No row number goes in, so adding, removing or moving other rows never changes a row's
    key. Identical rows are told apart by their count only: the file's second
    ``alice,10,GOLD`` is the second one wherever it is. The reason is left out: correcting
    a row's reason and running the file again replays it rather than posting it twice."""
    # user ids hold no control characters (checked before), so the separator is unambiguous.
    identity = f"{user}\x1f{asset}\x1f{amount}\x1f{occurrence}".encode()
    return f"{prefix}:{hashlib.sha256(identity).hexdigest()[:32]}"


def check_terminated(data: bytes, name: str) -> None:
    """Refuse input whose last line has no newline at its end. From a pipe, that is what a
    producer that died mid-write leaves, and the cut line may still parse (``alice,10``
    of ``alice,1000``)."""
    if data and not data.endswith((b"\n", b"\r")):
        last_line = data.count(b"\n") + 1
        raise InvalidInput(
            f"{name}: line {last_line}, the last, has no newline at its end: the input may "
            "have been cut short; nothing was posted (pass --allow-unterminated if it is whole)"
        )


@on_proxy("check_against_ledger")
def check_against_ledger(conn: Connection, kind: PostingKind, parsed: ParsedFile) -> ParsedFile:
    """The file with the rows the ledger would refuse for what they name moved to the bad
    rows: an asset that does not exist, and, for spends, a user that does not exist (credits
    create their user). Read-only: two SELECTs over the distinct values."""
    assets = sorted({row.asset for row in parsed.rows})
    known_assets = {code for (code,) in conn.execute(_KNOWN_ASSETS_SQL, (assets,)).fetchall()}
    known_users: set[str] | None = None
    if kind == "spend":
        users = sorted({row.user_id for row in parsed.rows})
        known_users = {user for (user,) in conn.execute(_KNOWN_USERS_SQL, (users,)).fetchall()}
    rows: list[BulkRow] = []
    refused: list[InvalidRow] = []
    for row in parsed.rows:
        if row.asset not in known_assets:
            error = f"asset {row.asset} does not exist"
        elif known_users is not None and row.user_id not in known_users:
            error = f"user {row.user_id} does not exist (a spend needs an existing user)"
        else:
            rows.append(row)
            continue
        refused.append(InvalidRow(row.line, error, _row_fields(row)))
    if not refused:
        return parsed
    invalid = sorted([*parsed.invalid, *refused], key=lambda bad: bad.line)
    return ParsedFile(rows, invalid, parsed.digest)


_KNOWN_ASSETS_SQL = "SELECT code FROM asset_types WHERE code = ANY(%s::text[])"
_KNOWN_USERS_SQL = "SELECT external_id FROM accounts WHERE external_id = ANY(%s::text[])"


def _row_fields(row: BulkRow) -> dict[str, Any]:
    return {
        "user": row.user_id,
        "amount": row.amount,
        "asset": row.asset,
        "key": row.idempotency_key,
        "reason": row.reason,
    }


@on_proxy("row_number_keys_in_use")
def row_number_keys_in_use(conn: Connection, prefix: str, rows: int) -> list[str]:
    """Keys ``P:1`` .. ``P:<rows>`` already in the ledger. Earlier versions keyed the rows
    of a file by their row number; the same file run again with the same prefix now derives
    other keys and would post every row a second time. The caller refuses such a prefix."""
    found = conn.execute(_ROW_NUMBER_KEYS_SQL, {"prefix": prefix, "rows": rows}).fetchall()
    return [key for (key,) in found]


# One index probe per row number, made by the server (nothing sent per row); LATERAL with
# LIMIT 1 keeps the plan a probe of the key index whatever the size of the ledger.
_ROW_NUMBER_KEYS_SQL = """
SELECT found.key
FROM generate_series(1, %(rows)s) number,
LATERAL (
    SELECT t.idempotency_key AS key FROM transactions t
    WHERE t.idempotency_key = %(prefix)s || ':' || number
    LIMIT 1
) found
LIMIT 3
"""


def file_lock(conn: Connection, kind: PostingKind, digest: bytes) -> AbstractContextManager[None]:
    """Hold the lock of this file and kind for as long as the block runs; ConcurrentRun when
    another run holds it. ``conn`` is a connection of its own, used for nothing else
    meanwhile: the lock (walletctl_lock_file, a row lock that only walletctl_batch may take)
    is held by a transaction open on it (walletctl.core.locks), while the batches commit on
    other connections."""
    return locks.held(
        conn,
        "walletctl_lock_file",
        (kind, digest),
        f"another walletctl is posting this file ({kind}) right now; nothing was posted by "
        "this run (run it again once the other has finished: posted rows replay)",
    )


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
