"""Resumable uploads: the client side of tus 1.0 (core + creation) over httpx.

``POST /v2/uploads`` (``Upload-Length``, ``Upload-Metadata: filename <base64>``)
creates the upload and answers its URL in ``Location``; the bytes then go in
``PATCH`` requests of ``chunk_size`` bytes, each at the offset the server holds.
When a PATCH fails (connection dropped, 409 offset mismatch, 5xx) the client asks
``HEAD`` for the server's ``Upload-Offset`` and carries on from there: bytes the
server already kept are not sent again, and a chunk the server lost is.  An upload
interrupted for longer (the process died) resumes with ``upload_file(path,
upload_url=...)`` until it expires.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from retroiva_client._http import new_idempotency_key
from retroiva_client.errors import (
    APIConnectionError,
    APIError,
    RetroivaError,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from retroiva_client._http import Transport

__all__ = ["DEFAULT_CHUNK_SIZE", "TUS_VERSION", "Upload", "create_upload", "upload_file"]

TUS_VERSION = "1.0.0"
DEFAULT_CHUNK_SIZE = 8 << 20  # 8 MiB: few round trips, little to resend after a drop


@dataclass(repr=False)
class Upload:
    """An upload object: ``id`` goes to ``client.enhance(upload_id=...)``."""

    id: str
    status: str
    size: int
    offset: int
    filename: str | None = None
    upload_url: str | None = None
    created_at: Any = None
    expires_at: Any = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Upload:
        return cls(
            id=data["id"],
            status=data["status"],
            size=int(data["size"]),
            offset=int(data["offset"]),
            filename=data.get("filename"),
            upload_url=data.get("upload_url"),
            created_at=data.get("created_at"),
            expires_at=data.get("expires_at"),
            raw=data,
        )

    def __repr__(self) -> str:
        return f"Upload(id={self.id!r}, status={self.status!r}, offset={self.offset}/{self.size})"


def _tus(**headers: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **headers}


def _offset(response: httpx.Response) -> int:
    value = response.headers.get("upload-offset", "")
    if not value.isascii() or not value.isdigit():
        raise RetroivaError(f"the server sent no valid Upload-Offset (got {value!r})")
    return int(value)


def create_upload(transport: Transport, path: str | os.PathLike[str]) -> Upload:
    """Create an upload for ``path`` (``POST /v2/uploads``) without sending bytes.

    Keep its ``upload_url``: ``upload_file(path, upload_url=...)`` sends the bytes,
    and resumes there from any process until the upload expires.
    """
    source = Path(path)
    encoded = base64.b64encode(source.name.encode()).decode()
    response = transport.request(
        "POST",
        "/v2/uploads",
        headers=_tus(
            **{
                "Upload-Length": str(source.stat().st_size),
                "Upload-Metadata": f"filename {encoded}",
                "Idempotency-Key": new_idempotency_key(),
            }
        ),
    )
    location = response.headers.get("location")
    if not location:
        raise RetroivaError("POST /v2/uploads answered without a Location header")
    upload = Upload.from_api(response.json())
    upload.upload_url = str(response.url.join(location))
    return upload


def _server_offset(transport: Transport, url: str) -> int:
    return _offset(transport.request("HEAD", url, headers=_tus()))


def upload_file(
    transport: Transport,
    path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    upload_url: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Upload:
    """Upload ``path`` and return the completed upload object.

    ``upload_url`` resumes an earlier upload of the same file.  ``on_progress(sent,
    total)`` is called after each chunk the server confirms.  A chunk is retried
    (after a HEAD) up to the transport's ``max_retries`` times in a row without
    progress; then the last error is raised, and the upload can still be resumed.
    """
    source = Path(path)
    size = source.stat().st_size
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if upload_url is None:
        url, offset = str(create_upload(transport, source).upload_url), 0
    else:
        url, offset = upload_url, _server_offset(transport, upload_url)
    failures = 0
    with source.open("rb") as data:
        while offset < size:
            data.seek(offset)
            chunk = data.read(chunk_size)
            delay: float | None = None
            try:
                response = transport.request(
                    "PATCH",
                    url,
                    content=chunk,
                    headers=_tus(
                        **{
                            "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset),
                        }
                    ),
                )
            except (APIConnectionError, APIError) as exc:
                status = getattr(exc, "status", None)
                # 4xx other than 409 (offset mismatch), 423 (locked) and 429 will not
                # change on a retry: too large, expired, unknown, forbidden.
                if status is not None and status < 500 and status not in (409, 423, 429):
                    raise
                if failures >= transport.retry.max_retries:
                    raise
                if isinstance(exc, APIError):
                    delay = retry_after_seconds(exc.headers)
                failures += 1
                transport.sleep(
                    delay if delay is not None else transport.retry.backoff(failures - 1)
                )
                offset = _server_offset(transport, url)  # what the server really kept
                continue
            offset = _offset(response)
            failures = 0
            if on_progress is not None:
                on_progress(offset, size)
    return Upload.from_api(transport.request("GET", url).json())
