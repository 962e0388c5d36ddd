"""An upload's life around its job: claimed by one job, deleted when that job ends
however it ends, or when it expires unused (zero retention)."""

from __future__ import annotations

import asyncio
import logging
import time

from serve_app.delivery.upload_storage import UploadStorage
from serve_app.errors import GoneError, InvalidRequestError, NotFoundError
from serve_app.jobs.records import ApiKeyRecord, JobRecord, UploadRecord
from serve_app.jobs.store import IDEMPOTENCY_WINDOW_SECONDS, JobStore

__all__ = ["claim_upload", "delete_upload", "drop_job_upload", "input_of_upload", "sweep_uploads"]

log = logging.getLogger(__name__)


def input_of_upload(upload_id: str) -> str:
    """What a job made from an upload shows as its ``input_url``."""
    return f"upload:{upload_id}"


async def delete_upload(store: JobStore, storage: UploadStorage, upload: UploadRecord) -> None:
    """Delete the upload's bytes, then its record (so a failure leaves it findable)."""
    await asyncio.to_thread(storage.delete, upload.id)
    await store.delete_upload(upload.id)


async def claim_upload(
    store: JobStore, key: ApiKeyRecord, upload_id: str, job_id: str, idempotency_key: str | None
) -> bool:
    """Give the key's complete upload to the new job ``job_id``.

    Returns False when the upload already belongs to this key's job with the same
    idempotency key (a replay: the caller returns that job).  Raises
    :class:`NotFoundError` for an unknown or other key's upload,
    :class:`GoneError` for an expired one, :class:`InvalidRequestError` for an
    unfinished one or one another job took.
    """
    now = time.time()
    upload = await store.get_upload(upload_id)
    if upload is None or upload.key_id != key.id:
        raise NotFoundError(f"no such upload: {upload_id}", param="upload_id")
    if upload.job_id is not None:
        taken_by = await store.get_job(upload.job_id)
        if (
            idempotency_key is not None
            and taken_by is not None
            and taken_by.idempotency_key == idempotency_key
            and taken_by.created_at > now - IDEMPOTENCY_WINDOW_SECONDS
        ):
            return False
        raise InvalidRequestError(
            f"upload {upload_id} was already used by job {upload.job_id}; an upload feeds one job",
            param="upload_id",
        )
    if upload.expires_at <= now:
        raise GoneError(f"upload {upload_id} expired unfinished or unused and was deleted")
    if upload.offset < upload.size:
        raise InvalidRequestError(
            f"upload {upload_id} is not complete: {upload.offset} of {upload.size} bytes received",
            param="upload_id",
        )
    if not await store.claim_upload(upload_id, job_id, now):
        raise InvalidRequestError(
            f"upload {upload_id} was taken by another job or expired just now", param="upload_id"
        )
    return True


async def sweep_uploads(store: JobStore, storage: UploadStorage, now: float) -> int:
    """Delete uploads that expired unused and those whose job has ended."""
    swept = 0
    for batch in (
        await store.expired_uploads(now, 100),
        await store.uploads_of_ended_jobs(now, 100),
    ):
        for upload in batch:
            await delete_upload(store, storage, upload)
            swept += 1
    if swept:
        log.info("deleted %d uploads (expired, or their job ended)", swept)
    return swept


async def drop_job_upload(store: JobStore, storage: UploadStorage, job: JobRecord) -> None:
    """Zero retention: the upload a job took goes when the job ends."""
    if job.upload_id is None:
        return
    upload = await store.get_upload(job.upload_id)
    if upload is not None and upload.job_id == job.id:
        await delete_upload(store, storage, upload)
