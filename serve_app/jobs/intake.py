"""Admitting work: API-key lookup and job creation, shared by the API, batch manifests
and the dashboard.

Every door hands over a :class:`~serve_app.jobs.job_spec.JobSpec` (never an HTTP body)
and gets the same checks (URL policy, idempotency, request hash), so a job made from a
manifest row is indistinguishable from one posted to ``/v2/enhance``.
"""

from __future__ import annotations

import time

from serve_app.access.keys import digest_key, keys_match, new_id
from serve_app.delivery.fetch import FetchError, UrlPolicy, resolve_checked
from serve_app.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    QueueLimitError,
)
from serve_app.jobs.job_spec import JobSpec
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.store import JobStore, QueueFull
from serve_app.jobs.upload_lifecycle import claim_upload, input_of_upload

__all__ = ["MAX_IDEMPOTENCY_KEY", "active_key", "submit_job"]

MAX_IDEMPOTENCY_KEY = 255


async def active_key(store: JobStore, token: str) -> ApiKeyRecord:
    """The unrevoked key whose secret is ``token``; :class:`AuthenticationError` if none."""
    digest = digest_key(token.strip())
    key = await store.key_by_digest(digest)
    if key is None or not keys_match(digest, key.digest):
        raise AuthenticationError("invalid API key")
    if key.revoked_at is not None:
        raise AuthenticationError("this API key has been revoked")
    return key


async def submit_job(
    store: JobStore,
    key: ApiKeyRecord,
    spec: JobSpec,
    idempotency_key: str | None,
    policy: UrlPolicy,
    max_queued: int | None = None,
) -> tuple[JobRecord, bool]:
    """Queue ``spec`` for ``key``; returns ``(job, created)``.

    A repeated idempotency key returns the first job (``created`` False) when the spec
    is the same and raises :class:`ConflictError` when it is not.  A key with
    ``max_queued`` jobs queued already (its own limit, else this one) gets
    :class:`QueueLimitError`.
    """
    for field, url in (("video_url", spec.video_url), ("webhook_url", spec.webhook_url)):
        if url is not None:
            try:
                await resolve_checked(url, policy)
            except FetchError as exc:
                raise InvalidRequestError(str(exc), param=field) from None
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequestError(
            "Idempotency-Key must be 1–255 characters", param="Idempotency-Key"
        )
    now = time.time()
    job_id = new_id("job")
    claimed = spec.upload_id is not None and await claim_upload(
        store, key, spec.upload_id, job_id, idempotency_key
    )
    input_url = spec.video_url if spec.upload_id is None else input_of_upload(spec.upload_id)
    assert input_url is not None  # a JobSpec has exactly one of the two
    job = spec.new_job(job_id, key.id, input_url, idempotency_key, now)
    limit = key.max_queued or max_queued
    try:
        stored, created = await store.insert_job(job, now, limit)
    except QueueFull as exc:
        if claimed:
            await store.release_upload(job.upload_id or "", job.id)
        raise QueueLimitError(str(exc), limit=exc.limit) from None
    if claimed and not created:  # raced with the first request of this idempotency key
        await store.release_upload(job.upload_id or "", job.id)
    if not created and stored.request_hash != job.request_hash:
        raise ConflictError(
            "Idempotency-Key was already used with a different body", param="Idempotency-Key"
        )
    return stored, created
