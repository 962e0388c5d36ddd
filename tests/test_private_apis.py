"""The private APIs the service relies on, pinned by tests that fail loudly.

Ray Serve's proxy picks each request's id (a client's own ``X-Request-Id``, or a fresh
one) and adds the response header itself; the app must reuse that id rather than add a
second header.  Serve exposes it only through ``ray.serve.context`` (no public API in
Ray 2.x), so this file checks exactly what :func:`serve_app.api.app._serve_request_id`
uses.  (The webhooks' JavaScript-compatible JSON once used ``json.encoder``'s private
``_make_iterencode``; it is written out with public calls now.)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect

import pytest

from serve_app.api.app import _RequestIdMiddleware, _serve_request_id

FIX = (
    "Ray Serve's private request context changed; update serve_app.api.app."
    "_serve_request_id (it must return the id Serve's proxy gives the request, which "
    "the proxy also returns as X-Request-Id) for this Ray version. Details: "
)


def test_serve_request_context_has_the_shape_we_read():
    from ray.serve import context

    getter = getattr(context, "_get_serve_request_context", None)
    assert callable(getter), FIX + "ray.serve.context._get_serve_request_context is gone"
    assert not inspect.signature(getter).parameters, FIX + "the getter now takes arguments"
    fields = {f.name for f in dataclasses.fields(context._RequestContext)}
    assert "request_id" in fields, FIX + f"_RequestContext has no request_id ({fields})"
    assert isinstance(context._serve_request_context, contextvars.ContextVar), FIX + (
        "_serve_request_context is no longer a ContextVar"
    )


def test_outside_a_request_there_is_no_serve_id():
    assert contextvars.copy_context().run(_serve_request_id) is None, FIX + (
        "outside a Serve request the context's request_id is no longer empty"
    )


def _run_app_in_request(request_id: str) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """The middleware around a tiny app, inside a Serve request context for ``request_id``
    (set the way Serve's replica sets it): the scope's id and the response headers."""
    from ray.serve import context

    seen: dict = {}
    sent: list[dict] = []

    async def app(scope, receive, send):
        seen.update(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    async def call() -> None:
        context._set_request_context(request_id=request_id)
        scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
        await _RequestIdMiddleware(app)(scope, receive, send)

    contextvars.copy_context().run(asyncio.run, call())
    return seen, sent[0]["headers"]


def test_inside_a_request_the_app_reuses_serves_id():
    seen, headers = _run_app_in_request("proxy-chose-this")
    assert seen["request_id"] == "proxy-chose-this", FIX + f"the app saw {seen}"
    # The proxy adds X-Request-Id itself: a second header would be a duplicate.
    assert b"x-request-id" not in dict(headers), FIX + f"headers {headers}"


def test_starlettes_range_parser_has_the_shape_we_call():
    """serve_app.api.app._check_range calls Starlette's private
    ``FileResponse._parse_range_header(header, size)`` so a bad Range gets our JSON error
    body instead of Starlette's plain text; if this fails after a Starlette upgrade, update
    ``_check_range`` to the new parser (or parse ranges ourselves)."""
    from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

    assert FileResponse._parse_range_header("bytes=0-9", 100) == [(0, 10)]
    with pytest.raises(MalformedRangeHeader):
        FileResponse._parse_range_header("bites=0-9", 100)
    with pytest.raises(RangeNotSatisfiable):
        FileResponse._parse_range_header("bytes=200-300", 100)


def test_ray_datas_stats_actor_has_the_shape_end_stale_datasets_uses():
    """``pipelines.enhance.end_stale_datasets`` marks a killed attempt's dataset failed
    through Ray Data's stats actor (what the dashboard's Data view reads)."""
    from ray.data._internal import stats
    from ray.data._internal.execution.dataset_state import DatasetState

    fix = (
        "Ray Data's stats actor changed; update pipelines.enhance.end_stale_datasets "
        "for this Ray version. Details: "
    )
    assert callable(getattr(stats, "get_or_create_stats_actor", None)), fix + "no getter"
    actor_class = stats._StatsActor.__ray_actor_class__  # type: ignore[attr-defined]
    for method in ("get_datasets", "update_dataset"):
        assert callable(getattr(actor_class, method, None)), fix + f"no {method}"
    assert {"RUNNING", "PENDING", "FAILED", "FINISHED"} <= {s.name for s in DatasetState}, fix
