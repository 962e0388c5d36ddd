"""The v2 HTTP API as a Starlette app: routes, auth, rate limits and the error mapping.

Every error leaves through :func:`_error_response`, the one place that turns typed
errors into status codes and ``{"error": {"type", "message", "param"?}}`` bodies.
Every response carries ``X-Request-Id``; every authenticated one, 2xx or 4xx, carries
the rate-limit headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    Response,
)
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.access.keys import rotate_webhook_secret
from serve_app.api import openapi as doc
from serve_app.api.openapi import Endpoint, openapi_document
from serve_app.api.schemas import (
    DeliveryPage,
    Download,
    EventList,
    Job,
    JobList,
    RotatedSecret,
    event_from_record,
    iso_time,
    job_from_record,
    job_spec,
)
from serve_app.api.tus_routes import UploadRoutes, tus_error_headers
from serve_app.dashboard import create_dashboard
from serve_app.delivery.output_storage import (
    DownloadLink,
    LocalStorage,
    OutputStorage,
    download_link,
    open_storage,
)
from serve_app.delivery.signing import signature_valid
from serve_app.delivery.upload_storage import UploadStorage, open_upload_storage
from serve_app.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RangeNotSatisfiableError,
    RateLimitError,
    ServiceUnavailableError,
)
from serve_app.jobs.intake import active_key, submit_job
from serve_app.jobs.records import ApiKeyRecord, JobRecord, job_id_for_event
from serve_app.jobs.store import JobStore, StoreUnavailable, open_store
from serve_app.jobs.upload_lifecycle import drop_job_upload
from serve_app.metrics import count_rate_limited
from serve_app.settings import Settings
from vocabulary import DeliveryStatus, JobStatus

__all__ = ["api_endpoints", "create_api"]

log = logging.getLogger(__name__)
# One line per request: method, path, status, duration, request id.
access_log = logging.getLogger("retroiva.access")


def _serve_request_id() -> str | None:
    """The id Ray Serve's proxy gave this request (it returns it as X-Request-Id)."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:  # pragma: no cover - Ray is a hard dependency
        return None
    return _get_serve_request_context().request_id or None


