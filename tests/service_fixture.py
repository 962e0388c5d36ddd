"""The deployed service as a session fixture: Ray Serve with two API replicas and the
runner, on 127.0.0.1, with a local server holding the test videos.

Registered once, in conftest.py, for every module that asks for ``service``.  Scoped
to the module, not the session: Serve is one per Ray, and a module that deploys its
own (tests/test_dashboard_browser.py) shuts it down when it ends, so a session-wide
deployment made earlier would be gone for the modules after it.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from local_http import free_port
from stored_keys import add_key, bearer

from pipelines.sample_video import SampleSpec, write_sample_video

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["Service", "service"]


@dataclass
class Service:
    base: str
    settings: Settings
    media: str  # base URL of a local server holding the test videos
    new_key: Callable[..., dict[str, str]]


@pytest.fixture(scope="module")
def service(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Imported here: conftest.py registers this fixture for every test module, and
    # most never deploy the service.
    from ray import serve

    from serve_app.deployments import build_app
    from serve_app.jobs.sqlite_store import SqliteStore
    from serve_app.settings import Settings

    data = tmp_path_factory.mktemp("service")
    www = tmp_path_factory.mktemp("www")
    write_sample_video(www / "clip.mp4", SampleSpec(seconds=1))
    (www / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 500)
    write_sample_video(www / "long.mp4", SampleSpec(width=320, height=240, seconds=8, audio=False))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    media = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    threading.Thread(target=media.serve_forever, daemon=True).start()

    settings = Settings(
        data_dir=data,
        port=free_port(),
        api_replicas=2,
        allow_private_urls=True,
        lease_seconds=5,
        poll_seconds=0.2,
        chunk_frames=12,
        rate_window_seconds=60,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    serve.run(build_app(settings), name="retroiva", route_prefix="/")
    store = SqliteStore(settings.sqlite_path)

    def new_key(rate_limit: int = 1000) -> dict[str, str]:
        return bearer(add_key(store, rate_limit)[0])

    yield Service(
        f"http://127.0.0.1:{settings.port}",
        settings,
        f"http://127.0.0.1:{media.server_address[1]}",
        new_key,
    )
    serve.shutdown()
    media.shutdown()
