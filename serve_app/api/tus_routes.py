"""Direct, resumable uploads: the tus 1.0 protocol (core, creation, expiration,
termination) under ``/v2/uploads``, and the upload's life around its job.

An upload's record (size, offset, owner, expiry, the job that took it) is in the job
store, so every Serve replica sees the same offset; its bytes are in upload storage
(:mod:`serve_app.delivery.upload_storage`).  A chunk is written at the recorded offset first
and counted second, by a compare-and-set on the offset: a chunk sent twice, or two
replicas racing, can never move the offset past bytes that are not there.  A dropped
connection keeps what arrived (counted as it is flushed), so the client resumes from
``HEAD``'s ``Upload-Offset``.

Zero retention: an upload is deleted (bytes, then record) when the job that took it
ends, however it ends, and an upload no job took is deleted once it expires (refused
from then on with 410).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from serve_app.access.keys import new_id
from serve_app.api.schemas import UploadBody, upload_from_record
from serve_app.delivery.upload_storage import UploadOutOfStep, UploadStorage
from serve_app.errors import (
    ApiError,
    ConflictError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    QueueLimitError,
)
from serve_app.jobs.records import ApiKeyRecord, UploadRecord
from serve_app.jobs.upload_lifecycle import delete_upload

if TYPE_CHECKING:
    from serve_app.api.app import Api

__all__ = [
    "TUS_VERSION",
    "UploadRoutes",
    "tus_error_headers",
]

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
# Bytes of a PATCH held in memory before they are written and counted: large enough
# for S3's part sizes, small enough that many uploads at once stay cheap.
FLUSH_BYTES = 8 * 1024 * 1024


class TusVersionError(InvalidRequestError):
    """The client speaks a tus version other than 1.0.0."""

    status = 412


class UnsupportedMediaTypeError(InvalidRequestError):
    """A PATCH whose body is not ``application/offset+octet-stream``."""

    status = 415


def _rate_headers(request: Request) -> dict[str, str]:
    return getattr(request.state, "rate_headers", {})


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _header_int(request: Request, name: str) -> int:
    text = request.headers.get(name, "")
    if not 0 < len(text) <= 19 or not text.isascii() or not text.isdigit():
        raise InvalidRequestError(f"{name} must be a non-negative integer", param=name)
    return int(text)


def _filename(metadata: str) -> str | None:
    """The ``filename`` of a tus ``Upload-Metadata`` header (``key base64,…``)."""
    for pair in metadata.split(","):
        name, _, value = pair.strip().partition(" ")
        if name == "filename" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidRequestError(
                    "Upload-Metadata filename must be base64 UTF-8", param="Upload-Metadata"
                ) from None
            return decoded[:255]
    return None


async def _outliving_cancel(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(work)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.info("keeping the bytes of a dropped PATCH failed: %s", done.exception())

    task.add_done_callback(report)
    await asyncio.shield(task)


async def _body_pieces(request: Request) -> AsyncIterator[bytes]:
    """The request body's pieces; a transport that breaks mid-body ends it as a client
    disconnect does.  Behind Ray Serve the proxy's drop can reach the handler not as
    ``http.disconnect`` but as the exception of the replica's cancelled receive task
    (``ray.exceptions.TaskCancelledError``), and the bytes that arrived before it are the
    client's all the same."""
    try:
        async for piece in request.stream():
            yield piece
    except ClientDisconnect:
        raise
    except Exception as broken:
        log.info(
            "a PATCH body broke off (%s: %s); keeping what arrived", type(broken).__name__, broken
        )
        raise ClientDisconnect() from broken


