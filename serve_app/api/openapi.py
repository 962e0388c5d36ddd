"""The route table's vocabulary and the OpenAPI 3.1 document generated from it.

Each :class:`Endpoint` (method, path, handler, :class:`Operation`) is one entry of the
API's route table (:func:`serve_app.api.app.create_api` lists them): the Starlette
route is :meth:`Endpoint.route` and the document's ``paths`` are
:func:`openapi_document` of the same list, so a route cannot exist without its
documentation or the other way round.  The operations below describe each route;
component schemas are the pydantic models of :mod:`serve_app.api.schemas` that they
reference.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve_app.api import schemas
from serve_app.api.schemas import (
    DeliveryPage,
    Download,
    EnhanceBody,
    ErrorBody,
    EventList,
    Job,
    JobList,
    RotatedSecret,
    Upload,
    UploadBody,
    WebhookEvent,
)
from vocabulary import DeliveryStatus

__all__ = ["Endpoint", "Operation", "openapi_document"]

Handler = Callable[[Request], Awaitable[Response]]

_REF_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class Operation:
    """An OpenAPI operation object: what one route takes and answers."""

    id: str
    responses: dict[str, Any]
    parameters: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None
    description: str | None = None
    public: bool = False  # no API key (``security: []``)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"operationId": self.id}
        if self.description is not None:
            doc["description"] = self.description
        if self.public:
            doc["security"] = []
        if self.parameters:
            doc["parameters"] = list(self.parameters)
        if self.request_body is not None:
            doc["requestBody"] = self.request_body
        doc["responses"] = self.responses
        return doc


@dataclass(frozen=True)
class Endpoint:
    """One entry of the route table: a method on a path, its handler, its operation.

    One method per entry; Starlette answers ``HEAD`` for every ``GET`` route itself,
    which OpenAPI leaves implied.
    """

    method: str
    path: str
    handler: Handler
    operation: Operation

    def route(self) -> Route:
        return Route(self.path, self.handler, methods=[self.method])


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF_PREFIX + model.__name__}


def _json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in [
        ("X-RateLimit-Limit", "Requests allowed per window."),
        ("X-RateLimit-Remaining", "Requests left in this window."),
        ("X-RateLimit-Reset", "Unix time when the window resets."),
    ]
}


def _response(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _RATE_HEADERS,
        "content": {"application/json": {"schema": _ref(model)}},
    }


_UNAVAILABLE = {
    "description": "The job store is unavailable; retry after Retry-After seconds",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    },
    "content": {"application/json": {"schema": _ref(ErrorBody)}},
}


def _errors(*codes: int) -> dict[str, Any]:
    """The listed error responses, and 503 (any call may meet an unavailable store)."""
    text = {
        400: "Invalid request",
        401: "Missing or invalid API key",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        410: "Gone",
        413: "Body too large",
        412: "Unsupported Tus-Resumable version (Tus-Version lists ours)",
        415: "Unsupported Content-Type",
        416: "Range not satisfiable",
        429: "Rate limit exceeded (rate_limit_error) or, for submissions, the key's "
        "queued-job limit (queue_limit_error)",
    }
    return {
        **{str(code): _response(text[code], ErrorBody) for code in codes},
        "503": _UNAVAILABLE,
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query_param(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_LIMIT = _query_param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20})
_STARTING_AFTER = _query_param("starting_after", {"type": "string"})
_JOB_ID = _path_param("job_id")
_UPLOAD_ID = _path_param("upload_id")


def _tus_header(
    name: str, description: str, required: bool = False, integer: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 0} if integer else {"type": "string"}
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _tus_headers(*names: str) -> dict[str, Any]:
    described = {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": "Bytes received so far.",
        "Upload-Length": "The upload's total size.",
        "Upload-Expires": "RFC 7231 date after which an unfinished or unused upload is deleted.",
        "Location": "Absolute URL of the upload.",
        "Cache-Control": "no-store",
        "Tus-Version": "1.0.0",
        "Tus-Extension": "creation,expiration,termination",
        "Tus-Max-Size": "MAX_INPUT_BYTES.",
    }
    return {name: {"description": described[name], "schema": {"type": "string"}} for name in names}


_TUS_VERSION = _tus_header("Tus-Resumable", "1.0.0 (optional for plain HTTP clients)")
_JOB_OK = {"200": _response("The job", Job)}

# Jobs
CREATE_ENHANCE_JOB = Operation(
    "createEnhanceJob",
    parameters=(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 255},
        },
    ),
    request_body=_json_body(EnhanceBody),
    responses={**_JOB_OK, **_errors(400, 401, 404, 409, 410, 413, 429)},
)
LIST_JOBS = Operation(
    "listJobs",
    parameters=(_LIMIT, _STARTING_AFTER),
    responses={
        "200": _response("A page of jobs, newest first", JobList),
        **_errors(400, 401, 429),
    },
)
GET_JOB = Operation(
    "getJob", parameters=(_JOB_ID,), responses={**_JOB_OK, **_errors(401, 404, 429)}
)
CANCEL_JOB = Operation(
    "cancelJob", parameters=(_JOB_ID,), responses={**_JOB_OK, **_errors(401, 404, 429)}
)
GET_DOWNLOAD_URL = Operation(
    "getDownloadUrl",
    parameters=(_JOB_ID,),
    responses={
        "200": _response("A signed download URL", Download),
        **_errors(401, 404, 409, 410, 429),
    },
)
DOWNLOAD_FILE = Operation(
    "downloadFile",
    public=True,
    parameters=(
        _path_param("key"),
        _query_param("expires", {"type": "integer"}, required=True),
        _query_param("signature", {"type": "string"}, required=True),
        {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
    ),
    responses={
        "200": {"description": "The video (Range supported)", "content": {"video/mp4": {}}},
        "206": {"description": "Partial content"},
        **_errors(400, 403, 410, 416),
    },
)

# Webhooks (issue 17 items 2-3: events, redelivery, the deliveries list, secret rotation)
LIST_JOB_EVENTS = Operation(
    "listJobEvents",
    parameters=(_JOB_ID,),
    responses={
        "200": _response("The job's webhook events and attempts", EventList),
        **_errors(401, 404, 429),
    },
)
REDELIVER_JOB_EVENT = Operation(
    "redeliverJobEvent",
    description="Send a delivered or failed event again, with the same event id "
    "(webhook-id) and a fresh round of retries.",
    parameters=(_JOB_ID, _path_param("event_id")),
    responses={
        "202": _response("The event, pending again", WebhookEvent),
        **_errors(401, 404, 409, 429),
    },
)
LIST_WEBHOOK_DELIVERIES = Operation(
    "listWebhookDeliveries",
    description="This key's events by delivery status, newest first.",
    parameters=(
        _query_param(
            "status",
            {
                "type": "string",
                "enum": [str(s) for s in DeliveryStatus],
                "default": str(DeliveryStatus.FAILED),
            },
        ),
        _LIMIT,
        _STARTING_AFTER,
    ),
    responses={
        "200": _response("A page of events", DeliveryPage),
        **_errors(400, 401, 429),
    },
)
ROTATE_WEBHOOK_SECRET = Operation(
    "rotateWebhookSecret",
    description="A new webhook secret for this key, shown once; the previous "
    "one keeps signing webhook-signature until previous_valid_until.",
    responses={
        "200": _response("The new secret", RotatedSecret),
        **_errors(401, 404, 429),
    },
)

# Uploads: tus 1.0 (core, creation, expiration, termination); see docs/api-reference.md.
TUS_DISCOVERY = Operation(
    "tusDiscovery",
    public=True,
    responses={
        "204": {
            "description": "What the server speaks",
            "headers": _tus_headers(
                "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size"
            ),
        }
    },
)
CREATE_UPLOAD = Operation(
    "createUpload",
    description="tus clients send Upload-Length (and Upload-Metadata "
    "`filename <base64>`); others a JSON body.",
    parameters=(
        _TUS_VERSION,
        _tus_header("Upload-Length", "Total bytes (tus creation).", integer=True),
        _tus_header("Upload-Metadata", "tus metadata: `filename <base64>`."),
    ),
    request_body=_json_body(UploadBody, required=False),
    responses={
        "201": {
            **_response("The new upload", Upload),
            "headers": {
                **_RATE_HEADERS,
                **_tus_headers("Location", "Tus-Resumable", "Upload-Expires"),
            },
        },
        **_errors(400, 401, 412, 413, 429),
    },
)
GET_UPLOAD_OFFSET = Operation(
    "getUploadOffset",
    parameters=(_UPLOAD_ID, _TUS_VERSION),
    responses={
        "200": {
            "description": "The offset to resume from",
            "headers": _tus_headers(
                "Upload-Offset", "Upload-Length", "Tus-Resumable", "Cache-Control", "Upload-Expires"
            ),
        },
        "404": {"description": "No such upload"},
        "410": {"description": "The upload expired and was deleted"},
        **_errors(401, 429),
    },
)
GET_UPLOAD = Operation(
    "getUpload",
    parameters=(_UPLOAD_ID,),
    responses={
        "200": {
            **_response("The upload", Upload),
            "headers": {**_RATE_HEADERS, **_tus_headers("Tus-Resumable")},
        },
        **_errors(401, 404, 410, 429),
    },
)
APPEND_TO_UPLOAD = Operation(
    "appendToUpload",
    parameters=(
        _UPLOAD_ID,
        _TUS_VERSION,
        _tus_header(
            "Upload-Offset", "Must equal the upload's offset (HEAD).", required=True, integer=True
        ),
    ),
    request_body={
        "required": True,
        "content": {
            "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}
        },
    },
    responses={
        "204": {
            "description": "Bytes appended",
            "headers": _tus_headers("Upload-Offset", "Tus-Resumable", "Upload-Expires"),
        },
        **_errors(400, 401, 404, 409, 410, 412, 413, 415, 429),
    },
)
DELETE_UPLOAD = Operation(
    "deleteUpload",
    parameters=(_UPLOAD_ID, _TUS_VERSION),
    responses={
        "204": {"description": "Deleted (tus termination)"},
        **_errors(401, 404, 409, 410, 412, 429),
    },
)

# The service itself
GET_OPENAPI = Operation(
    "getOpenApiDocument",
    public=True,
    responses={
        "200": {
            "description": "This document",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
HEALTH = Operation("health", public=True, responses={"200": {"description": "Alive"}})
READY = Operation(
    "ready",
    public=True,
    responses={"200": {"description": "The job store answers"}, "503": _UNAVAILABLE},
)


def _refs(node: Any) -> Iterator[str]:
    """The schema names referenced anywhere under ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            yield ref.removeprefix(_REF_PREFIX)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _refs(value)


