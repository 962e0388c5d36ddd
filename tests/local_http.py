"""A quiet static file server on 127.0.0.1, standing in for a client's public URL."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

__all__ = ["serve_directory"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_directory(root: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve ``root``; returns its base URL (no trailing slash) and the server to shut down."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
