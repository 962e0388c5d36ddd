"""Admitting work: API-key lookup and job creation, shared by the API and batch manifests.

Both doors apply the same checks (URL policy, idempotency, body hash), so a job made
from a manifest row is indistinguishable from one posted to ``/v2/enhance``.
"""

from __future__ import annotations

import hashlib
import json
import time

from pipelines.presets import PRESETS
from serve_app.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    QueueLimitError,
)
from serve_app.fetch import FetchError, UrlPolicy, resolve_checked
from serve_app.keys import digest_key, keys_match, new_id
from serve_app.records import ApiKeyRecord, JobRecord, JobStatus
from serve_app.schemas import EnhanceBody
from serve_app.store import JobStore, QueueFull

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


async def submit_job(store: JobStore, key: ApiKeyRecord, body: EnhanceBody,
                     idempotency_key: str | None, policy: UrlPolicy,
                     max_queued: int | None = None) -> tuple[JobRecord, bool]:
    """Queue ``body`` for ``key``; returns ``(job, created)``.

    A repeated idempotency key returns the first job (``created`` False) when the body
    is the same and raises :class:`ConflictError` when it is not.  A key with
    ``max_queued`` jobs queued already (its own limit, else this one) gets
    :class:`QueueLimitError`.
    """
    for field, url in (("video_url", body.video_url), ("webhook_url", body.webhook_url)):
        if url is not None:
            try:
                resolve_checked(url, policy)
            except FetchError as exc:
                raise InvalidRequestError(str(exc), param=field) from None
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequestError("Idempotency-Key must be 1–255 characters",
                                  param="Idempotency-Key")
    factor = body.upscale_factor or PRESETS[body.preset].upscale_factor
    request_hash = hashlib.sha256(
        json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
    now = time.time()
    job = JobRecord(id=new_id("job"), key_id=key.id, status=JobStatus.QUEUED,
                    input_url=body.video_url, preset=body.preset, upscale_factor=factor,
                    created_at=now, created_seq=time.time_ns(),
                    webhook_url=body.webhook_url, idempotency_key=idempotency_key,
                    request_hash=request_hash, engine=body.engine)
    limit = key.max_queued or max_queued
    try:
        stored, created = await store.insert_job(job, now, limit)
    except QueueFull as exc:
        raise QueueLimitError(str(exc), limit=exc.limit) from None
    if not created and stored.request_hash != request_hash:
        raise ConflictError("Idempotency-Key was already used with a different body",
                            param="Idempotency-Key")
    return stored, created