class _RequestIdMiddleware:
    """Gives every request an id, logged with errors and returned as ``X-Request-Id``,
    and writes the request's access-log line.

    Behind Ray Serve the proxy has already chosen one (a client's own X-Request-Id, or
    a fresh one) and adds the header itself, so the app reuses that id and adds none.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        serve_id = _serve_request_id()
        request_id = serve_id or "req_" + uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if serve_id is None:
                    message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The path only, never the query string: download links carry signatures.
            access_log.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )


def _small_int(text: str, digits: int) -> int | None:
    """``text`` as a non-negative integer of at most ``digits`` ASCII digits, else None.

    ``str.isdigit`` alone lets through "²" (which int() refuses) and 5000-digit
    strings (over int()'s conversion limit): both were 500s.
    """
    if not 0 < len(text) <= digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _check_range(header: str, size: int) -> None:
    """Refuse a Range header Starlette would answer with plain text (400/416)."""
    try:
        FileResponse._parse_range_header(header, size)
    except MalformedRangeHeader as exc:
        raise InvalidRequestError(
            f"invalid Range header: {exc.content or 'malformed'}", param="Range"
        ) from None
    except RangeNotSatisfiable:
        raise RangeNotSatisfiableError(
            f"Range starts past the end of the {size}-byte file", size=size
        ) from None


def _rate_headers(request: Request) -> dict[str, str]:
    return getattr(request.state, "rate_headers", {})


# How long a client is told to wait while the store is unavailable: long enough for a
# lock holder or a failover to finish, short enough that clients notice the recovery.
_STORE_RETRY_AFTER_SECONDS = 2


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    headers = dict(_rate_headers(request))
    if isinstance(error, RateLimitError | ServiceUnavailableError):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="retroiva"'
    if isinstance(error, RangeNotSatisfiableError):
        headers["Content-Range"] = f"bytes */{error.size}"
    headers.update(tus_error_headers(error))
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class Api:
    """Route handlers over a job store; one instance per process (per Serve replica)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: OutputStorage,
        uploads: UploadStorage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.uploads = UploadRoutes(self, uploads or open_upload_storage(settings))
        self._ready = False
        self._init_lock = asyncio.Lock()
        self._init_retry_at = 0.0
        # The OpenAPI document of the route table; create_api sets it.
        self.document: dict[str, Any] = {}

    async def _store(self) -> JobStore:
        """The store, initialised once per process; StoreUnavailable while it can't be.

        One request at a time tries the initialisation, and after a failure none tries
        again for a second: an outage is not met with index builds on every request.
        """
        if self._ready:
            return self.store
        async with self._init_lock:
            if not self._ready:
                if time.monotonic() < self._init_retry_at:
                    raise StoreUnavailable(
                        "the job store could not be initialised; retrying shortly"
                    )
                try:
                    await self.store.init()
                except StoreUnavailable:
                    self._init_retry_at = time.monotonic() + 1.0
                    raise
                self._ready = True
        return self.store

    async def authenticate(self, request: Request) -> ApiKeyRecord:
        # The dashboard (serve_app.dashboard) runs these handlers for a key holder it
        # signed in: it checks their session and CSRF token, then hands over their key
        # in the request's state, which only server code can set.
        key = getattr(request.state, "dashboard_key", None)
        if key is None:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("missing API key: send 'Authorization: Bearer sk_live_…'")
            key = await active_key(await self._store(), token)
        await self._count(request, key)
        return key

    async def _count(self, request: Request, key: ApiKeyRecord) -> None:
        window_length = self.settings.rate_window_seconds
        now = time.time()
        window = math.floor(now / window_length)
        used = await (await self._store()).count_request(key.id, window, window_length)
        reset = (window + 1) * window_length
        request.state.rate_headers = {
            "X-RateLimit-Limit": str(key.rate_limit),
            "X-RateLimit-Remaining": str(max(0, key.rate_limit - used)),
            "X-RateLimit-Reset": str(reset),
        }
        if used > key.rate_limit:
            count_rate_limited()
            raise RateLimitError(
                f"rate limit of {key.rate_limit} requests per {window_length} s exceeded",
                retry_after=max(1, math.ceil(reset - now)),
            )

    def _json(
        self,
        request: Request,
        model: BaseModel,
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> Response:
        return Response(
            model.model_dump_json(),
            status_code=status,
            media_type="application/json",
            headers={**_rate_headers(request), **(extra or {})},
        )

    def base_url(self, request: Request) -> str:
        """Where clients reach us: ``public_url``, else the address this request used."""
        return self.settings.public_url or str(request.base_url)

    async def _link(self, request: Request, job: JobRecord) -> DownloadLink | None:
        return await asyncio.to_thread(
            download_link,
            job,
            self.storage,
            self.settings.retention_seconds,
            self.base_url(request),
        )

    async def _job_object(self, request: Request, job: JobRecord) -> Job:
        link = await self._link(request, job)
        return job_from_record(job, link.url if link else None)

    async def _own_job(self, request: Request, key: ApiKeyRecord) -> JobRecord:
        job = await (await self._store()).get_job(request.path_params["job_id"])
        if job is None or job.key_id != key.id:
            raise NotFoundError(f"no such job: {request.path_params['job_id']}", param="job_id")
        return job

    async def _json_body(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise InvalidRequestError("Content-Type must be application/json")
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.settings.max_body_bytes
        ):
            raise PayloadTooLargeError(f"body exceeds {self.settings.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.settings.max_body_bytes:
                raise PayloadTooLargeError(f"body exceeds {self.settings.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("body is not valid JSON") from None
        except RecursionError:
            raise InvalidRequestError("body is nested too deeply") from None

    # Routes
    async def enhance(self, request: Request) -> Response:
        key = await self.authenticate(request)
        data = await self._json_body(request)
        if not isinstance(data, dict):
            raise InvalidRequestError("body must be a JSON object")
        stored, created = await submit_job(
            await self._store(),
            key,
            job_spec(data),
            request.headers.get("idempotency-key"),
            self.settings.url_policy,
            self.settings.max_queued_per_key,
        )
        extra = {} if created else {"Idempotent-Replayed": "true"}
        return self._json(request, await self._job_object(request, stored), extra=extra)

    async def get_job(self, request: Request) -> Response:
        key = await self.authenticate(request)
        return self._json(
            request, await self._job_object(request, await self._own_job(request, key))
        )

    async def list_jobs(self, request: Request) -> Response:
        key = await self.authenticate(request)
        limit = _small_int(request.query_params.get("limit", "20"), 3)
        if limit is None or not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
        cursor = request.query_params.get("starting_after")
        store = await self._store()
        if cursor is not None:
            anchor = await store.get_job(cursor)
            if anchor is None or anchor.key_id != key.id:
                raise InvalidRequestError(f"no such job: {cursor}", param="starting_after")
        jobs, has_more = await store.list_jobs(key.id, limit, cursor)
        return self._json(
            request,
            JobList(
                data=[await self._job_object(request, j) for j in jobs],
                has_more=has_more,
                next_cursor=jobs[-1].id if has_more else None,
            ),
        )

    async def cancel_job(self, request: Request) -> Response:
        key = await self.authenticate(request)
        job = await self._own_job(request, key)
        if not job.status.is_terminal:
            job = await (await self._store()).request_cancel(job.id, time.time()) or job
            if job.status.is_terminal:  # canceled while queued: no runner will see it
                await drop_job_upload(await self._store(), self.uploads.storage, job)
        return self._json(request, await self._job_object(request, job))

    async def download(self, request: Request) -> Response:
        key = await self.authenticate(request)
        job = await self._own_job(request, key)
        if job.status != JobStatus.COMPLETED:
            raise ConflictError(f"job is {job.status}; downloads exist for completed jobs only")
        link = await self._link(request, job)
        if link is None:
            raise GoneError("the output was deleted when its retention period ended")
        return self._json(request, Download(url=link.url, expires_at=link.expires_at))

    async def file(self, request: Request) -> Response:
        """Serve a local output to the holder of a valid signed URL (no API key)."""
        if not isinstance(self.storage, LocalStorage):
            raise NotFoundError("files are served by the object store, not this API")
        key = request.path_params["key"]
        expires = _small_int(request.query_params.get("expires", ""), 12)
        signature = request.query_params.get("signature", "")
        if expires is None or not signature_valid(
            self.storage.secret, request.url.path, expires, signature
        ):
            raise ForbiddenError("invalid download signature")
        if expires <= time.time():
            raise ForbiddenError("this download link has expired")
        try:
            path = self.storage.path(key)
        except ValueError:
            raise ForbiddenError("invalid download signature") from None
        if not path.is_file():
            raise GoneError("the output was deleted when its retention period ended")
        if "range" in request.headers and "if-range" not in request.headers:
            _check_range(request.headers["range"], path.stat().st_size)
        return FileResponse(
            path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=0"}
        )

    async def events(self, request: Request) -> Response:
        """The job's webhook event (one, once the job has ended) with its attempts."""
        key = await self.authenticate(request)
        job = await self._own_job(request, key)
        events = []
        if job.webhook_status is not None and job.webhook_url and job.event_type:
            attempts = await (await self._store()).webhook_attempts(job.id)
            events.append(event_from_record(job, attempts))
        return self._json(request, EventList(data=events))

    async def redeliver(self, request: Request) -> Response:
        """Send a delivered or failed event again, same event id, fresh retries."""
        key = await self.authenticate(request)
        job = await self._own_job(request, key)
        event_id = request.path_params["event_id"]
        if (
            job.webhook_status is None
            or not job.webhook_url
            or not job.event_type
            or event_id != job.event_id
        ):
            raise NotFoundError(f"no such event: {event_id}", param="event_id")
        store = await self._store()
        updated = await store.redeliver_webhook(job.id, time.time())
        if updated is None:
            raise ConflictError(
                f"event {event_id} is still being delivered; redeliver it "
                "once it is delivered or failed"
            )
        event = event_from_record(updated, await store.webhook_attempts(job.id))
        return self._json(request, event, status=202)

    async def webhook_deliveries(self, request: Request) -> Response:
        """This key's events by delivery status (default failed), newest first."""
        key = await self.authenticate(request)
        limit = _small_int(request.query_params.get("limit", "20"), 3)
        if limit is None or not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
        status = request.query_params.get("status", DeliveryStatus.FAILED)
        if status not in set(DeliveryStatus):
            raise InvalidRequestError(
                f"status must be one of {', '.join(DeliveryStatus)}", param="status"
            )
        cursor = request.query_params.get("starting_after")
        store = await self._store()
        if cursor is not None:
            cursor = job_id_for_event(cursor) if cursor.startswith("evt_") else cursor
            anchor = await store.get_job(cursor)
            if anchor is None or anchor.key_id != key.id or anchor.webhook_status is None:
                raise InvalidRequestError(
                    f"no such event: {request.query_params['starting_after']}",
                    param="starting_after",
                )
        jobs, has_more = await store.list_webhook_events(key.id, status, limit, cursor)
        events = [event_from_record(j, await store.webhook_attempts(j.id)) for j in jobs]
        return self._json(
            request,
            DeliveryPage(
                data=events, has_more=has_more, next_cursor=events[-1].id if has_more else None
            ),
        )

    async def rotate_secret(self, request: Request) -> Response:
        """A new webhook secret for the calling key, shown once; the old one keeps
        signing (webhook-signature) for the overlap."""
        key = await self.authenticate(request)
        rotated = await rotate_webhook_secret(
            await self._store(), key.id, time.time(), self.settings.webhook_secret_overlap_seconds
        )
        if rotated is None:  # the key was deleted between authentication and now
            raise NotFoundError("no such API key")
        secret, until = rotated
        return self._json(
            request,
            RotatedSecret(webhook_secret=secret, previous_valid_until=iso_time(until)),
            extra={"Cache-Control": "no-store"},
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.document)

    async def health(self, request: Request) -> Response:
        """Liveness: the process answers (the store is not consulted)."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: the store answers a read and a write in time (else 503)."""
        await (await self._store()).ping()
        return JSONResponse({"status": "ready"})


def api_endpoints(api: Api) -> list[Endpoint]:
    """The API's route table, in matching order: each route with its OpenAPI operation
    (the dashboard's pages, mounted beside it, are not part of the API)."""
    uploads = api.uploads
    return [
        Endpoint("POST", "/v2/enhance", api.enhance, doc.CREATE_ENHANCE_JOB),
        Endpoint("GET", "/v2/jobs", api.list_jobs, doc.LIST_JOBS),
        Endpoint("GET", "/v2/jobs/{job_id}", api.get_job, doc.GET_JOB),
        Endpoint("POST", "/v2/jobs/{job_id}/cancel", api.cancel_job, doc.CANCEL_JOB),
        Endpoint("GET", "/v2/jobs/{job_id}/download", api.download, doc.GET_DOWNLOAD_URL),
        Endpoint("GET", "/v2/jobs/{job_id}/events", api.events, doc.LIST_JOB_EVENTS),
        Endpoint(
            "POST",
            "/v2/jobs/{job_id}/events/{event_id}/redeliver",
            api.redeliver,
            doc.REDELIVER_JOB_EVENT,
        ),
        Endpoint(
            "GET", "/v2/webhook_deliveries", api.webhook_deliveries, doc.LIST_WEBHOOK_DELIVERIES
        ),
        Endpoint("POST", "/v2/webhook_secret/rotate", api.rotate_secret, doc.ROTATE_WEBHOOK_SECRET),
        # HEAD too: Starlette answers it for every GET route (ranged downloads use it).
        Endpoint("GET", "/v2/files/{key}", api.file, doc.DOWNLOAD_FILE),
        Endpoint("OPTIONS", "/v2/uploads", uploads.options, doc.TUS_DISCOVERY),
        Endpoint("POST", "/v2/uploads", uploads.create, doc.CREATE_UPLOAD),
        # Before the GET route, whose implied HEAD would otherwise answer tus's HEAD.
        Endpoint("HEAD", "/v2/uploads/{upload_id}", uploads.head, doc.GET_UPLOAD_OFFSET),
        Endpoint("GET", "/v2/uploads/{upload_id}", uploads.get, doc.GET_UPLOAD),
        Endpoint("PATCH", "/v2/uploads/{upload_id}", uploads.patch, doc.APPEND_TO_UPLOAD),
        Endpoint("DELETE", "/v2/uploads/{upload_id}", uploads.delete, doc.DELETE_UPLOAD),
        Endpoint("GET", "/v2/openapi.json", api.openapi, doc.GET_OPENAPI),
        Endpoint("GET", "/healthz", api.health, doc.HEALTH),
        Endpoint("GET", "/readyz", api.ready, doc.READY),
    ]


def create_api(
    settings: Settings,
    store: JobStore | None = None,
    storage: OutputStorage | None = None,
    uploads: UploadStorage | None = None,
) -> ASGIApp:
    """The ASGI app; ``store``, ``storage`` and ``uploads`` default to the ones the
    settings name."""
    api = Api(settings, store or open_store(settings), storage or open_storage(settings), uploads)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = NotFoundError if exc.status_code == 404 else InvalidRequestError
        error = kind(f"{request.method} {request.url.path}: {exc.detail}")
        response = _error_response(request, error)
        response.status_code = exc.status_code
        return response

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        # Expected during an outage: one line, no traceback, and the client retries.
        log.warning("request %s: %s", getattr(request.state, "request_id", "?"), exc)
        return _error_response(
            request,
            ServiceUnavailableError(
                "the job store is unavailable; retry after the Retry-After delay",
                retry_after=_STORE_RETRY_AFTER_SECONDS,
            ),
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("request %s failed", getattr(request.state, "request_id", "?"), exc_info=exc)
        return _error_response(
            request,
            InternalError("internal error; quote the X-Request-Id header when reporting it"),
        )

    endpoints = api_endpoints(api)
    api.document = openapi_document(endpoints)
    app = Starlette(
        routes=[
            *(endpoint.route() for endpoint in endpoints),
            # The web dashboard: pages over these same handlers and store.
            Mount("/dashboard", app=create_dashboard(api)),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            StoreUnavailable: store_unavailable,
            Exception: unexpected,
        },
    )
    # Outermost, so even a 500 from Starlette's error middleware carries the id.
    return _RequestIdMiddleware(app)
