"""The embedded job store: one SQLite file in WAL mode, shared by every local process.

Writes run in ``BEGIN IMMEDIATE`` transactions, so the read-then-write steps (claim,
idempotent insert) hold SQLite's write lock and are atomic across processes.  Calls run
in a worker thread so the event loop never blocks on disk.

Every call has a deadline (``timeout``, counted from the call, so time spent queued
behind other calls counts too): a store that is locked by another process, or whose
file has gone, raises :class:`~serve_app.jobs.store.StoreUnavailable` instead of hanging.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from serve_app.access.private_files import private_file
from serve_app.jobs import transitions as rules
from serve_app.jobs.records import (
    ApiKeyRecord,
    JobRecord,
    UploadRecord,
    WebhookAttempt,
    field_types,
    from_stored,
    stored_values,
)
from serve_app.jobs.store import AmbiguousKey, QueueFull, StoreUnavailable
from serve_app.jobs.transitions import Changes
from vocabulary import DeliveryStatus, JobStatus

__all__ = ["SqliteStore"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Table:
    """A table that holds one record class: a column per field, named after it."""

    name: str
    record: type
    key: tuple[str, ...] = ("id",)  # the primary key's columns
    unique: tuple[str, ...] = ()  # columns with a UNIQUE constraint


_TABLES = (
    _Table("api_keys", ApiKeyRecord, unique=("digest",)),
    _Table("jobs", JobRecord),
    _Table("webhook_attempts", WebhookAttempt, key=("job_id", "number")),
    _Table("uploads", UploadRecord),
)

# A StrEnum field is TEXT (its subclass of str); bool before int, its base class.
_SQL_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "INTEGER"),
    (int, "INTEGER"),
    (float, "REAL"),
    (str, "TEXT"),
)


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for the default {value!r}")


def _column(table: _Table, name: str) -> str:
    """A column's definition, from its record field: type, NOT NULL unless the field is
    optional, and the field's default (so ADD COLUMN can fill the rows already there)."""
    kind = field_types(table.record)[name]
    sql_type = next(t for base, t in _SQL_TYPES if issubclass(kind.base, base))
    definition = f'"{name}" {sql_type}'
    if table.key == (name,):
        return definition + " PRIMARY KEY"
    if not kind.optional:
        definition += " NOT NULL"
    if name in table.unique:
        definition += " UNIQUE"
    default = next(f.default for f in dataclasses.fields(table.record) if f.name == name)
    if default is not dataclasses.MISSING and default is not None:
        definition += f" DEFAULT {_sql_literal(default)}"
    return definition


def _create_table(table: _Table) -> str:
    columns = [_column(table, name) for name in field_types(table.record)]
    if len(table.key) > 1:
        columns.append(f"PRIMARY KEY ({', '.join(table.key)})")
    return f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(columns)});"


def _missing_columns(db: sqlite3.Connection, table: _Table) -> list[str]:
    """``ALTER TABLE`` statements adding the columns of fields newer than the table (a
    store made by an earlier version); none for a table not created yet."""
    columns = {row["name"] for row in db.execute(f"PRAGMA table_info({table.name})")}
    statements = []
    for name in field_types(table.record):
        if columns and name not in columns:
            definition = _column(table, name)
            if "NOT NULL" in definition and "DEFAULT" not in definition:
                raise TypeError(
                    f"{table.record.__name__}.{name} is newer than the {table.name} table: "
                    "a field added to a record needs a default"
                )
            statements.append(f"ALTER TABLE {table.name} ADD COLUMN {definition}")
    return statements


# The tables that hold no record, and the indexes (which follow the queries below).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_counters (
    key_id TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (key_id, window));
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_status, webhook_next_at);
-- A key's events by delivery status (GET /v2/webhook_deliveries), newest first.
CREATE INDEX IF NOT EXISTS jobs_events_by_key ON jobs
    (key_id, webhook_status, created_seq DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, created_seq DESC, id DESC);
