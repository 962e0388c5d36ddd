"""What a batch needs from the service: manifest rows become jobs in the job store.

The batch driver (:mod:`serve_app.jobs.batch`) creates jobs through the same intake as
the API, so each is listed, cancellable and webhooked like a job posted to
``/v2/enhance``. Settings (store, storage, URL policy, public URL) come from
``RETROIVA_*`` variables, the same ones the service reads.

Each batch's ledger (which jobs it made, for which rows) is kept as
``DATA_DIR/batches/<batch id>.json`` on the node the batch ran on, the head node under
``ray job submit``: ``retroiva batches list|show|cancel`` read it there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.access.private_files import private_dir
from serve_app.delivery.output_storage import download_link, open_storage
from serve_app.errors import ApiError, AuthenticationError
from serve_app.jobs.batch_manifest import ManifestRow
from serve_app.jobs.intake import active_key, submit_job
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.store import JobStore, open_store
from serve_app.settings import Settings
from vocabulary import ApiErrorType, BatchOutcome, BatchRowState, JobStatus

__all__ = [
    "PENDING",
    "REJECTED",
    "TERMINAL",
    "BatchResult",
    "JobState",
    "QueueRefused",
    "RowRejected",
    "StoreJobQueue",
    "batch_ledger",
    "batch_outcome",
    "batch_view",
    "batches_dir",
    "current_rows",
    "list_batches",
    "missing_store",
]

log = logging.getLogger(__name__)

# A row's states besides its job's: not yet submitted, and refused (so no job at all).
PENDING = BatchRowState.PENDING
REJECTED = BatchRowState.REJECTED
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, REJECTED})


class QueueRefused(Exception):
    """The service refused the whole batch (an invalid or revoked API key, no store)."""


class RowRejected(Exception):
    """The service refused one row (bad URL, key conflict, queue limit); the others go on."""

    def __init__(self, message: str, error_type: ApiErrorType) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class JobState:
    """A row's job as the store has it (``id`` empty while pending or if rejected)."""

    id: str
    status: str  # a JobStatus, or PENDING / REJECTED
    progress: float = 0.0
    output_url: str | None = None
    error_type: str | None = None  # a JobErrorType, or for a rejected row an ApiErrorType
    error_message: str | None = None


@dataclass(frozen=True)
class BatchResult:
    row: ManifestRow
    state: JobState


def batches_dir(settings: Settings) -> Path:
    return settings.data_dir / "batches"


def batch_ledger(settings: Settings, batch: str) -> dict[str, Any] | None:
    path = batches_dir(settings) / f"{batch}.json"
    if "/" in batch or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def list_batches(settings: Settings) -> list[dict[str, Any]]:
    """Every ledger on this node, newest first."""
    folder = batches_dir(settings)
    ledgers = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            ledger = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("batch ledger %s skipped: %s", path, exc)
            continue
        if isinstance(ledger, dict) and "id" in ledger and isinstance(ledger.get("rows"), list):
            ledgers.append(ledger)
        else:
            log.warning("batch ledger %s skipped: not a ledger", path)
    return sorted(ledgers, key=lambda ledger: ledger.get("created_at", 0), reverse=True)


def batch_outcome(states: Iterable[str]) -> BatchOutcome:
    """The batch as a whole from its rows' states (job statuses, pending or rejected):
    what tells a partial success from a failure, which Ray's own job list can't (any
    non-zero exit of the driver is FAILED there)."""
    states = list(states)
    if any(state not in TERMINAL for state in states):
        return BatchOutcome.RUNNING
    completed = sum(state == JobStatus.COMPLETED for state in states)
    if states and completed == len(states):
        return BatchOutcome.COMPLETED
    if completed:
        return BatchOutcome.PARTIAL
    if states and all(state == JobStatus.CANCELED for state in states):
        return BatchOutcome.CANCELED
    return BatchOutcome.FAILED


