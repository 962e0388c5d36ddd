"""The job store as a :class:`pipelines.batch.JobQueue`: manifest rows become API jobs.

Registered as the ``retroiva.job_queues`` entry point ``store`` in pyproject.toml, so
``python -m pipelines.batch`` finds it without :mod:`pipelines` importing this package.
Settings (store, storage, URL policy, public URL) come from ``RETROIVA_*`` variables,
the same ones the service reads.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from pipelines.batch import JobState, ManifestRow, QueueRefused, RowRejected
from serve_app.errors import ApiError, AuthenticationError
from serve_app.job_intake import active_key, submit_job
from serve_app.records import ApiKeyRecord, JobRecord
from serve_app.schemas import EnhanceBody
from serve_app.settings import Settings
from serve_app.storage import download_link, open_storage
from serve_app.store import open_store

__all__ = ["StoreJobQueue"]


class StoreJobQueue:
    def __init__(self, api_key: str, settings: Settings | None = None) -> None:
        self._token = api_key
        self._settings = settings or Settings()
        self._store = open_store(self._settings)
        self._storage = open_storage(self._settings)
        self._key: ApiKeyRecord | None = None

    async def open(self) -> None:
        await self._store.init()
        try:
            self._key = await active_key(self._store, self._token)
        except AuthenticationError as exc:
            raise QueueRefused(str(exc)) from None

    async def submit(self, row: ManifestRow, preset: str | None,
                     upscale_factor: int | None) -> JobState:
        assert self._key is not None, "open() first"
        fields = {"video_url": row.video_url, "preset": row.preset or preset,
                  "upscale_factor": row.upscale_factor or upscale_factor,
                  "webhook_url": row.webhook_url, "engine": row.engine}
        try:
            body = EnhanceBody.model_validate({k: v for k, v in fields.items()
                                               if v is not None})
            job, _ = await submit_job(self._store, self._key, body, row.idempotency_key,
                                      self._settings.url_policy)
        except ValidationError as exc:
            raise RowRejected(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        except ApiError as exc:
            raise RowRejected(str(exc)) from None
        return await self._job_state(job)

    async def state(self, job_id: str) -> JobState:
        job = await self._store.get_job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished from the store")
        return await self._job_state(job)

    async def _job_state(self, job: JobRecord) -> JobState:
        base_url = self._settings.public_url or \
            f"http://{self._settings.host}:{self._settings.port}"
        link = await asyncio.to_thread(download_link, job, self._storage,
                                       self._settings.retention_seconds, base_url)
        return JobState(id=job.id, status=str(job.status), progress=job.progress,
                        output_url=link.url if link else None, error_type=job.error_type,
                        error_message=job.error_message)

    async def close(self) -> None:
        await self._store.close()