-- Claims (queued jobs by key, oldest first), running counts per key, counts by status.
CREATE INDEX IF NOT EXISTS jobs_by_status_key ON jobs (status, key_id, created_seq);
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_outputs ON jobs (status, completed_at);
-- Fair claims: when each key was last served (a counter, not a clock).
CREATE TABLE IF NOT EXISTS key_turns (key_id TEXT PRIMARY KEY, turn INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_deadlines ON jobs (status, deadline_at)
    WHERE deadline_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (job_id, expires_at);
CREATE INDEX IF NOT EXISTS uploads_open_by_key ON uploads (key_id, job_id, expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


def _set(changes: Changes) -> tuple[str, list[object]]:
    """A transition (:mod:`~serve_app.jobs.transitions`) as ``SET`` assignments and
    their parameters."""
    values = [v.value if isinstance(v, Enum) else v for v in changes.values()]
    return ", ".join(f'"{name}" = ?' for name in changes), values


def _insert(db: sqlite3.Connection, table: str, record: object, replace: bool = False) -> None:
    """One row per record, a column per field."""
    row = stored_values(record)
    columns = ", ".join(f'"{name}"' for name in row)
    db.execute(
        f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} ({columns}) "
        f"VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )


# SQLite's primary result codes that mean "not now" rather than "wrong": busy or locked
# by another connection, I/O error, disk full, can't open, read-only (e.g. the file was
# deleted or moved under us: SQLITE_READONLY_DBMOVED), WAL lock protocol.
_UNAVAILABLE_CODES = {5, 6, 8, 10, 13, 14, 15}


def _unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself, e.g. while connecting
        return isinstance(exc, sqlite3.OperationalError)
    return code & 0xFF in _UNAVAILABLE_CODES


def _job(row: sqlite3.Row | None) -> JobRecord | None:
    return None if row is None else from_stored(JobRecord, dict(row))


def _upload(row: sqlite3.Row | None) -> UploadRecord | None:
    return None if row is None else from_stored(UploadRecord, dict(row))


def _key(row: sqlite3.Row | None) -> ApiKeyRecord | None:
    return None if row is None else from_stored(ApiKeyRecord, dict(row))


# Appended to every UPDATE that ends a job: the webhook outbox entry
# (:func:`~serve_app.jobs.transitions.outbox`), in the same statement.  Takes one
# parameter, the time the event is due.
_OUTBOX = (
    f"webhook_status = CASE WHEN webhook_url IS NOT NULL THEN '{DeliveryStatus.PENDING}' END, "
    "webhook_next_at = CASE WHEN webhook_url IS NOT NULL THEN ? END"
)

# Status tests, spelled from the vocabulary.
_QUEUED = f"status = '{JobStatus.QUEUED}'"
_PROCESSING = f"status = '{JobStatus.PROCESSING}'"
_ENDED = "(" + ", ".join(f"'{status}'" for status in rules.ENDED) + ")"
_REDELIVERABLE = "(" + ", ".join(f"'{status}'" for status in rules.REDELIVERABLE) + ")"


def _jobs_page(
    db: sqlite3.Connection,
    where: str,
    args: list[object],
    key_id: str,
    limit: int,
    starting_after: str | None,
) -> tuple[list[JobRecord], bool]:
    """One page of ``key_id``'s jobs matching ``where``, newest first, strictly after
    the job ``starting_after`` (a cursor of another key's job is an empty page)."""
    if starting_after is not None:
        cursor = db.execute(
            "SELECT created_seq, id FROM jobs WHERE id = ? AND key_id = ?", (starting_after, key_id)
        ).fetchone()
        if cursor is None:
            return [], False
        where += " AND (created_seq < ? OR (created_seq = ? AND id < ?))"
        args += [cursor[0], cursor[0], cursor[1]]
    rows = db.execute(
        f"SELECT * FROM jobs WHERE {where} ORDER BY created_seq DESC, id DESC LIMIT ?",
        [*args, limit + 1],
    ).fetchall()
    jobs = [j for j in map(_job, rows) if j is not None]
    return jobs[:limit], len(jobs) > limit


class SqliteStore:
    """:class:`~serve_app.jobs.store.JobStore` on a local SQLite file."""

    def __init__(self, path: Path, timeout: float = 1.5) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._opened = False  # once opened, a missing file is an outage, not a new store

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None and not self.path.exists():
            # Deleted or moved under us: the open connection would go on writing to a
            # file nobody else sees, and lose it all when it closes.
            self._db.close()
            self._db = None
        if self._db is None:
            if self._opened and not self.path.exists():
                # Never a fresh empty store in its place: that would look like every
                # key and job vanished.  Restoring the file ends the outage.
                raise self._unavailable(
                    "has been deleted or moved; restore it from a "
                    "backup, or restart the service to start empty"
                )
            # 0600 before SQLite opens it: its -wal and -shm files copy the mode.
            private_file(self.path)
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
            self._db = db
            self._opened = True
        return self._db

    def _unavailable(self, why: str) -> StoreUnavailable:
        return StoreUnavailable(f"the SQLite store {self.path} {why}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        deadline = time.monotonic() + self.timeout

        def call() -> T:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._lock.acquire(timeout=remaining):
                raise self._unavailable(f"did not answer within {self.timeout:g} s")
            try:
                db = self._connect()
                # SQLite waits this long for another process's lock before SQLITE_BUSY.
                wait_ms = max(1, round((deadline - time.monotonic()) * 1000))
                db.execute(f"PRAGMA busy_timeout={wait_ms}")
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                if _unavailable(exc):
                    raise self._unavailable(f"is unavailable ({exc})") from exc
                raise
            finally:
                self._lock.release()

        return await asyncio.to_thread(call)

    async def init(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            for table in _TABLES:
                for statement in _missing_columns(db, table):
                    db.execute(statement)
            db.executescript("\n".join(_create_table(t) for t in _TABLES) + _SCHEMA)

        await self._run(create)

    async def ping(self) -> None:
        def ping(db: sqlite3.Connection) -> None:
            db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()

        # A write transaction: a store locked by another writer is not ready either.
        await self._run(ping, write=True)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)

    # API keys
    async def add_key(self, key: ApiKeyRecord) -> None:
        await self._run(lambda db: _insert(db, "api_keys", key), write=True)

    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return await self._run(
            lambda db: _key(
                db.execute("SELECT * FROM api_keys WHERE digest = ?", (digest,)).fetchone()
            )
        )

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._run(
            lambda db: _key(db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone())
        )

    async def list_keys(self) -> list[ApiKeyRecord]:
        rows = await self._run(
            lambda db: db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        )
        return [k for k in map(_key, rows) if k is not None]

    @staticmethod
    def _matching(db: sqlite3.Connection, reference: str) -> list[ApiKeyRecord]:
        exact = _key(db.execute("SELECT * FROM api_keys WHERE id = ?", (reference,)).fetchone())
        if exact is not None:
            return [exact]
        # Prefixes compare case-sensitively (ids are base64url; LIKE would fold case).
        rows = db.execute(
            "SELECT * FROM api_keys WHERE substr(id, 1, ?) = ? "
            "OR substr(prefix, 1, ?) = ? ORDER BY created_at",
            (len(reference), reference, len(reference), reference),
        ).fetchall()
        return [k for k in map(_key, rows) if k is not None]

    def _resolve(self, db: sqlite3.Connection, reference: str) -> ApiKeyRecord | None:
        matches = self._matching(db, reference)
        if len(matches) > 1:
            raise AmbiguousKey(reference, matches)
        return matches[0] if matches else None

    async def find_keys(self, reference: str) -> list[ApiKeyRecord]:
        return await self._run(lambda db: self._matching(db, reference))

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def revoke(db: sqlite3.Connection) -> bool:
            key = self._resolve(db, key_id)
            return (
                key is not None
                and db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, key.id),
                ).rowcount
                > 0
            )

        return await self._run(revoke, write=True)

    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        def rotate(db: sqlite3.Connection) -> bool:
            key = self._resolve(db, key_id)
            return (
                key is not None
                and db.execute(
                    "UPDATE api_keys SET webhook_secret = ? WHERE id = ?", (secret, key.id)
                ).rowcount
                > 0
            )

        return await self._run(rotate, write=True)

    async def rotate_webhook_secret(
        self, key_id: str, secret: str, previous_valid_until: float, now: float | None = None
    ) -> bool:
        keep_before = float("inf") if now is None else now  # None: keep nothing

        def rotate(db: sqlite3.Connection) -> bool:
            key = self._resolve(db, key_id)
            # SET expressions read the row as it was: the old secret becomes previous,
            # unless a previous one is still in its overlap (NULL > x is not true).
            return (
                key is not None
                and db.execute(
                    "UPDATE api_keys SET previous_webhook_secret = CASE WHEN "
                    "previous_secret_expires_at > ? THEN previous_webhook_secret ELSE "
                    "webhook_secret END, previous_secret_expires_at = CASE WHEN "
                    "previous_secret_expires_at > ? THEN previous_secret_expires_at ELSE ? END, "
                    "webhook_secret = ? WHERE id = ?",
                    (keep_before, keep_before, previous_valid_until, secret, key.id),
                ).rowcount
                > 0
            )

        return await self._run(rotate, write=True)

    async def set_key_limits(
        self, key_id: str, max_queued: int | None, max_running: int | None
    ) -> bool:
        return await self._run(
            lambda db: (
                db.execute(
                    "UPDATE api_keys SET max_queued = ?, max_running = ? WHERE id = ?",
                    (max_queued, max_running, key_id),
                ).rowcount
                > 0
            ),
            write=True,
        )

    # Rate limits
    async def count_request(self, key_id: str, window: int, window_seconds: int = 60) -> int:
        def count(db: sqlite3.Connection) -> int:
            db.execute(
                "DELETE FROM rate_counters WHERE key_id = ? AND window < ?", (key_id, window - 1)
            )
            return db.execute(
                "INSERT INTO rate_counters (key_id, window, count) VALUES (?, ?, 1) "
                "ON CONFLICT (key_id, window) DO UPDATE SET count = count + 1 "
                "RETURNING count",
                (key_id, window),
            ).fetchone()[0]

        return await self._run(count, write=True)

    # Jobs
    async def insert_job(
        self, job: JobRecord, now: float, max_queued: int | None = None
    ) -> tuple[JobRecord, bool]:
        def insert(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if job.idempotency_key is not None:
                existing = _job(
                    db.execute(
                        "SELECT * FROM jobs WHERE key_id = ? AND idempotency_key = ?",
                        (job.key_id, job.idempotency_key),
                    ).fetchone()
                )
                if existing is not None:
                    if rules.idempotency_key_live(existing.created_at, now):
                        return existing, False
                    db.execute(
                        "UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (existing.id,)
                    )
            if (
                max_queued is not None
                and db.execute(
                    f"SELECT COUNT(*) FROM jobs WHERE {_QUEUED} AND key_id = ?",
                    (job.key_id,),
                ).fetchone()[0]
                >= max_queued
            ):
                raise QueueFull(max_queued)
            _insert(db, "jobs", job)
            return job, True

        return await self._run(insert, write=True)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._run(
            lambda db: _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        )

    async def count_jobs_by_status(self) -> dict[str, int]:
        rows = await self._run(
            lambda db: db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        )
        return {str(status): 0 for status in JobStatus} | {row[0]: row[1] for row in rows}

    async def oldest_queued_at(self) -> float | None:
        row = await self._run(
            lambda db: db.execute(f"SELECT MIN(created_at) FROM jobs WHERE {_QUEUED}").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def recent_jobs(
        self, limit: int, key_id: str | None = None, status: str | None = None
    ) -> list[JobRecord]:
        where = (
            " AND ".join(
                clause
                for clause, value in (("key_id = ?", key_id), ("status = ?", status))
                if value is not None
            )
            or "1"
        )
        args = [v for v in (key_id, status) if v is not None]
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY created_seq DESC, id DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        )
        return [j for j in map(_job, rows) if j is not None]

    async def list_jobs(
        self, key_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        return await self._run(
            lambda db: _jobs_page(db, "key_id = ?", [key_id], key_id, limit, starting_after)
        )

    async def claim_next(
        self, owner: str, now: float, lease_seconds: float, max_running: int | None = None
    ) -> JobRecord | None:
        def claim(db: sqlite3.Connection) -> JobRecord | None:
            # The key to serve: least recently served (never first), then the one whose
            # oldest queued job is oldest; keys at their running limit wait their turn.
            row = db.execute(
                "SELECT q.key_id FROM (SELECT key_id, MIN(created_seq) AS oldest FROM jobs "
                f"WHERE {_QUEUED} GROUP BY key_id) AS q "
                "LEFT JOIN key_turns AS t ON t.key_id = q.key_id "
                "LEFT JOIN api_keys AS k ON k.id = q.key_id "
                "WHERE COALESCE(k.max_running, ?) IS NULL OR (SELECT COUNT(*) FROM jobs AS r "
                f"WHERE r.{_PROCESSING} AND r.key_id = q.key_id) "
                "< COALESCE(k.max_running, ?) "
                "ORDER BY t.turn IS NOT NULL, t.turn, q.oldest LIMIT 1",
                (max_running, max_running),
            ).fetchone()
            if row is None:
                return None
            assignments, values = _set(rules.claimed(owner, now + lease_seconds))
            job = _job(
                db.execute(
                    f"UPDATE jobs SET {assignments}, "
                    "attempts = attempts + 1, started_at = COALESCE(started_at, ?) "
                    f"WHERE id = (SELECT id FROM jobs WHERE {_QUEUED} AND key_id = ? "
                    "ORDER BY created_seq, id LIMIT 1) RETURNING *",
                    (*values, now, row[0]),
                ).fetchone()
            )
            db.execute(
                "INSERT INTO key_turns (key_id, turn) VALUES "
                "(?, (SELECT COALESCE(MAX(turn), 0) + 1 FROM key_turns)) "
                "ON CONFLICT (key_id) DO UPDATE SET turn = excluded.turn",
                (row[0],),
            )
            return job

        return await self._run(claim, write=True)

    async def renew_lease(
        self,
        job_id: str,
        owner: str,
        now: float,
        lease_seconds: float,
        progress: float,
        eta_seconds: float | None,
        phase: str | None = None,
    ) -> JobRecord | None:
        return await self._run(
            lambda db: _job(
                db.execute(
                    "UPDATE jobs SET lease_expires_at = ?, progress = ?, eta_seconds = ?, "
                    "phase = ? "
                    f"WHERE id = ? AND lease_owner = ? AND {_PROCESSING} RETURNING *",
                    (now + lease_seconds, progress, eta_seconds, phase, job_id, owner),
                ).fetchone()
            ),
            write=True,
        )

    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        now: float,
        *,
        output_path: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        assignments, values = _set(
            rules.finished(status, now, output_path, error_type, error_message)
        )
        return await self._run(
            lambda db: (
                db.execute(
                    f"UPDATE jobs SET {assignments}, {_OUTBOX} "
                    f"WHERE id = ? AND lease_owner = ? AND {_PROCESSING}",
                    (*values, now, job_id, owner),
                ).rowcount
                > 0
            ),
            write=True,
        )

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        assignments, values = _set(rules.cancel_queued(now))

        def cancel(db: sqlite3.Connection) -> JobRecord | None:
            db.execute(
                f"UPDATE jobs SET {assignments}, {_OUTBOX} WHERE id = ? AND {_QUEUED}",
                (*values, now, job_id),
            )
            db.execute(
                f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND {_PROCESSING}",
                (job_id,),
            )
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

        return await self._run(cancel, write=True)

    async def release_lease(self, job_id: str, owner: str) -> bool:
        assignments, values = _set(rules.released())

        def release(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    f"UPDATE jobs SET {assignments}, "
                    "attempts = MAX(attempts - 1, 0) WHERE id = ? AND lease_owner = ? "
                    f"AND {_PROCESSING} AND cancel_requested = 0",
                    (*values, job_id, owner),
                ).rowcount
                > 0
            )

        return await self._run(release, write=True)

    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        # Which expired jobs each outcome of rules.after_lease_expiry takes, tested in
        # the rules' order: each UPDATE moves its jobs out of processing, so the next
        # sees only the rest.
        applies = {
            JobStatus.CANCELED: ("cancel_requested = 1", []),
            JobStatus.FAILED: ("attempts >= ?", [max_attempts]),
            JobStatus.QUEUED: ("1", []),
        }

        def requeue(db: sqlite3.Connection) -> int:
            changed = 0
            for outcome in rules.LEASE_EXPIRY_ORDER:
                assignments, values = _set(rules.lease_expired(outcome, now, max_attempts))
                outbox, outbox_args = (f", {_OUTBOX}", [now]) if outcome.is_terminal else ("", [])
                condition, args = applies[outcome]
                changed += db.execute(
                    f"UPDATE jobs SET {assignments}{outbox} "
                    f"WHERE {_PROCESSING} AND lease_expires_at < ? AND {condition}",
                    [*values, *outbox_args, now, *args],
                ).rowcount
            return changed

        return await self._run(requeue, write=True)

    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT * FROM jobs WHERE status = '{JobStatus.COMPLETED}' "
                "AND output_path IS NOT NULL "
                "AND completed_at < ? ORDER BY completed_at LIMIT ?",
                (completed_before, limit),
            ).fetchall()
        )
        return [j for j in map(_job, rows) if j is not None]

    async def clear_output(self, job_id: str) -> None:
        await self._run(
            lambda db: db.execute("UPDATE jobs SET output_path = NULL WHERE id = ?", (job_id,)),
            write=True,
        )

    async def claim_due_webhooks(
        self, now: float, lease_seconds: float, limit: int, exclude_keys: Collection[str] = ()
    ) -> list[JobRecord]:
        skip = f"AND key_id NOT IN ({', '.join('?' * len(exclude_keys))}) " if exclude_keys else ""
        rows = await self._run(
            lambda db: db.execute(
                "UPDATE jobs SET webhook_next_at = ? WHERE id IN (SELECT id FROM jobs "
                f"WHERE webhook_status = '{DeliveryStatus.PENDING}' AND webhook_next_at <= ? {skip}"
                "ORDER BY webhook_next_at LIMIT ?) RETURNING *",
                (now + lease_seconds, now, *exclude_keys, limit),
            ).fetchall(),
            write=True,
        )
        return [j for j in map(_job, rows) if j is not None]

    async def freeze_webhook_body(self, job_id: str, body: str) -> str:
        row = await self._run(
            lambda db: db.execute(
                "UPDATE jobs SET webhook_body = COALESCE(webhook_body, ?) WHERE id = ? "
                "RETURNING webhook_body",
                (body, job_id),
            ).fetchone(),
            write=True,
        )
        return body if row is None else str(row[0])

    async def record_webhook_attempt(
        self, attempt: WebhookAttempt, *, status: str, next_at: float | None, body: str
    ) -> None:
        def record(db: sqlite3.Connection) -> None:
            # Only the attempt that follows the recorded ones, on a pending event: a
            # dispatcher whose lease lapsed (another one went on) changes nothing.
            if db.execute(
                "UPDATE jobs SET webhook_status = ?, webhook_attempts = ?, "
                "webhook_next_at = ?, webhook_body = COALESCE(webhook_body, ?) "
                f"WHERE id = ? AND webhook_status = '{DeliveryStatus.PENDING}' "
                "AND webhook_attempts = ?",
                (status, attempt.number, next_at, body, attempt.job_id, attempt.number - 1),
            ).rowcount:
                _insert(db, "webhook_attempts", attempt, replace=True)

        await self._run(record, write=True)

    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT * FROM webhook_attempts WHERE job_id = ? ORDER BY number", (job_id,)
            ).fetchall()
        )
        return [from_stored(WebhookAttempt, dict(row)) for row in rows]

    async def redeliver_webhook(self, job_id: str, now: float) -> JobRecord | None:
        return await self._run(
            lambda db: _job(
                db.execute(
                    f"UPDATE jobs SET webhook_status = '{DeliveryStatus.PENDING}', "
                    "webhook_next_at = ?, webhook_round_start = webhook_attempts WHERE id = ? "
                    f"AND webhook_status IN {_REDELIVERABLE} RETURNING *",
                    (now, job_id),
                ).fetchone()
            ),
            write=True,
        )

    async def list_webhook_events(
        self, key_id: str, status: str, limit: int, starting_after: str | None
    ) -> tuple[list[JobRecord], bool]:
        return await self._run(
            lambda db: _jobs_page(
                db,
                "key_id = ? AND webhook_status = ?",
                [key_id, status],
                key_id,
                limit,
                starting_after,
            )
        )

    # Deadlines
    async def cancel_overdue(self, now: float) -> int:
        assignments, values = _set(rules.deadline_passed(now))
        return await self._run(
            lambda db: (
                db.execute(
                    f"UPDATE jobs SET {assignments}, {_OUTBOX} "
                    f"WHERE {_QUEUED} AND deadline_at <= ?",
                    (*values, now, now),
                ).rowcount
            ),
            write=True,
        )

    # Uploads
    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._run(lambda db: _insert(db, "uploads", upload), write=True)

    async def open_uploads(self, key_id: str, now: float) -> int:
        return await self._run(
            lambda db: int(
                db.execute(
                    "SELECT COUNT(*) FROM uploads WHERE key_id = ? AND job_id IS NULL "
                    "AND expires_at > ?",
                    (key_id, now),
                ).fetchone()[0]
            )
        )

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        return await self._run(
            lambda db: _upload(
                db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            )
        )

    async def advance_upload(
        self, upload_id: str, expected_offset: int, new_offset: int
    ) -> UploadRecord | None:
        return await self._run(
            lambda db: _upload(
                db.execute(
                    "UPDATE uploads SET offset = ? WHERE id = ? AND offset = ? AND ? >= offset "
                    "AND ? <= size AND job_id IS NULL RETURNING *",
                    (new_offset, upload_id, expected_offset, new_offset, new_offset),
                ).fetchone()
            ),
            write=True,
        )

    async def claim_upload(self, upload_id: str, job_id: str, now: float) -> bool:
        return await self._run(
            lambda db: (
                db.execute(
                    "UPDATE uploads SET job_id = ? WHERE id = ? AND job_id IS NULL "
                    "AND offset = size AND expires_at > ?",
                    (job_id, upload_id, now),
                ).rowcount
                > 0
            ),
            write=True,
        )

    async def release_upload(self, upload_id: str, job_id: str) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE uploads SET job_id = NULL WHERE id = ? AND job_id = ?", (upload_id, job_id)
            ),
            write=True,
        )

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)), write=True
        )

    async def expired_uploads(self, now: float, limit: int) -> list[UploadRecord]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT * FROM uploads WHERE job_id IS NULL AND expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [u for u in map(_upload, rows) if u is not None]

    async def uploads_of_ended_jobs(self, now: float, limit: int) -> list[UploadRecord]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT u.* FROM uploads AS u LEFT JOIN jobs AS j ON j.id = u.job_id "
                "WHERE u.job_id IS NOT NULL AND ((j.id IS NULL AND u.expires_at < ?) OR "
                f"j.status IN {_ENDED}) LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [u for u in map(_upload, rows) if u is not None]
