"""Quiet local servers on 127.0.0.1: a static file server standing in for a client's
public URL, and webhook receivers (healthy, or dripping)."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time
from pathlib import Path

__all__ = ["free_port", "serve_directory", "serve_receiver"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_directory(root: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve ``root``; returns its base URL (no trailing slash) and the server to shut down."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Webhook receiver: answers 200 at once, or (``drip``) its status line a byte a second."""

    protocol_version = "HTTP/1.1"
    drip = False

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            if self.drip:
                for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 600:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1.0)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender gave up on us, as it should


def serve_receiver(*, drip: bool = False) -> tuple[str, http.server.ThreadingHTTPServer]:
    """A webhook receiver; returns its URL and the server to shut down."""
    handler = type("Receiver", (_Receiver,), {"drip": drip})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/hooks", server
