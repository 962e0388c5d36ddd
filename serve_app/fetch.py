"""Fetch a job's ``video_url`` to a scratch file: bounded in size and time.

Only http/https.  Unless ``allow_private`` is set, every address the host resolves to
(at the start and after each redirect) must be globally routable: loopback, private,
link-local (cloud metadata), multicast and reserved ranges are refused.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["FetchError", "check_public_url", "fetch_to_file"]

MAX_REDIRECTS = 5


class FetchError(Exception):
    """The input could not be fetched; the message says why, for the job's error."""

    type = "invalid_input"


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r} ({exc.strerror})") from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_public_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`FetchError` unless ``url`` is http(s) to a public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https URLs can be fetched, got {url[:100]!r}")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for address in _addresses(parts.hostname, port):
        if not address.is_global or address.is_multicast:
            raise FetchError(f"{parts.hostname} resolves to a non-public address; "
                             "refusing to fetch it")


def fetch_to_file(url: str, destination: Path, *, max_bytes: int, timeout: float,
                  allow_private: bool) -> int:
    """Stream ``url`` into ``destination``; returns the byte count.

    Raises :class:`FetchError` for refused or unreachable URLs, HTTP errors, more than
    :data:`MAX_REDIRECTS` redirects, timeouts and bodies over ``max_bytes``; the partial
    file is removed in every failure.
    """
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                check_public_url(url, allow_private=allow_private)
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"fetching video_url returned HTTP "
                                         f"{response.status_code}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise FetchError(f"video is {declared} bytes; the limit is {max_bytes}")
                    size = 0
                    with destination.open("wb") as out:
                        for block in response.iter_bytes(1 << 20):
                            size += len(block)
                            if size > max_bytes:
                                raise FetchError(f"video exceeds the {max_bytes}-byte limit")
                            out.write(block)
                    return size
            raise FetchError(f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        destination.unlink(missing_ok=True)
        raise FetchError(f"fetching video_url timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        destination.unlink(missing_ok=True)
        raise FetchError(f"fetching video_url failed ({type(exc).__name__})") from None
    except FetchError:
        destination.unlink(missing_ok=True)
        raise
