"""One route table: every route the API app serves is in its OpenAPI document with the
same methods, and every documented operation is a route (issue 14)."""

from __future__ import annotations

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from serve_app.api import openapi as doc
from serve_app.api.app import create_api
from serve_app.api.openapi import Endpoint, openapi_document, path_parameters
from serve_app.settings import Settings

# The browser dashboard (cookie sessions, HTML pages, static files) is mounted beside
# the API and is not part of the documented API.
DASHBOARD = "/dashboard"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("routes")
    return create_api(Settings(data_dir=data, signing_secret="routes-secret"))


def _served(app) -> dict[str, set[str]]:
    """Path → methods of the Starlette routes under the request-id middleware."""
    served: dict[str, set[str]] = {}
    for route in app.app.routes:
        if isinstance(route, Mount):
            assert route.path == DASHBOARD, f"unexpected mount {route.path}"
            continue
        assert isinstance(route, Route), route
        served.setdefault(route.path, set()).update(route.methods or ())
    return served


def test_every_route_is_documented_with_its_methods_and_vice_versa(app):
    document = TestClient(app).get("/v2/openapi.json").json()
    documented = {
        path: {method.upper() for method in operations}
        for path, operations in document["paths"].items()
    }
    # Starlette answers HEAD for every GET route; OpenAPI leaves that implied.
    expected = {
        path: methods | ({"HEAD"} if "GET" in methods else set())
        for path, methods in documented.items()
    }
    assert _served(app) == expected


def test_documented_path_parameters_match_the_paths(app):
    document = TestClient(app).get("/v2/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == path_parameters(path), (method, path)


def test_every_referenced_schema_is_a_component(app):
    document = TestClient(app).get("/v2/openapi.json").json()
    names = set(doc._refs(document["paths"])) | set(doc._refs(document["components"]))
    assert names <= set(document["components"]["schemas"])
    assert {"EnhanceBody", "Job", "ErrorBody", "Upload", "UploadBody"} <= names


async def _handler(request):  # never called
    raise AssertionError


def test_a_table_entry_that_disagrees_with_its_path_is_refused():
    with pytest.raises(ValueError, match="path parameters"):
        openapi_document([Endpoint("GET", "/v2/things/{thing_id}", _handler, doc.GET_JOB)])
    twice = Endpoint("GET", "/v2/jobs/{job_id}", _handler, doc.GET_JOB)
    with pytest.raises(ValueError, match="twice"):
        openapi_document([twice, twice])
