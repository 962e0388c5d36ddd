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
from pathlib import Path
from typing import TypeVar

from serve_app.access.private_files import private_file
from serve_app.jobs.records import ApiKeyRecord, JobRecord, UploadRecord, WebhookAttempt
from serve_app.jobs.store import (
    IDEMPOTENCY_WINDOW_SECONDS,
    AmbiguousKey,
    QueueFull,
    StoreUnavailable,
)
from vocabulary import JobStatus

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, digest TEXT UNIQUE NOT NULL,
    webhook_secret TEXT NOT NULL, rate_limit INTEGER NOT NULL, created_at REAL NOT NULL,
    revoked_at REAL, max_queued INTEGER, max_running INTEGER, previous_webhook_secret TEXT,
    previous_secret_expires_at REAL);
CREATE TABLE IF NOT EXISTS rate_counters (
    key_id TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (key_id, window));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, status TEXT NOT NULL, input_url TEXT NOT NULL,
    preset TEXT NOT NULL, upscale_factor INTEGER NOT NULL, created_at REAL NOT NULL,
    created_seq INTEGER NOT NULL, webhook_url TEXT, started_at REAL, completed_at REAL,
    progress REAL NOT NULL, eta_seconds REAL, output_path TEXT, error_type TEXT,
    error_message TEXT, attempts INTEGER NOT NULL, lease_owner TEXT, lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL, idempotency_key TEXT, request_hash TEXT,
    webhook_status TEXT, webhook_attempts INTEGER NOT NULL DEFAULT 0, webhook_next_at REAL,
    webhook_body TEXT, engine TEXT NOT NULL DEFAULT 'neural', phase TEXT,
    webhook_round_start INTEGER NOT NULL DEFAULT 0, upload_id TEXT, deadline_at REAL);
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_status, webhook_next_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    job_id TEXT NOT NULL, number INTEGER NOT NULL, at REAL NOT NULL, status_code INTEGER,
    error TEXT, duration_ms INTEGER NOT NULL, redelivery INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, number));
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
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, size INTEGER NOT NULL, offset INTEGER NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, filename TEXT, job_id TEXT);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (job_id, expires_at);
CREATE INDEX IF NOT EXISTS uploads_open_by_key ON uploads (key_id, job_id, expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


# Columns added after the first release, with how to add them to an existing store.
_ADDED_COLUMNS = {
    "jobs": {
        "engine": "TEXT NOT NULL DEFAULT 'neural'",
        "phase": "TEXT",
        "webhook_round_start": "INTEGER NOT NULL DEFAULT 0",
        "upload_id": "TEXT",
        "deadline_at": "REAL",
    },
    "api_keys": {
        "max_queued": "INTEGER",
        "max_running": "INTEGER",
        "previous_webhook_secret": "TEXT",
        "previous_secret_expires_at": "REAL",
    },
    "webhook_attempts": {"redelivery": "INTEGER NOT NULL DEFAULT 0"},
}

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
    if row is None:
        return None
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


# Appended to every UPDATE that ends a job: the webhook outbox entry, in the same
# statement.  Takes one parameter, the time the event is due.
_OUTBOX = (
    "webhook_status = CASE WHEN webhook_url IS NOT NULL THEN 'pending' END, "
    "webhook_next_at = CASE WHEN webhook_url IS NOT NULL THEN ? END"
)


def _upload(row: sqlite3.Row | None) -> UploadRecord | None:
    return None if row is None else UploadRecord(**dict(row))


def _key(row: sqlite3.Row | None) -> ApiKeyRecord | None:
    return None if row is None else ApiKeyRecord(**dict(row))


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
            for table, added in _ADDED_COLUMNS.items():
                columns = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, definition in added.items():
                    if columns and name not in columns:  # a store made by an earlier version
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
            db.executescript(_SCHEMA)

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
        row = dataclasses.asdict(key)
        await self._run(
            lambda db: db.execute(
                f"INSERT INTO api_keys ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            ),
            write=True,
        )

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
                    if existing.created_at > now - IDEMPOTENCY_WINDOW_SECONDS:
                        return existing, False
                    db.execute(
                        "UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (existing.id,)
                    )
            if (
                max_queued is not None
                and db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND key_id = ?",
                    (job.key_id,),
                ).fetchone()[0]
                >= max_queued
            ):
                raise QueueFull(max_queued)
            row = dataclasses.asdict(job)
            row["status"] = str(job.status)
            db.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
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
            lambda db: db.execute(
                "SELECT MIN(created_at) FROM jobs WHERE status = 'queued'"
            ).fetchone()
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
                "WHERE status = 'queued' GROUP BY key_id) AS q "
                "LEFT JOIN key_turns AS t ON t.key_id = q.key_id "
                "LEFT JOIN api_keys AS k ON k.id = q.key_id "
                "WHERE COALESCE(k.max_running, ?) IS NULL OR (SELECT COUNT(*) FROM jobs AS r "
                "WHERE r.status = 'processing' AND r.key_id = q.key_id) "
                "< COALESCE(k.max_running, ?) "
                "ORDER BY t.turn IS NOT NULL, t.turn, q.oldest LIMIT 1",
                (max_running, max_running),
            ).fetchone()
            if row is None:
                return None
            job = _job(
                db.execute(
                    "UPDATE jobs SET status = 'processing', lease_owner = ?, lease_expires_at = ?, "
                    "attempts = attempts + 1, started_at = COALESCE(started_at, ?) "
                    "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND key_id = ? "
                    "ORDER BY created_seq, id LIMIT 1) RETURNING *",
                    (owner, now + lease_seconds, now, row[0]),
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
                    "WHERE id = ? AND lease_owner = ? AND status = 'processing' RETURNING *",
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
        progress_sql = "1.0" if status == JobStatus.COMPLETED else "progress"
        return await self._run(
            lambda db: (
                db.execute(
                    f"UPDATE jobs SET status = ?, completed_at = ?, output_path = ?, "
                    f"error_type = ?, "
                    f"error_message = ?, lease_owner = NULL, lease_expires_at = NULL, "
                    f"progress = {progress_sql}, eta_seconds = NULL, {_OUTBOX} "
                    "WHERE id = ? AND lease_owner = ? AND status = 'processing'",
                    (str(status), now, output_path, error_type, error_message, now, job_id, owner),
                ).rowcount
                > 0
            ),
            write=True,
        )

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        def cancel(db: sqlite3.Connection) -> JobRecord | None:
            db.execute(
                f"UPDATE jobs SET status = 'canceled', completed_at = ?, {_OUTBOX} "
                "WHERE id = ? AND status = 'queued'",
                (now, now, job_id),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'processing'",
                (job_id,),
            )
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

        return await self._run(cancel, write=True)

    async def release_lease(self, job_id: str, owner: str) -> bool:
        def release(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, "
                    "lease_expires_at = NULL, "
                    "progress = 0, eta_seconds = NULL, phase = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE id = ? AND lease_owner = ? "
                    "AND status = 'processing' AND cancel_requested = 0",
                    (job_id, owner),
                ).rowcount
                > 0
            )

        return await self._run(release, write=True)

    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        def requeue(db: sqlite3.Connection) -> int:
            expired = "status = 'processing' AND lease_expires_at < ?"
            canceled = db.execute(
                "UPDATE jobs SET status = 'canceled', completed_at = ?, lease_owner = NULL, "
                f"lease_expires_at = NULL, {_OUTBOX} WHERE {expired} AND cancel_requested = 1",
                (now, now, now),
            ).rowcount
            failed = db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, error_type = 'runner_lost', error_message = ?, "
                f"{_OUTBOX} WHERE {expired} AND attempts >= ?",
                (
                    now,
                    f"the job's runner stopped responding {max_attempts} times; giving up",
                    now,
                    now,
                    max_attempts,
                ),
            ).rowcount
            queued = db.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, "
                f"lease_expires_at = NULL, progress = 0, eta_seconds = NULL WHERE {expired}",
                (now,),
            ).rowcount
            return canceled + failed + queued

        return await self._run(requeue, write=True)

    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT * FROM jobs WHERE status = 'completed' AND output_path IS NOT NULL "
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
                f"WHERE webhook_status = 'pending' AND webhook_next_at <= ? {skip}"
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
                "WHERE id = ? AND webhook_status = 'pending' "
                "AND webhook_attempts = ?",
                (status, attempt.number, next_at, body, attempt.job_id, attempt.number - 1),
            ).rowcount:
                db.execute(
                    "INSERT OR REPLACE INTO webhook_attempts (job_id, number, at, "
                    "status_code, error, duration_ms, redelivery) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        attempt.job_id,
                        attempt.number,
                        attempt.at,
                        attempt.status_code,
                        attempt.error,
                        attempt.duration_ms,
                        int(attempt.redelivery),
                    ),
                )

        await self._run(record, write=True)

    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT * FROM webhook_attempts WHERE job_id = ? ORDER BY number", (job_id,)
            ).fetchall()
        )
        return [
            WebhookAttempt(**{**dict(row), "redelivery": bool(row["redelivery"])}) for row in rows
        ]

    async def redeliver_webhook(self, job_id: str, now: float) -> JobRecord | None:
        return await self._run(
            lambda db: _job(
                db.execute(
                    "UPDATE jobs SET webhook_status = 'pending', webhook_next_at = ?, "
                    "webhook_round_start = webhook_attempts WHERE id = ? "
                    "AND webhook_status IN ('delivered', 'failed') RETURNING *",
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
        return await self._run(
            lambda db: (
                db.execute(
                    "UPDATE jobs SET status = 'canceled', completed_at = ?, "
                    "error_type = 'deadline_exceeded', error_message = ?, "
                    f"{_OUTBOX} WHERE status = 'queued' AND deadline_at <= ?",
                    (now, "the job's cancel_after deadline passed before it started", now, now),
                ).rowcount
            ),
            write=True,
        )

    # Uploads
    async def insert_upload(self, upload: UploadRecord) -> None:
        row = dataclasses.asdict(upload)
        await self._run(
            lambda db: db.execute(
                f"INSERT INTO uploads ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            ),
            write=True,
        )

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
                "j.status IN ('completed', 'failed', 'canceled')) LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [u for u in map(_upload, rows) if u is not None]
