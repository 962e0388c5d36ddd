"""The OpenAPI 3.1 document, assembled from the pydantic models in :mod:`serve_app.api.schemas`."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

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

__all__ = ["openapi_document"]

_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in [
        ("X-RateLimit-Limit", "Requests allowed per window."),
        ("X-RateLimit-Remaining", "Requests left in this window."),
        ("X-RateLimit-Reset", "Unix time when the window resets."),
    ]
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _RATE_HEADERS,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


_UNAVAILABLE = {
    "description": "The job store is unavailable; retry after Retry-After seconds",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
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
        **{str(code): _response(text[code], "ErrorBody") for code in codes},
        "503": _UNAVAILABLE,
    }


def _job_id_param() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _upload_id_param() -> dict[str, Any]:
    return {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}


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


def _upload_paths() -> dict[str, Any]:
    """tus 1.0 (core, creation, expiration, termination); see docs/api-reference.md."""
    upload_ok = {
        "200": {
            **_response("The upload", "Upload"),
            "headers": {**_RATE_HEADERS, **_tus_headers("Tus-Resumable")},
        }
    }
    version = _tus_header("Tus-Resumable", "1.0.0 (optional for plain HTTP clients)")
    return {
        "/v2/uploads": {
            "options": {
                "operationId": "tusDiscovery",
                "security": [],
                "responses": {
                    "204": {
                        "description": "What the server speaks",
                        "headers": _tus_headers(
                            "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size"
                        ),
                    }
                },
            },
            "post": {
                "operationId": "createUpload",
                "description": "tus clients send Upload-Length (and Upload-Metadata "
                "`filename <base64>`); others a JSON body.",
                "parameters": [
                    version,
                    _tus_header("Upload-Length", "Total bytes (tus creation).", integer=True),
                    _tus_header("Upload-Metadata", "tus metadata: `filename <base64>`."),
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("UploadBody")}},
                },
                "responses": {
                    "201": {
                        **_response("The new upload", "Upload"),
                        "headers": {
                            **_RATE_HEADERS,
                            **_tus_headers("Location", "Tus-Resumable", "Upload-Expires"),
                        },
                    },
                    **_errors(400, 401, 412, 413, 429),
                },
            },
        },
        "/v2/uploads/{upload_id}": {
            "head": {
                "operationId": "getUploadOffset",
                "parameters": [_upload_id_param(), version],
                "responses": {
                    "200": {
                        "description": "The offset to resume from",
                        "headers": _tus_headers(
                            "Upload-Offset",
                            "Upload-Length",
                            "Tus-Resumable",
                            "Cache-Control",
                            "Upload-Expires",
                        ),
                    },
                    "404": {"description": "No such upload"},
                    "410": {"description": "The upload expired and was deleted"},
                    **_errors(401, 429),
                },
            },
            "get": {
                "operationId": "getUpload",
                "parameters": [_upload_id_param()],
                "responses": {**upload_ok, **_errors(401, 404, 410, 429)},
            },
            "patch": {
                "operationId": "appendToUpload",
                "parameters": [
                    _upload_id_param(),
                    version,
                    _tus_header(
                        "Upload-Offset",
                        "Must equal the upload's offset (HEAD).",
                        required=True,
                        integer=True,
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/offset+octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "204": {
                        "description": "Bytes appended",
                        "headers": _tus_headers("Upload-Offset", "Tus-Resumable", "Upload-Expires"),
                    },
                    **_errors(400, 401, 404, 409, 410, 412, 413, 415, 429),
                },
            },
            "delete": {
                "operationId": "deleteUpload",
                "parameters": [_upload_id_param(), version],
                "responses": {
                    "204": {"description": "Deleted (tus termination)"},
                    **_errors(401, 404, 409, 410, 412, 429),
                },
            },
        },
    }


def _webhook_paths() -> dict[str, Any]:
    """Issue 17 items 2-3: redelivery, the deliveries list, secret rotation."""
    return {
        "/v2/jobs/{job_id}/events/{event_id}/redeliver": {
            "post": {
                "operationId": "redeliverJobEvent",
                "description": "Send a delivered or failed event again, with the same event id "
                "(webhook-id) and a fresh round of retries.",
                "parameters": [
                    _job_id_param(),
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "202": _response("The event, pending again", "WebhookEvent"),
                    **_errors(401, 404, 409, 429),
                },
            }
        },
        "/v2/webhook_deliveries": {
            "get": {
                "operationId": "listWebhookDeliveries",
                "description": "This key's events by delivery status, newest first.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["failed", "delivered", "pending"],
                            "default": "failed",
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "starting_after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _response("A page of events", "DeliveryPage"),
                    **_errors(400, 401, 429),
                },
            }
        },
        "/v2/webhook_secret/rotate": {
            "post": {
                "operationId": "rotateWebhookSecret",
                "description": "A new webhook secret for this key, shown once; the previous "
                "one keeps signing webhook-signature until previous_valid_until.",
                "responses": {
                    "200": _response("The new secret", "RotatedSecret"),
                    **_errors(401, 404, 429),
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (m, "validation" if m in (EnhanceBody, UploadBody) else "serialization")
            for m in (
                EnhanceBody,
                Job,
                JobList,
                Download,
                EventList,
                ErrorBody,
                WebhookEvent,
                DeliveryPage,
                RotatedSecret,
                Upload,
                UploadBody,
            )
        ],
        ref_template="#/components/schemas/{model}",
    )
    job_ok = {"200": _response("The job", "Job")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Retroiva API", "version": "2.1.0"},
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v2/enhance": {
                "post": {
                    "operationId": "createEnhanceJob",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("EnhanceBody")}},
                    },
                    "responses": {**job_ok, **_errors(400, 401, 404, 409, 410, 413, 429)},
                }
            },
            "/v2/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 100,
                                "default": 20,
                            },
                        },
                        {
                            "name": "starting_after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _response("A page of jobs, newest first", "JobList"),
                        **_errors(400, 401, 429),
                    },
                }
            },
            "/v2/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "parameters": [_job_id_param()],
                    "responses": {**job_ok, **_errors(401, 404, 429)},
                }
            },
            "/v2/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "parameters": [_job_id_param()],
                    "responses": {**job_ok, **_errors(401, 404, 429)},
                }
            },
            "/v2/jobs/{job_id}/download": {
                "get": {
                    "operationId": "getDownloadUrl",
                    "parameters": [_job_id_param()],
                    "responses": {
                        "200": _response("A signed download URL", "Download"),
                        **_errors(401, 404, 409, 410, 429),
                    },
                }
            },
            "/v2/jobs/{job_id}/events": {
                "get": {
                    "operationId": "listJobEvents",
                    "parameters": [_job_id_param()],
                    "responses": {
                        "200": _response("The job's webhook events and attempts", "EventList"),
                        **_errors(401, 404, 429),
                    },
                }
            },
            **_webhook_paths(),
            "/v2/files/{key}": {
                "get": {
                    "operationId": "downloadFile",
                    "security": [],
                    "parameters": [
                        {
                            "name": "key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "expires",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "signature",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Range",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The video (Range supported)",
                            "content": {"video/mp4": {}},
                        },
                        "206": {"description": "Partial content"},
                        **_errors(400, 403, 410, 416),
                    },
                }
            },
            **_upload_paths(),
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "security": [],
                    "responses": {
                        "200": {"description": "The job store answers"},
                        "503": _UNAVAILABLE,
                    },
                }
            },
        },
    }