class UploadRoutes:
    """The ``/v2/uploads`` handlers; they share the API's auth, store and responses."""

    def __init__(self, api: Api, storage: UploadStorage) -> None:
        self.api = api
        self.storage = storage
        self._locks: dict[str, asyncio.Lock] = {}  # one PATCH per upload per replica

    def _url(self, request: Request, upload_id: str) -> str:
        return f"{self.api.base_url(request).rstrip('/')}/v2/uploads/{upload_id}"

    @staticmethod
    def _check_version(request: Request) -> None:
        version = request.headers.get("tus-resumable")
        if version is not None and version != TUS_VERSION:
            raise TusVersionError(
                f"Tus-Resumable {version!r} is not supported; this server speaks {TUS_VERSION}",
                param="Tus-Resumable",
            )

    def _headers(self, upload: UploadRecord) -> dict[str, str]:
        return {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.size),
            "Upload-Expires": _http_date(upload.expires_at),
        }

    async def _own(self, request: Request, key: ApiKeyRecord) -> UploadRecord:
        """The key's upload named in the path; 404 for others', 410 once expired."""
        upload_id = request.path_params["upload_id"]
        store = await self.api._store()
        upload = await store.get_upload(upload_id)
        if upload is None or upload.key_id != key.id:
            raise NotFoundError(f"no such upload: {upload_id}", param="upload_id")
        if upload.job_id is None and upload.expires_at <= time.time():
            await delete_upload(store, self.storage, upload)
            raise GoneError(f"upload {upload_id} expired and was deleted")
        return upload

    def _object(
        self,
        request: Request,
        upload: UploadRecord,
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> Response:
        return self.api._json(
            request,
            upload_from_record(upload, self._url(request, upload.id)),
            status,
            {"Tus-Resumable": TUS_VERSION, **(extra or {})},
        )

    # Routes
    async def options(self, request: Request) -> Response:
        """tus discovery; no key needed (browsers send it as a CORS preflight)."""
        return Response(
            status_code=204,
            headers={
                "Tus-Resumable": TUS_VERSION,
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(self.api.settings.max_input_bytes),
            },
        )

    async def create(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        self._check_version(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            data = await self.api._json_body(request)
            try:
                body = UploadBody.model_validate(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InvalidRequestError(
                    first["msg"], param=".".join(str(p) for p in first["loc"]) or None
                ) from None
            size, filename, param = body.size, body.filename, "size"
        else:
            if "upload-defer-length" in request.headers:
                raise InvalidRequestError(
                    "Upload-Defer-Length is not supported; send Upload-Length",
                    param="Upload-Defer-Length",
                )
            size = _header_int(request, "Upload-Length")
            filename = _filename(request.headers.get("upload-metadata", ""))
            param = "Upload-Length"
            if size == 0:
                raise InvalidRequestError("Upload-Length must be at least 1", param=param)
        limit = self.api.settings.max_input_bytes
        if size > limit:
            raise PayloadTooLargeError(
                f"the upload is {size} bytes; the limit (MAX_INPUT_BYTES) is {limit}", param=param
            )
        now = time.time()
        store = await self.api._store()
        # Each open upload may hold MAX_INPUT_BYTES for a day: bound how many one key
        # holds, so one key can't fill the disk (or the bucket) for every tenant.
        # Counted, then inserted: two racing creates may pass one over, never more.
        cap = self.api.settings.max_open_uploads
        if await store.open_uploads(key.id, now) >= cap:
            raise QueueLimitError(
                f"this key already holds {cap} unfinished or unused "
                "uploads (MAX_OPEN_UPLOADS); finish one and use it in "
                "a job, or DELETE it, first",
                limit=cap,
                param="max_open_uploads",
            )
        upload = UploadRecord(
            id=new_id("upl"),
            key_id=key.id,
            size=size,
            offset=0,
            created_at=now,
            expires_at=now + self.api.settings.upload_expiry_seconds,
            filename=filename,
        )
        # The record first: bytes without one could never be found and deleted.
        await store.insert_upload(upload)
        await asyncio.to_thread(self.storage.create, upload.id, size)
        return self._object(
            request,
            upload,
            201,
            {
                "Location": self._url(request, upload.id),
                "Upload-Expires": _http_date(upload.expires_at),
            },
        )

    async def head(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        upload = await self._own(request, key)
        return Response(
            status_code=200,
            headers={
                **_rate_headers(request),
                **self._headers(upload),
                "Cache-Control": "no-store",
            },
        )

    async def get(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        return self._object(request, await self._own(request, key))

    async def delete(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        self._check_version(request)
        upload = await self._own(request, key)
        if upload.job_id is not None:
            raise ConflictError(
                f"upload {upload.id} is the input of job {upload.job_id}; "
                "it is deleted when the job ends (cancel the job)"
            )
        await delete_upload(await self.api._store(), self.storage, upload)
        return Response(
            status_code=204, headers={**_rate_headers(request), "Tus-Resumable": TUS_VERSION}
        )

    async def patch(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        self._check_version(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/offset+octet-stream":
            raise UnsupportedMediaTypeError(
                "Content-Type must be application/offset+octet-stream", param="Content-Type"
            )
        offset = _header_int(request, "Upload-Offset")
        upload = await self._own(request, key)
        lock = self._locks.setdefault(upload.id, asyncio.Lock())
        try:
            async with lock:  # re-read under the lock: the last holder moved the offset
                upload = await self._write(request, await self._own(request, key), offset)
        finally:
            if not lock.locked():
                self._locks.pop(upload.id, None)
        return Response(
            status_code=204, headers={**_rate_headers(request), **self._headers(upload)}
        )

    async def _write(self, request: Request, upload: UploadRecord, offset: int) -> UploadRecord:
        """Write the body at ``offset``, counting each flushed piece; keep what arrived
        if the client goes away."""
        if upload.job_id is not None:
            raise ConflictError(f"upload {upload.id} is complete and in use by a job")
        if offset != upload.offset:
            raise ConflictError(
                f"Upload-Offset is {offset} but the upload is at "
                f"{upload.offset}; resume from HEAD's Upload-Offset",
                param="Upload-Offset",
            )
        room = upload.size - upload.offset
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > room:
            raise PayloadTooLargeError(
                f"the body ({declared} bytes) goes past Upload-Length ({upload.size})",
                param="Upload-Length",
            )
        store = await self.api._store()
        buffer = bytearray()

        async def flush() -> None:
            nonlocal upload, buffer
            if not buffer:
                return
            data, buffer = bytes(buffer), bytearray()
            try:
                await asyncio.to_thread(
                    self.storage.write, upload.id, upload.size, upload.offset, data
                )
            except UploadOutOfStep:
                raise ConflictError(
                    f"upload {upload.id} moved on while this request "
                    "waited; resume from HEAD's Upload-Offset",
                    param="Upload-Offset",
                ) from None
            moved = await store.advance_upload(upload.id, upload.offset, upload.offset + len(data))
            if moved is None:
                raise ConflictError(
                    f"upload {upload.id} was written by another request "
                    "at the same time; resume from HEAD's Upload-Offset",
                    param="Upload-Offset",
                )
            upload = moved

        too_long = False
        try:
            async for piece in _body_pieces(request):
                fits = upload.size - upload.offset - len(buffer)
                if len(piece) > fits:
                    buffer += piece[:fits]
                    too_long = True
                    break
                buffer += piece
                if len(buffer) >= FLUSH_BYTES:
                    await flush()
        except (ClientDisconnect, asyncio.CancelledError) as gone:
            # What arrived stays: the client resumes from the offset HEAD reports.  Ray
            # Serve cancels the handler when the client goes (at once, or while this
            # flush runs), so the flush is shielded and finishes on its own.
            await _outliving_cancel(flush())
            if isinstance(gone, asyncio.CancelledError):
                raise
            return upload  # the response goes nowhere: there is no one left to tell
        await flush()
        if too_long:
            raise PayloadTooLargeError(
                f"the body goes past Upload-Length ({upload.size}); "
                f"kept the first {upload.offset} bytes",
                param="Upload-Length",
            )
        return upload


def tus_error_headers(error: ApiError) -> dict[str, str]:
    """tus asks for ``Tus-Version`` on a 412."""
    return {"Tus-Version": TUS_VERSION} if isinstance(error, TusVersionError) else {}
