"""Fetch a job's ``video_url`` to a scratch file: refused for private targets, bounded.

Only http/https.  The host is resolved once per hop and every address must be
globally routable (no loopback, private, link-local/cloud-metadata, multicast or
reserved ranges) unless private URLs are allowed, or that ``host:port`` is on the
allowlist.  The connection then goes to the checked address itself (the Host header
and TLS SNI keep the name), so a second DNS answer cannot swap in a private address.
Each redirect (at most 5) is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

__all__ = ["FetchError", "UrlPolicy", "fetch_to_file", "pinned_target", "resolve_checked"]

MAX_REDIRECTS = 5

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The input could not be fetched; the message says why, for the job's error."""

    type = "invalid_input"


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool = False
    allowlist: frozenset[str] = frozenset()  # "host:port" exempt from the address check


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _is_public(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_global and not address.is_multicast


def resolve_checked(url: str, policy: UrlPolicy) -> Address:
    """The address to connect to for ``url``; :class:`FetchError` if it is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https URLs can be fetched, got {url[:100]!r}")
    try:
        port = _port(parts)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as exc:
        raise FetchError(f"cannot resolve host {parts.hostname!r} ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    exempt = policy.allow_private or f"{parts.hostname}:{port}" in policy.allowlist
    if not exempt and not all(_is_public(a) for a in addresses):
        raise FetchError(f"{parts.hostname} resolves to a non-public address; refusing "
                         "to fetch it (the operator can allow such addresses with "
                         "RETROIVA_ALLOW_PRIVATE_URLS=true, or RETROIVA_PRIVATE_URL_ALLOWLIST)")
    return addresses[0]


def pinned_target(url: str, address: Address) -> tuple[str, dict[str, str], dict[str, str]]:
    """``url`` rewritten to connect to ``address``, with Host and SNI for the name."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit((parts.scheme, f"{host}:{_port(parts)}", parts.path or "/",
                         parts.query, ""))
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return target, headers, extensions  # type: ignore[return-value]


def fetch_to_file(url: str, destination: Path, *, max_bytes: int, timeout: float,
                  policy: UrlPolicy) -> int:
    """Stream ``url`` into ``destination``; returns the byte count.

    Raises :class:`FetchError` for refused or unreachable URLs, HTTP errors, too many
    redirects, timeouts and bodies over ``max_bytes``; the partial file is removed in
    every failure.
    """
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                target, headers, extensions = pinned_target(url, resolve_checked(url, policy))
                with client.stream("GET", target, headers=headers,
                                   extensions=extensions) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"HTTP {response.status_code} redirect "
                                             "without a Location header")
                        url = urljoin(url, location)
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
