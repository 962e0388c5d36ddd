"""Pages of a key holder: sign-in, their jobs, one job, submitting, their account.

Every action runs the API's own code for the signed-in key: sign-in is the API's key
check (and counts as a request), actions call the API's handlers themselves with the
key handed over (:meth:`Dashboard.as_key`), submitting is
:func:`~serve_app.jobs.intake.submit_job` with the job the API would make of the form as
a JSON body (the form is not JSON), and a job is found
with the API's ownership check, so someone else's job is a 404.  Page loads and
actions count against the key's rate limit like API calls; the pages' background
polls do not.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app.access.keys import KEY_PREFIX
from serve_app.api.schemas import event_from_record, job_spec
from serve_app.dashboard.sessions import ADMIN_PREFIX
from serve_app.dashboard.web import (
    PRE_SESSION_COOKIE,
    SESSION_COOKIE,
    Dashboard,
    SignInRequired,
    Visitor,
)
from serve_app.errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    QueueLimitError,
)
from serve_app.jobs.intake import active_key, submit_job
from serve_app.jobs.records import ApiKeyRecord
from vocabulary import Engine, PresetName

__all__ = ["HolderPages"]

_PAGE_SIZE = 20


def _form_body(form: dict[str, str]) -> dict[str, Any]:
    """Form fields to the JSON body the API takes (blank optional fields left out)."""
    data: dict[str, Any] = {
        "preset": form.get("preset", PresetName.GENERAL),
        "engine": form.get("engine", Engine.NEURAL),
    }
    # A dropped file arrives as the upload the page's script made (upload.js).
    if form.get("upload_id", "").strip():
        data["upload_id"] = form["upload_id"].strip()
    else:
        data["video_url"] = form.get("video_url", "").strip()
    if form.get("webhook_url", "").strip():
        data["webhook_url"] = form["webhook_url"].strip()
    factor = form.get("upscale_factor", "").strip()
    if factor:
        if not factor.isascii() or not factor.isdigit() or len(factor) > 2:
            raise InvalidRequestError(
                "upscale_factor must be an integer from 1 to 4", param="upscale_factor"
            )
        data["upscale_factor"] = int(factor)
    return data


class HolderPages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        self.api = dashboard.api

    # Sign-in and sign-out
    async def login_page(self, request: Request) -> Response:
        try:
            visitor = await self.d.visitor(request)
        except SignInRequired:
            return self.d.render(request, "login.html", None)
        return self.d.redirect(request, "/operator/jobs" if visitor.is_operator else "/jobs")

    async def login(self, request: Request) -> Response:
        form = await self.d.form(request)
        self.d.check_csrf(request, form, self.d.pre_session(request))
        token = form.get("token", "").strip()
        try:
            if self.d.signer.is_admin_token(token):
                cookie, _ = self.d.signer.issue("operator", None)
                target = "/operator/jobs"
            elif token.startswith(KEY_PREFIX):
                key = await active_key(await self.api._store(), token)
                await self.api._count(request, key)
                cookie, _ = self.d.signer.issue("key", key.id)
                target = "/jobs"
            else:
                hint = (
                    "an API key starts with sk_live_"
                    if not token.startswith(ADMIN_PREFIX)
                    else "invalid admin token"
                )
                raise AuthenticationError(f"invalid API key or admin token ({hint})")
        except AuthenticationError as exc:
            return self.d.render(request, "login.html", None, status=401, error=exc.message)
        response = self.d.redirect(request, target)
        self.d.set_cookie(request, response, SESSION_COOKIE, cookie, self.d.signer.lifetime_seconds)
        self.d.clear_cookie(request, response, PRE_SESSION_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.d.signer.verify(request.cookies.get(SESSION_COOKIE))
        form = await self.d.form(request)
        if session is not None:
            self.d.check_csrf(request, form, session.nonce)
        response = self.d.redirect(request, "/login")
        self.d.clear_cookie(request, response, SESSION_COOKIE)
        return response

    # Jobs
    async def _jobs_context(self, request: Request, key: ApiKeyRecord) -> dict[str, Any]:
        cursor = request.query_params.get("starting_after") or None
        store = await self.api._store()
        if cursor is not None:
            anchor = await store.get_job(cursor)
            if anchor is None or anchor.key_id != key.id:
                raise InvalidRequestError(f"no such job: {cursor}", param="starting_after")
        jobs, has_more = await store.list_jobs(key.id, _PAGE_SIZE, cursor)
        return {
            "jobs": [await self.api._job_object(request, j) for j in jobs],
            "next_cursor": jobs[-1].id if has_more else None,
            "cursor": cursor,
        }

    async def jobs(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "key")
        key = await self.d.as_key(request, visitor)
        return self.d.render(
            request,
            "jobs.html",
            visitor,
            idempotency=secrets.token_urlsafe(12),
            form={},
            **await self._jobs_context(request, key),
        )

    async def submit(self, request: Request) -> Response:
        visitor, form = await self.d.post(request, "key")
        key = await self.d.as_key(request, visitor)
        try:
            spec = job_spec(_form_body(form))  # with the API's error for the first problem
            # The form carries its own Idempotency-Key, so a resubmitted form (back
            # button, double click) returns the first job instead of queueing twice.
            job, _ = await submit_job(
                await self.api._store(),
                key,
                spec,
                form.get("idempotency") or None,
                self.d.settings.url_policy,
                self.d.settings.max_queued_per_key,
            )
        except (InvalidRequestError, QueueLimitError, ConflictError) as exc:
            return self.d.render(
                request,
                "jobs.html",
                visitor,
                status=exc.status,
                error=exc,
                form=form,
                idempotency=secrets.token_urlsafe(12),
                **await self._jobs_context(request, key),
            )
        return self.d.redirect(request, f"/jobs/{job.id}")

    async def job(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "key")
        record = await self.api._own_job(request, await self.d.as_key(request, visitor))
        link = await self.api._link(request, record)
        event = None
        # The event GET /v2/jobs/{id}/events shows: one, once the job has ended.
        if record.webhook_status is not None and record.webhook_url and record.event_type:
            attempts = await (await self.api._store()).webhook_attempts(record.id)
            event = event_from_record(record, attempts)
        return self.d.render(
            request,
            "job.html",
            visitor,
            record=record,
            job=await self.api._job_object(request, record),
            link=link,
            event=event,
        )

    async def redeliver(self, request: Request) -> Response:
        visitor, _ = await self.d.post(request, "key")
        request.state.dashboard_key = visitor.key
        # POST /v2/jobs/{job_id}/events/{event_id}/redeliver itself.
        await self.api.redeliver(request)
        return self.d.redirect(request, f"/jobs/{request.path_params['job_id']}")

    async def cancel(self, request: Request) -> Response:
        visitor, _ = await self.d.post(request, "key")
        request.state.dashboard_key = visitor.key
        await self.api.cancel_job(request)  # POST /v2/jobs/{job_id}/cancel itself
        return self.d.redirect(request, f"/jobs/{request.path_params['job_id']}")

    async def account(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "key")
        await self.d.as_key(request, visitor)
        return self._account_page(request, visitor)

    def _account_page(self, request: Request, visitor: Visitor, **context: Any) -> Response:
        return self.d.render(
            request,
            "account.html",
            visitor,
            window=self.d.settings.rate_window_seconds,
            max_queued=self.d.settings.max_queued_per_key,
            **context,
        )

    async def rotate_secret(self, request: Request) -> Response:
        visitor, _ = await self.d.post(request, "key")
        request.state.dashboard_key = visitor.key
        # POST /v2/webhook_secret/rotate itself; its answer is shown once, right here.
        response = await self.api.rotate_secret(request)
        return self._account_page(request, visitor, rotated=json.loads(bytes(response.body)))

    async def upload(self, request: Request) -> Response:
        """The tus endpoints of /v2/uploads for the page's script: the session and a
        CSRF header stand in for the API key; the API's upload handlers do the rest."""
        visitor = await self._json_visitor(request)
        self.d.check_origin(request)
        if not self.d.signer.csrf_valid(
            visitor.session.nonce, request.headers.get("x-csrf-token", "")
        ):
            raise ForbiddenError("missing or stale X-CSRF-Token; reload the page")
        request.state.dashboard_key = visitor.key
        routes = self.api.uploads
        handler = {
            "POST": routes.create,
            "HEAD": routes.head,
            "GET": routes.get,
            "PATCH": routes.patch,
            "DELETE": routes.delete,
        }[request.method]
        return await handler(request)

    # JSON for the pages' live updates (session-authenticated, not rate-counted).
    async def jobs_json(self, request: Request) -> Response:
        visitor = await self._json_visitor(request)
        assert visitor.key is not None
        context = await self._jobs_context(request, visitor.key)
        return JSONResponse(
            {"data": [j.model_dump(mode="json") for j in context["jobs"]]},
            headers={"Cache-Control": "no-store"},
        )

    async def job_json(self, request: Request) -> Response:
        visitor = await self._json_visitor(request)
        assert visitor.key is not None
        record = await self.api._own_job(request, visitor.key)
        job = await self.api._job_object(request, record)
        return JSONResponse(job.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    async def _json_visitor(self, request: Request) -> Visitor:
        try:
            return await self.d.visitor(request, "key")
        except SignInRequired:
            raise AuthenticationError("not signed in to the dashboard") from None