def _component_schemas(operations: Iterable[Operation]) -> dict[str, Any]:
    """JSON Schemas of the models the operations reference: request bodies as the
    API validates them, responses as it serialises them."""
    modes: dict[str, JsonSchemaMode] = {}
    for op in operations:
        for name in _refs(op.request_body):
            modes[name] = "validation"
        for name in _refs(op.responses):
            modes.setdefault(name, "serialization")
    models = [(getattr(schemas, name), mode) for name, mode in modes.items()]
    _, defs = models_json_schema(models, ref_template=_REF_PREFIX + "{model}")
    return defs["$defs"]


def path_parameters(path: str) -> set[str]:
    """The ``{name}`` placeholders of a route path."""
    return set(re.findall(r"{(\w+)}", path))


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the route table ``endpoints``."""
    endpoints = list(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operations = paths.setdefault(endpoint.path, {})
        method = endpoint.method.lower()
        if method in operations:
            raise ValueError(f"{endpoint.method} {endpoint.path} is in the route table twice")
        declared = {p["name"] for p in endpoint.operation.parameters if p["in"] == "path"}
        if declared != path_parameters(endpoint.path):
            raise ValueError(
                f"{endpoint.method} {endpoint.path} documents path parameters {sorted(declared)}"
            )
        operations[method] = endpoint.operation.document()
    return {
        "openapi": "3.1.0",
        "info": {"title": "Retroiva API", "version": "2.1.0"},
        "components": {
            "schemas": _component_schemas(e.operation for e in endpoints),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
