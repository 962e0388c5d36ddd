"""The web dashboard: server-rendered pages for key holders and the operator, at /dashboard."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app.dashboard.holder import HolderPages
from serve_app.dashboard.operator import OperatorPages
from serve_app.dashboard.sessions import SessionSigner, load_admin_token
from serve_app.dashboard.web import SESSION_COOKIE, Dashboard, SignInRequired
from serve_app.errors import ApiError, InternalError, NotFoundError, ServiceUnavailableError
from serve_app.jobs.store import StoreUnavailable
from vocabulary import ApiErrorType

if TYPE_CHECKING:
    from serve_app.api.app import Api

__all__ = ["create_dashboard"]

log = logging.getLogger(__name__)


def create_dashboard(api: Api) -> Starlette:
    """The dashboard's ASGI app over the API's own handlers and store; mount it at
    ``/dashboard``."""
    token, _ = load_admin_token(api.settings.admin_token, api.settings.data_dir)
    dashboard = Dashboard(api, SessionSigner(token, api.settings.dashboard_session_seconds))
    holder = HolderPages(dashboard)
    operator = OperatorPages(dashboard)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(dashboard.root(request) + "/api/")

    async def home(request: Request) -> Response:
        return dashboard.redirect(request, "/login")

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        if wants_json(request):
            return JSONResponse(
                {
                    "error": {
                        "type": ApiErrorType.AUTHENTICATION,
                        "message": "not signed in to the dashboard",
                    }
                },
                status_code=401,
            )
        response = dashboard.redirect(request, "/login")
        dashboard.clear_cookie(request, response, SESSION_COOKIE)
        return response

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if wants_json(request):
            from serve_app.api.app import _error_response

            return _error_response(request, exc)
        visitor = None
        with contextlib.suppress(SignInRequired, StoreUnavailable):
            visitor = await dashboard.visitor(request)
        response = dashboard.render(request, "error.html", visitor, status=exc.status, error=exc)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = await api_error(request, NotFoundError(f"no page {request.url.path}"))
        response.status_code = exc.status_code
        return response

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("dashboard %s: %s", request.url.path, exc)
        return await api_error(
            request,
            ServiceUnavailableError(
                "the job store is unavailable; try again in a moment", retry_after=2
            ),
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("dashboard %s failed", request.url.path, exc_info=exc)
        return await api_error(
            request,
            InternalError("internal error; quote the X-Request-Id header when reporting it"),
        )

    return Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/login", holder.login_page, methods=["GET"]),
            Route("/login", holder.login, methods=["POST"]),
            Route("/logout", holder.logout, methods=["POST"]),
            Route("/jobs", holder.jobs, methods=["GET"]),
            Route("/jobs", holder.submit, methods=["POST"]),
            Route("/jobs/{job_id}", holder.job, methods=["GET"]),
            Route("/jobs/{job_id}/cancel", holder.cancel, methods=["POST"]),
            Route("/jobs/{job_id}/events/{event_id}/redeliver", holder.redeliver, methods=["POST"]),
            Route("/account", holder.account, methods=["GET"]),
            Route("/account/webhook-secret", holder.rotate_secret, methods=["POST"]),
            Route("/api/uploads", holder.upload, methods=["POST"]),
            Route(
                "/api/uploads/{upload_id}",
                holder.upload,
                methods=["HEAD", "GET", "PATCH", "DELETE"],
            ),
            Route("/api/jobs", holder.jobs_json, methods=["GET"]),
            Route("/api/jobs/{job_id}", holder.job_json, methods=["GET"]),
            Route("/operator/keys", operator.keys, methods=["GET"]),
            Route("/operator/keys", operator.create_key, methods=["POST"]),
            Route("/operator/keys/{key_id}/revoke", operator.revoke_key, methods=["POST"]),
            Route(
                "/operator/keys/{key_id}/rotate-webhook-secret",
                operator.rotate_secret,
                methods=["POST"],
            ),
            Route("/operator/jobs", operator.jobs, methods=["GET"]),
            Route("/operator/batches", operator.batches, methods=["GET"]),
            Route("/operator/batches/{batch_id}", operator.batch, methods=["GET"]),
            Route("/operator/batches/{batch_id}/cancel", operator.cancel_batch, methods=["POST"]),
            Route("/api/batches", operator.batches_json, methods=["GET"]),
            Mount(
                "/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"
            ),
        ],
        exception_handlers={
            SignInRequired: sign_in_required,
            ApiError: api_error,
            HTTPException: http_error,
            StoreUnavailable: store_unavailable,
            Exception: unexpected,
        },
    )
