"""Fetching video_url: private targets refused (also after redirects), limits enforced."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.fetch import FetchError, UrlPolicy, fetch_to_file, resolve_checked


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_hosts: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, *, length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if length:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 65536):
                part = body[i:i + 65536]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        _Handler.seen_hosts.append(self.headers.get("Host", ""))
        path, _, query = self.path.partition("?")
        if path == "/video":
            self._send(b"v" * 1000)
        elif path == "/big":
            self._send(b"b" * 2_000_000)
        elif path == "/big-chunked":
            self._send(b"b" * 2_000_000, length=False)
        elif path == "/slow":
            time.sleep(3)
            self._send(b"late")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect-nowhere":
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that abort on purpose (size limits, timeouts) break the pipe


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, tmp_path: Path, policy: UrlPolicy, **limits: float) -> Path:
    destination = tmp_path / "input"
    fetch_to_file(url, destination, max_bytes=int(limits.get("max_bytes", 10**7)),
                  timeout=limits.get("timeout", 5), policy=policy)
    return destination


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/v.mp4", "http://10.0.0.1/v.mp4", "http://172.16.5.4/v.mp4",
    "http://192.168.1.1/v.mp4", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/v.mp4", "http://[fd00::1]/v.mp4", "http://[::ffff:127.0.0.1]/v.mp4",
    "http://localhost/v.mp4", "http://224.0.0.1/v.mp4", "http://0.0.0.0/v.mp4",
])
def test_private_and_special_addresses_are_refused(url: str, tmp_path: Path):
    with pytest.raises(FetchError, match=r"non-public.*RETROIVA_ALLOW_PRIVATE_URLS=true"):
        _fetch(url, tmp_path, UrlPolicy())
    assert not (tmp_path / "input").exists()


@pytest.mark.parametrize("url", ["ftp://example.com/v.mp4", "file:///etc/passwd",
                                 "http:///nohost"])
def test_only_http_urls(url: str, tmp_path: Path):
    with pytest.raises(FetchError, match="only http and https"):
        _fetch(url, tmp_path, UrlPolicy(allow_private=True))


def test_allowed_server_fetches(server: str, tmp_path: Path):
    path = _fetch(f"http://{server}/video", tmp_path, UrlPolicy(allowlist=frozenset({server})))
    assert path.read_bytes() == b"v" * 1000


def test_redirect_to_a_private_address_is_refused(server: str, tmp_path: Path):
    policy = UrlPolicy(allowlist=frozenset({server}))
    port = server.split(":")[1]
    for target in (f"http://127.0.0.2:{port}/video", "http://10.0.0.7/video",
                   "http://169.254.169.254/latest"):
        with pytest.raises(FetchError, match="non-public"):
            _fetch(f"http://{server}/redirect?to={target}", tmp_path, policy)
        assert not (tmp_path / "input").exists()
    # The same redirect within the allowed server is followed.
    path = _fetch(f"http://{server}/redirect?to=/video", tmp_path, policy)
    assert path.read_bytes() == b"v" * 1000


def test_redirect_without_location_is_a_clear_error(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="without a Location"):
        _fetch(f"http://{server}/redirect-nowhere", tmp_path, UrlPolicy(allow_private=True))


def test_redirect_loops_stop(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _fetch(f"http://{server}/loop", tmp_path, UrlPolicy(allow_private=True))


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_size_limit_aborts_and_leaves_nothing(server: str, tmp_path: Path, path: str):
    with pytest.raises(FetchError, match="limit"):
        _fetch(f"http://{server}{path}", tmp_path, UrlPolicy(allow_private=True),
               max_bytes=1_000_000)
    assert not (tmp_path / "input").exists()


def test_timeout_aborts_and_leaves_nothing(server: str, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        _fetch(f"http://{server}/slow", tmp_path, UrlPolicy(allow_private=True), timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert not (tmp_path / "input").exists()


def test_http_errors_are_reported(server: str, tmp_path: Path):
    with pytest.raises(FetchError, match="HTTP 404"):
        _fetch(f"http://{server}/missing", tmp_path, UrlPolicy(allow_private=True))


def test_connection_goes_to_the_checked_address(server: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    """A name resolved once and pinned: the client never resolves it again."""
    port = int(server.split(":")[1])
    real = socket.getaddrinfo
    calls = []

    def resolver(host: str, *args: object, **kwargs: object):
        calls.append(host)
        if host == "videos.example":
            return real("127.0.0.1", port, type=socket.SOCK_STREAM)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    _Handler.seen_hosts.clear()
    policy = UrlPolicy(allowlist=frozenset({f"videos.example:{port}"}))
    path = _fetch(f"http://videos.example:{port}/video", tmp_path, policy)
    assert path.read_bytes() == b"v" * 1000
    assert calls.count("videos.example") == 1
    assert _Handler.seen_hosts == [f"videos.example:{port}"]


def test_resolve_checked_returns_the_address():
    assert str(resolve_checked("https://93.184.215.14/x", UrlPolicy())) == "93.184.215.14"