async def current_rows(store: JobStore, ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger's rows with each job's status as the store has it now (the ledger
    keeps what the batch last saw; its jobs go on after the batch's driver stops)."""
    rows = []
    for row in ledger.get("rows") or []:
        # A row the ledger saw end never changes again: only the others are read.
        unfinished = row.get("job_id") and row.get("status") not in TERMINAL
        job = await store.get_job(row["job_id"]) if unfinished else None
        rows.append({**row, "status": str(job.status) if job is not None else row["status"]})
    return rows


async def batch_view(store: JobStore, ledger: dict[str, Any]) -> dict[str, Any]:
    """A batch as ``retroiva batches list`` and the Dashboard (pages and JSON) show it:
    the ledger's rows with their jobs' statuses now, their counts, and the outcome."""
    rows = await current_rows(store, ledger)
    return {
        "id": ledger["id"],
        "object": "batch",
        "outcome": batch_outcome(row["status"] for row in rows),
        "counts": dict(Counter(row["status"] for row in rows)),
        "manifest": ledger.get("manifest"),
        "key_id": ledger.get("key_id"),
        "created_at": ledger.get("created_at"),
        "finished_at": ledger.get("finished_at"),
        "rows": rows,
    }


def missing_store(settings: Settings) -> str | None:
    """Why opening the store would make a new, empty one, or None.

    A batch, like the operator commands, must find the store the service already has:
    an empty one in the wrong place would only refuse the key (or, worse, take jobs
    that no runner ever sees).
    """
    if settings.mongodb_uri or settings.sqlite_path.exists():
        return None
    given = os.environ.get("RETROIVA_DATA_DIR")
    hint = (
        f" RETROIVA_DATA_DIR={given!r} is relative, so it depends on the working "
        "directory (Ray runs a job's entrypoint in its own copy of --working-dir):"
        " make it absolute in the env file"
        if given and not Path(given).is_absolute()
        else " set RETROIVA_DATA_DIR (absolute) to the service's data directory in "
        "the environment of `ray start`, or run the batch where the service runs"
    )
    return f"no job store at {settings.sqlite_path} (cwd {Path.cwd()}).{hint}"


class StoreJobQueue:
    """The job store, opened for one batch under one API key."""

    def __init__(self, api_key: str, settings: Settings | None = None) -> None:
        self._token = api_key
        self._settings = settings or Settings()
        # Before the store or storage is opened: either may create the data directory.
        if problem := missing_store(self._settings):
            raise QueueRefused(problem)
        self._store = open_store(self._settings)
        self._storage = open_storage(self._settings)
        self._key: ApiKeyRecord | None = None
        self._created_at = time.time()

    async def open(self) -> None:
        await self._store.init()
        try:
            self._key = await active_key(self._store, self._token)
        except AuthenticationError as exc:
            raise QueueRefused(str(exc)) from None

    async def submit(self, row: ManifestRow) -> JobState:
        """Create (or find, by ``row.idempotency_key``) the job of ``row`` (defaults
        applied); :class:`RowRejected`, with the API's error type, if the service refuses it."""
        assert self._key is not None, "open() first"
        try:
            job, _ = await submit_job(
                self._store,
                self._key,
                row.spec(),
                row.idempotency_key,
                self._settings.url_policy,
            )
        except ApiError as exc:
            raise RowRejected(exc.message, ApiErrorType(exc.type)) from None
        return await self._job_state(job)

    async def record(
        self, batch: str, manifest: str, results: list[BatchResult], *, finished: bool
    ) -> None:
        assert self._key is not None, "open() first"
        ledger = {
            "id": batch,
            "object": "batch",
            "manifest": manifest,
            "key_id": self._key.id,
            "created_at": self._created_at,
            "finished_at": time.time() if finished else None,
            "rows": [
                {
                    "line": r.row.line,
                    "video_url": r.row.video_url,
                    "job_id": r.state.id or None,
                    "status": r.state.status,
                }
                for r in results
            ],
        }
        folder = private_dir(batches_dir(self._settings))
        partial = folder / f".{batch}.json.{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(ledger, out)
        os.replace(partial, folder / f"{batch}.json")

    async def state(self, job_id: str) -> JobState:
        job = await self._store.get_job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished from the store")
        return await self._job_state(job)

    async def _job_state(self, job: JobRecord) -> JobState:
        link = await asyncio.to_thread(
            download_link,
            job,
            self._storage,
            self._settings.retention_seconds,
            self._settings.public_base_url,
        )
        return JobState(
            id=job.id,
            status=str(job.status),
            progress=job.progress,
            output_url=link.url if link else None,
            error_type=job.error_type,
            error_message=job.error_message,
        )

    async def close(self) -> None:
        await self._store.close()
