"""The dashboard in process (no Ray): a store, a TestClient on the API app, and the
sign-in and CSRF steps its tests share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from starlette.testclient import TestClient

from serve_app.api.app import create_api
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings

ADMIN = "adm_test-admin-token-0123456789"
WEBHOOK = "https://93.184.215.14/hooks"  # a public literal address: no DNS needed


def dashboard_store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.sqlite3")


def dashboard_client(tmp_path: Path, store: SqliteStore) -> Iterator[TestClient]:
    """The body of a ``client`` fixture: the API app (dashboard mounted) in process."""
    settings = Settings(data_dir=tmp_path, default_rate_limit=1000, admin_token=ADMIN)
    with TestClient(
        create_api(settings, store), raise_server_exceptions=False, follow_redirects=False
    ) as client:
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def signed_in(client: TestClient, token: str) -> str:
    """Sign in; returns the CSRF token of the signed-in pages."""
    page = client.get("/dashboard/login")
    assert (
        client.post(
            "/dashboard/login", data={"token": token, "csrf": csrf_of(page.text)}
        ).status_code
        == 303
    )
    return csrf_of(
        client.get(
            "/dashboard/account" if token.startswith("sk_") else "/dashboard/operator/keys"
        ).text
    )
