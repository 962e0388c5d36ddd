"""Schemathesis against the served OpenAPI document, with a valid key: no 5xx, and every
response (status, content type, body) matches the schema.

Runs in-process on the ASGI app (no sockets), one test per operation; the example
count per operation is bounded by RETROIVA_FUZZ_EXAMPLES (default 30) so CI stays fast.
Schemathesis's own pytest plugin does not work with this pytest, so each test drives
the operation's Hypothesis strategy directly.

Every check runs except "positive data acceptance" (a schema-valid request must not
get a 4xx): some refusals depend on state no schema can express — a video_url that
resolves to a private address, a starting_after cursor that is not one of your jobs,
a download signature that does not verify.  Those 400s/403s are documented responses,
and status-code conformance still checks that each one is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from serve_app.access.keys import new_api_key
from serve_app.api.app import create_api
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings

EXAMPLES = int(os.environ.get("RETROIVA_FUZZ_EXAMPLES", "30"))
# tus PATCH bodies are raw bytes under their own media type.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
KEY, RECORD = new_api_key("fuzz", rate_limit=1_000_000)


def _schema() -> schemathesis.BaseSchema:
    data = Path(tempfile.mkdtemp(prefix="retroiva-fuzz-"))
    store = SqliteStore(data / "retroiva.sqlite3")
    asyncio.run(store.init())
    asyncio.run(store.add_key(RECORD))
    app = create_api(Settings(data_dir=data, signing_secret="fuzz-secret"), store)
    return schemathesis.openapi.from_asgi("/v2/openapi.json", app)


SCHEMA = _schema()
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation_conforms_to_the_schema(label: str) -> None:
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance]
        )

    check()


# Explicit examples: inputs that once were 500s (each logging two tracebacks), now
# documented 400s/403s in the JSON error format.  The /v2/files ones need no key.
_NESTED = b"[" * 30000 + b"]" * 30000  # RecursionError in json.loads
_ODD = [
    ("GET /v2/jobs", {"query": {"limit": "\u00b2"}}, 400),  # "²".isdigit() is True
    ("GET /v2/jobs", {"query": {"limit": "1" * 5000}}, 400),  # over int()'s digit limit
    (
        "GET /v2/files/{key}",
        {"path_parameters": {"key": "x.mp4"}, "query": {"expires": "\u00b2", "signature": "ab"}},
        403,
    ),
    (
        "GET /v2/files/{key}",
        {"path_parameters": {"key": "x.mp4"}, "query": {"expires": "9" * 5000, "signature": "ab"}},
        403,
    ),
    ("POST /v2/enhance", {"body": _NESTED, "media_type": "application/json"}, 400),
    (
        "POST /v2/enhance",
        {
            "body": b'{"video_url": ' + b"[" * 900 + b"]" * 900 + b"}",
            "media_type": "application/json",
        },
        400,
    ),
    (
        "POST /v2/enhance",
        {"body": {"video_url": "https://93.184.215.14/v.mp4", "upscale_factor": True}},
        400,
    ),
    (
        "POST /v2/enhance",
        {"body": {"video_url": "https://93.184.215.14/v.mp4", "upscale_factor": 2.0}},
        400,
    ),
    (
        "POST /v2/enhance",
        {"body": {"video_url": "https://93.184.215.14/v.mp4", "upscale_factor": "2"}},
        400,
    ),
]


@pytest.mark.parametrize(
    ("label", "parts", "status"), _ODD, ids=[f"{label} #{i}" for i, (label, *_) in enumerate(_ODD)]
)
def test_odd_inputs_are_client_errors(
    label: str, parts: dict, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    case = OPERATIONS[label].Case(**parts)
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance]
    )
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
