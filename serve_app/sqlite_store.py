"""The embedded job store: one SQLite file in WAL mode, shared by every local process.

Writes run in ``BEGIN IMMEDIATE`` transactions, so the read-then-write steps (claim,
idempotent insert) hold SQLite's write lock and are atomic across processes.  Calls run
in a worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

from serve_app.private_files import private_file
from serve_app.records import ApiKeyRecord, JobRecord, JobStatus, WebhookAttempt
from serve_app.store import IDEMPOTENCY_WINDOW_SECONDS

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, digest TEXT UNIQUE NOT NULL,
    webhook_secret TEXT NOT NULL, rate_limit INTEGER NOT NULL, created_at REAL NOT NULL,
    revoked_at REAL);
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
    webhook_body TEXT, engine TEXT NOT NULL DEFAULT 'neural');
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_status, webhook_next_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    job_id TEXT NOT NULL, number INTEGER NOT NULL, at REAL NOT NULL, status_code INTEGER,
    error TEXT, duration_ms INTEGER NOT NULL, PRIMARY KEY (job_id, number));
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, created_seq DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, created_seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


# Columns added after the first release, with how to add them to an existing store.
_ADDED_COLUMNS = {"engine": "TEXT NOT NULL DEFAULT 'neural'"}


def _job(row: sqlite3.Row | None) -> JobRecord | None:
    if row is None:
        return None
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


# Appended to every UPDATE that ends a job: the webhook outbox entry, in the same
# statement.  Takes one parameter, the time the event is due.
_OUTBOX = ("webhook_status = CASE WHEN webhook_url IS NOT NULL THEN 'pending' END, "
           "webhook_next_at = CASE WHEN webhook_url IS NOT NULL THEN ? END")


def _key(row: sqlite3.Row | None) -> ApiKeyRecord | None:
    return None if row is None else ApiKeyRecord(**dict(row))


class SqliteStore:
    """:class:`~serve_app.store.JobStore` on a local SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            # 0600 before SQLite opens it: its -wal and -shm files copy the mode.
            private_file(self.path)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        def call() -> T:
            with self._lock:
                db = self._connect()
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await asyncio.to_thread(call)

    async def init(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in columns:  # a store made by an earlier version
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

        await self._run(create)

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
        await self._run(lambda db: db.execute(
            f"INSERT INTO api_keys ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values())), write=True)

    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return await self._run(lambda db: _key(db.execute(
            "SELECT * FROM api_keys WHERE digest = ?", (digest,)).fetchone()))

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._run(lambda db: _key(db.execute(
            "SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()))

    async def list_keys(self) -> list[ApiKeyRecord]:
        rows = await self._run(lambda db: db.execute(
            "SELECT * FROM api_keys ORDER BY created_at").fetchall())
        return [k for k in map(_key, rows) if k is not None]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        return await self._run(lambda db: db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR prefix = ?) "
            "AND revoked_at IS NULL", (now, key_id, key_id)).rowcount > 0, write=True)

    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        return await self._run(lambda db: db.execute(
            "UPDATE api_keys SET webhook_secret = ? WHERE id = ? OR prefix = ?",
            (secret, key_id, key_id)).rowcount > 0, write=True)

    # Rate limits
    async def count_request(self, key_id: str, window: int) -> int:
        def count(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM rate_counters WHERE key_id = ? AND window < ?",
                       (key_id, window - 1))
            return db.execute(
                "INSERT INTO rate_counters (key_id, window, count) VALUES (?, ?, 1) "
                "ON CONFLICT (key_id, window) DO UPDATE SET count = count + 1 "
                "RETURNING count", (key_id, window)).fetchone()[0]

        return await self._run(count, write=True)

    # Jobs
    async def insert_job(self, job: JobRecord, now: float) -> tuple[JobRecord, bool]:
        def insert(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if job.idempotency_key is not None:
                existing = _job(db.execute(
                    "SELECT * FROM jobs WHERE key_id = ? AND idempotency_key = ?",
                    (job.key_id, job.idempotency_key)).fetchone())
                if existing is not None:
                    if existing.created_at > now - IDEMPOTENCY_WINDOW_SECONDS:
                        return existing, False
                    db.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?",
                               (existing.id,))
            row = dataclasses.asdict(job)
            row["status"] = str(job.status)
            db.execute(f"INSERT INTO jobs ({', '.join(row)}) "
                       f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
            return job, True

        return await self._run(insert, write=True)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda db: _job(db.execute(
            "SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()))

    async def count_jobs_by_status(self) -> dict[str, int]:
        rows = await self._run(lambda db: db.execute(
            "SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        return {str(status): 0 for status in JobStatus} | {row[0]: row[1] for row in rows}

    async def recent_jobs(self, limit: int, key_id: str | None = None,
                          status: str | None = None) -> list[JobRecord]:
        where = " AND ".join(clause for clause, value in
                             (("key_id = ?", key_id), ("status = ?", status))
                             if value is not None) or "1"
        args = [v for v in (key_id, status) if v is not None]
        rows = await self._run(lambda db: db.execute(
            f"SELECT * FROM jobs WHERE {where} ORDER BY created_seq DESC, id DESC LIMIT ?",
            [*args, limit]).fetchall())
        return [j for j in map(_job, rows) if j is not None]

    async def list_jobs(self, key_id: str, limit: int, starting_after: str | None
                        ) -> tuple[list[JobRecord], bool]:
        def page(db: sqlite3.Connection) -> tuple[list[JobRecord], bool]:
            where, args = "key_id = ?", [key_id]
            if starting_after is not None:
                cursor = db.execute("SELECT created_seq, id FROM jobs WHERE id = ? AND "
                                    "key_id = ?", (starting_after, key_id)).fetchone()
                if cursor is None:
                    return [], False
                where += " AND (created_seq < ? OR (created_seq = ? AND id < ?))"
                args += [cursor[0], cursor[0], cursor[1]]
            rows = db.execute(f"SELECT * FROM jobs WHERE {where} "
                              "ORDER BY created_seq DESC, id DESC LIMIT ?",
                              [*args, limit + 1]).fetchall()
            jobs = [j for j in map(_job, rows) if j is not None]
            return jobs[:limit], len(jobs) > limit

        return await self._run(page)

    async def claim_next(self, owner: str, now: float, lease_seconds: float
                         ) -> JobRecord | None:
        return await self._run(lambda db: _job(db.execute(
            "UPDATE jobs SET status = 'processing', lease_owner = ?, lease_expires_at = ?, "
            "attempts = attempts + 1, started_at = COALESCE(started_at, ?) "
            "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' "
            "ORDER BY created_seq, id LIMIT 1) RETURNING *",
            (owner, now + lease_seconds, now)).fetchone()), write=True)

    async def renew_lease(self, job_id: str, owner: str, now: float, lease_seconds: float,
                          progress: float, eta_seconds: float | None) -> JobRecord | None:
        return await self._run(lambda db: _job(db.execute(
            "UPDATE jobs SET lease_expires_at = ?, progress = ?, eta_seconds = ? "
            "WHERE id = ? AND lease_owner = ? AND status = 'processing' RETURNING *",
            (now + lease_seconds, progress, eta_seconds, job_id, owner)).fetchone()),
            write=True)

    async def finish(self, job_id: str, owner: str, status: JobStatus, now: float, *,
                     output_path: str | None = None, error_type: str | None = None,
                     error_message: str | None = None) -> bool:
        progress_sql = "1.0" if status == JobStatus.COMPLETED else "progress"
        return await self._run(lambda db: db.execute(
            f"UPDATE jobs SET status = ?, completed_at = ?, output_path = ?, error_type = ?, "
            f"error_message = ?, lease_owner = NULL, lease_expires_at = NULL, "
            f"progress = {progress_sql}, eta_seconds = NULL, {_OUTBOX} "
            "WHERE id = ? AND lease_owner = ? AND status = 'processing'",
            (str(status), now, output_path, error_type, error_message, now, job_id, owner)
        ).rowcount > 0, write=True)

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        def cancel(db: sqlite3.Connection) -> JobRecord | None:
            db.execute(f"UPDATE jobs SET status = 'canceled', completed_at = ?, {_OUTBOX} "
                       "WHERE id = ? AND status = 'queued'", (now, now, job_id))
            db.execute("UPDATE jobs SET cancel_requested = 1 "
                       "WHERE id = ? AND status = 'processing'", (job_id,))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

        return await self._run(cancel, write=True)

    async def requeue_expired(self, now: float, max_attempts: int) -> int:
        def requeue(db: sqlite3.Connection) -> int:
            expired = "status = 'processing' AND lease_expires_at < ?"
            canceled = db.execute(
                "UPDATE jobs SET status = 'canceled', completed_at = ?, lease_owner = NULL, "
                f"lease_expires_at = NULL, {_OUTBOX} WHERE {expired} AND cancel_requested = 1",
                (now, now, now)).rowcount
            failed = db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, error_type = 'runner_lost', error_message = ?, "
                f"{_OUTBOX} WHERE {expired} AND attempts >= ?",
                (now, f"the job's runner stopped responding {max_attempts} times; "
                 "giving up", now, now, max_attempts)).rowcount
            queued = db.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, "
                f"lease_expires_at = NULL, progress = 0, eta_seconds = NULL WHERE {expired}",
                (now,)).rowcount
            return canceled + failed + queued

        return await self._run(requeue, write=True)

    async def expired_outputs(self, completed_before: float, limit: int) -> list[JobRecord]:
        rows = await self._run(lambda db: db.execute(
            "SELECT * FROM jobs WHERE status = 'completed' AND output_path IS NOT NULL "
            "AND completed_at < ? ORDER BY completed_at LIMIT ?",
            (completed_before, limit)).fetchall())
        return [j for j in map(_job, rows) if j is not None]

    async def clear_output(self, job_id: str) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE jobs SET output_path = NULL WHERE id = ?", (job_id,)), write=True)

    async def claim_due_webhooks(self, now: float, lease_seconds: float, limit: int,
                                 exclude_keys: Collection[str] = ()) -> list[JobRecord]:
        skip = f"AND key_id NOT IN ({', '.join('?' * len(exclude_keys))}) " \
            if exclude_keys else ""
        rows = await self._run(lambda db: db.execute(
            "UPDATE jobs SET webhook_next_at = ? WHERE id IN (SELECT id FROM jobs "
            f"WHERE webhook_status = 'pending' AND webhook_next_at <= ? {skip}"
            "ORDER BY webhook_next_at LIMIT ?) RETURNING *",
            (now + lease_seconds, now, *exclude_keys, limit)).fetchall(), write=True)
        return [j for j in map(_job, rows) if j is not None]

    async def record_webhook_attempt(self, attempt: WebhookAttempt, *, status: str,
                                     next_at: float | None, body: str) -> None:
        def record(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO webhook_attempts (job_id, number, at, "
                       "status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
                       (attempt.job_id, attempt.number, attempt.at, attempt.status_code,
                        attempt.error, attempt.duration_ms))
            db.execute("UPDATE jobs SET webhook_status = ?, webhook_attempts = ?, "
                       "webhook_next_at = ?, webhook_body = ? WHERE id = ?",
                       (status, attempt.number, next_at, body, attempt.job_id))

        await self._run(record, write=True)

    async def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        rows = await self._run(lambda db: db.execute(
            "SELECT * FROM webhook_attempts WHERE job_id = ? ORDER BY number",
            (job_id,)).fetchall())
        return [WebhookAttempt(**dict(row)) for row in rows]
