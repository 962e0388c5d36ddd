"""``Client``: the entry point, holding the key, the service URL and the retry policy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from retroiva_client._http import RetryPolicy, Transport, new_idempotency_key
from retroiva_client.jobs import Job, Jobs
from retroiva_client.uploads import DEFAULT_CHUNK_SIZE, Upload, create_upload, upload_file

__all__ = ["DEFAULT_BASE_URL", "Client"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"  # what `make serve` listens on


class Client:
    """A Retroiva API client.

    ``api_key`` defaults to ``$RETROIVA_API_KEY`` and ``base_url`` to
    ``$RETROIVA_BASE_URL`` (else ``http://127.0.0.1:8000``).  Requests are retried
    ``max_retries`` times on 429 and 5xx answers (waiting ``Retry-After`` when the
    service sends it) and on dropped connections; every create carries an
    ``Idempotency-Key``, kept across its retries, so a retry never makes a second job.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        key = api_key or os.environ.get("RETROIVA_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key or set RETROIVA_API_KEY")
        self.base_url = (
            base_url or os.environ.get("RETROIVA_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/")
        self._transport = Transport(
            key,
            self.base_url,
            timeout=timeout,
            retry=retry or RetryPolicy(max_retries=max_retries),
            http=http_client,
        )
        self.jobs = Jobs(self._transport)

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def enhance(
        self,
        video_url: str | None = None,
        *,
        upload_id: str | None = None,
        preset: str | None = None,
        upscale_factor: int | None = None,
        engine: str | None = None,
        webhook_url: str | None = None,
        cancel_after: int | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Create a job (``POST /v2/enhance``) from ``video_url`` or ``upload_id``.

        Only the fields given are sent, so the service's defaults apply to the rest;
        ``fields`` passes any other body field as it is.  ``idempotency_key`` defaults
        to a fresh one per call.
        """
        if (video_url is None) == (upload_id is None):
            raise ValueError("give exactly one of video_url and upload_id")
        body: dict[str, Any] = {
            "video_url": video_url,
            "upload_id": upload_id,
            "preset": preset,
            "upscale_factor": upscale_factor,
            "engine": engine,
            "webhook_url": webhook_url,
            "cancel_after": cancel_after,
            **fields,
        }
        body = {name: value for name, value in body.items() if value is not None}
        response = self._transport.request(
            "POST",
            "/v2/enhance",
            json=body,
            headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
        )
        return Job.from_api(response.json(), self._transport)

    def upload_file(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        upload_url: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Upload:
        """Upload a local file with tus resumable uploads; see :mod:`.uploads`."""
        return upload_file(
            self._transport,
            path,
            chunk_size=chunk_size,
            upload_url=upload_url,
            on_progress=on_progress,
        )

    def create_upload(self, path: str | os.PathLike[str]) -> Upload:
        """Create an upload without sending bytes; keep ``upload_url`` to resume from
        another process with ``upload_file(path, upload_url=...)``."""
        return create_upload(self._transport, path)

    def enhance_file(
        self,
        path: str | os.PathLike[str],
        *,
        on_upload_progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> Job:
        """Upload ``path`` and create a job from it: ``upload_file`` then ``enhance``."""
        upload = self.upload_file(Path(path), on_progress=on_upload_progress)
        return self.enhance(upload_id=upload.id, **options)

    def get_upload(self, upload_id: str) -> Upload:
        return Upload.from_api(self._transport.request("GET", f"/v2/uploads/{upload_id}").json())
