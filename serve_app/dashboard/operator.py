"""Pages of the operator: every key, every job, the queue, archive batches, and the Ray
dashboard link.

Key changes call what ``retroiva keys`` calls (the store's ``add_key`` on a
:func:`~serve_app.access.keys.new_api_key`, ``revoke_key``, and
:func:`~serve_app.access.keys.rotate_webhook_secret`, which the API's rotation uses too), so a
key made or changed here is the same as one made on the command line.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app.access.keys import new_api_key, rotate_webhook_secret
from serve_app.dashboard.web import Dashboard, SignInRequired, Visitor
from serve_app.errors import AuthenticationError, InvalidRequestError, NotFoundError
from serve_app.jobs.batch_queue import TERMINAL, batch_ledger, batch_view, list_batches
from vocabulary import JobStatus

__all__ = ["OperatorPages"]

_JOBS_SHOWN = 100
_BATCHES_SHOWN = 100


class OperatorPages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        self.api = dashboard.api

    async def _keys_page(
        self, request: Request, visitor: Visitor, status: int = 200, **context: object
    ) -> Response:
        keys = await (await self.api._store()).list_keys()
        keys.sort(key=lambda k: k.created_at, reverse=True)
        return self.d.render(
            request,
            "operator_keys.html",
            visitor,
            status=status,
            keys=keys,
            default_rate=self.d.settings.default_rate_limit,
            **context,
        )

    async def keys(self, request: Request) -> Response:
        return await self._keys_page(request, await self.d.visitor(request, "operator"))

    async def create_key(self, request: Request) -> Response:
        visitor, form = await self.d.post(request, "operator")
        name = form.get("name", "").strip()
        rate = form.get("rate_limit", "").strip() or str(self.d.settings.default_rate_limit)
        try:
            if not 0 < len(name) <= 100:
                raise InvalidRequestError("a key needs a name of 1–100 characters", param="name")
            if not rate.isascii() or not rate.isdigit() or not 0 < int(rate) <= 10**6:
                raise InvalidRequestError(
                    "rate limit: requests per minute, 1 to 1000000", param="rate_limit"
                )
        except InvalidRequestError as exc:
            return await self._keys_page(request, visitor, status=400, error=exc)
        key, record = new_api_key(name, int(rate))
        await (await self.api._store()).add_key(record)
        # Rendered in the POST's own response, never redirected to: shown once.
        return await self._keys_page(request, visitor, status=201, created=(key, record))

    async def revoke_key(self, request: Request) -> Response:
        _, _ = await self.d.post(request, "operator")
        key_id = request.path_params["key_id"]
        store = await self.api._store()
        if await store.get_key(key_id) is None:
            raise NotFoundError(f"no such key: {key_id}", param="key_id")
        await store.revoke_key(key_id, time.time())
        return self.d.redirect(request, "/operator/keys")

    async def rotate_secret(self, request: Request) -> Response:
        visitor, _ = await self.d.post(request, "operator")
        key_id = request.path_params["key_id"]
        store = await self.api._store()
        if await store.get_key(key_id) is None:
            raise NotFoundError(f"no such key: {key_id}", param="key_id")
        # What `retroiva keys rotate-webhook-secret` and the API's rotation call.
        rotated = await rotate_webhook_secret(
            store, key_id, time.time(), self.d.settings.webhook_secret_overlap_seconds
        )
        if rotated is None:
            raise NotFoundError(f"no such key: {key_id}", param="key_id")
        secret, until = rotated
        return await self._keys_page(request, visitor, rotated=(key_id, secret, until))

    async def jobs(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "operator")
        status = request.query_params.get("status") or None
        key_id = request.query_params.get("key") or None
        if status is not None and status not in set(JobStatus):
            raise InvalidRequestError(f"no such status: {status}", param="status")
        store = await self.api._store()
        jobs = await store.recent_jobs(_JOBS_SHOWN, key_id=key_id, status=status)
        keys = await store.list_keys()
        return self.d.render(
            request,
            "operator_jobs.html",
            visitor,
            jobs=jobs,
            counts=await store.count_jobs_by_status(),
            statuses=list(JobStatus),
            keys=sorted(keys, key=lambda k: k.name),
            key_names={k.id: k.name for k in keys},
            status_filter=status,
            key_id=key_id,
            shown=_JOBS_SHOWN,
            ray_dashboard=self._ray_dashboard(request),
        )

    def _ray_dashboard(self, request: Request) -> str | None:
        """Where Ray's dashboard is, on the host the browser reached us by."""
        if not self.d.settings.dashboard:
            return None
        host = request.url.hostname or self.d.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.d.settings.dashboard_port}/"

    async def _batch(self, ledger: dict[str, Any]) -> dict[str, Any]:
        return await batch_view(await self.api._store(), ledger)

    async def _batches(self) -> list[dict[str, Any]]:
        ledgers = await asyncio.to_thread(list_batches, self.d.settings)
        return [await self._batch(ledger) for ledger in ledgers[:_BATCHES_SHOWN]]

    async def _one_batch(self, request: Request) -> dict[str, Any]:
        batch_id = request.path_params["batch_id"]
        ledger = await asyncio.to_thread(batch_ledger, self.d.settings, batch_id)
        if ledger is None:
            raise NotFoundError(f"no such batch: {batch_id}", param="batch_id")
        return await self._batch(ledger)

    async def batches(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "operator")
        return self.d.render(
            request,
            "operator_batches.html",
            visitor,
            batches=await self._batches(),
            shown=_BATCHES_SHOWN,
        )

    async def batches_json(self, request: Request) -> Response:
        try:
            await self.d.visitor(request, "operator")
        except SignInRequired:
            raise AuthenticationError("not signed in to the dashboard as the operator") from None
        return JSONResponse({"data": await self._batches()}, headers={"Cache-Control": "no-store"})

    async def batch(self, request: Request) -> Response:
        visitor = await self.d.visitor(request, "operator")
        return self.d.render(
            request,
            "operator_batch.html",
            visitor,
            batch=await self._one_batch(request),
            canceled=None,
        )

    async def cancel_batch(self, request: Request) -> Response:
        """Cancel every job of the batch that has not ended (what ``retroiva batches
        cancel`` does; ``ray job stop`` stops only the batch's driver)."""
        visitor, _ = await self.d.post(request, "operator")
        batch = await self._one_batch(request)
        store = await self.api._store()
        canceled = 0
        for row in batch["rows"]:
            unfinished = row.get("job_id") and row["status"] not in TERMINAL
            if unfinished and await store.request_cancel(row["job_id"], time.time()):
                canceled += 1
        return self.d.render(
            request,
            "operator_batch.html",
            visitor,
            batch=await self._one_batch(request),
            canceled=canceled,
        )
