"""Fetch a job's ``video_url`` to a scratch file: refused for private targets, bounded.

Only http/https.  The host is resolved once per hop and every address must be
globally routable (no loopback, private, link-local/cloud-metadata, multicast or
reserved ranges) unless private URLs are allowed, or that ``host:port`` is on the
allowlist.  The connection then goes to the checked address itself (the Host header
and TLS SNI keep the name), so a second DNS answer cannot swap in a private address.
Each redirect (at most 5) is checked the same way.  IPv6 forms that embed an IPv4
address (NAT64, 6to4) are judged by that address; the other transition and
deprecated forms (IPv4-compatible, IPv4-translated, Teredo, site-local) are refused.

A fetch is bounded in size, per read, in total time and in average rate (see
:class:`FetchLimits`), and a cancel stops it within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

from pipelines.progress import CancelToken
from serve_app.delivery.fetch_rules import FetchLimits, UrlPolicy
from vocabulary import JobErrorType

__all__ = [
    "FetchError",
    "FetchLimits",
    "UrlPolicy",
    "fetch_to_file",
    "pinned_target",
    "resolve_checked",
]

MAX_REDIRECTS = 5

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The input could not be fetched; the message says why, for the job's error."""

    type = JobErrorType.INVALID_INPUT


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


# IPv6 ranges that carry an IPv4 address in their low 32 bits and reach it through a
# translator: the embedded address must pass the IPv4 rules ("::127.0.0.1" is not
# public just because ``ipaddress`` calls the v6 form global).
_EMBEDDING_V4 = (ipaddress.IPv6Network("64:ff9b::/96"),)  # NAT64 well-known prefix
# Refused outright: local-use NAT64, IPv4-compatible (deprecated), IPv4-translated
# (SIIT), Teredo (a tunnel whose far end we cannot check), site-local (deprecated but
# still routed inside some networks).
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("64:ff9b:1::/48", "::/96", "::ffff:0:0:0/96", "2001::/32", "fec0::/10")
)


def _is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _EMBEDDING_V4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(embedded)
        if any(address in net for net in _REFUSED_V6):
            return False
    return address.is_global and not address.is_multicast


async def resolve_checked(url: str, policy: UrlPolicy) -> Address:
    """The address to connect to for ``url``; :class:`FetchError` if it is refused.

    Resolved off the event loop (the loop's resolver runs ``getaddrinfo`` in a thread):
    one slow DNS answer must not stall every other request of the process.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https URLs can be fetched, got {url[:100]!r}")
    try:
        port = _port(parts)
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, ValueError) as exc:
        raise FetchError(f"cannot resolve host {parts.hostname!r} ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    exempt = policy.allow_private or f"{parts.hostname}:{port}" in policy.allowlist
    if not exempt and not all(_is_public(a) for a in addresses):
        raise FetchError(
            f"{parts.hostname} resolves to a non-public address; refusing "
            "to fetch it (the operator can allow such addresses with "
            "RETROIVA_ALLOW_PRIVATE_URLS=true, or RETROIVA_PRIVATE_URL_ALLOWLIST)"
        )
    return addresses[0]


def pinned_target(url: str, address: Address) -> tuple[str, dict[str, str], dict[str, str]]:
    """``url`` rewritten to connect to ``address``, with Host and SNI for the name."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit(
        (parts.scheme, f"{host}:{_port(parts)}", parts.path or "/", parts.query, "")
    )
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    return target, headers, extensions


class _Transfer:
    """Bytes received so far and since when: what the watchdog checks."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.received = 0

    def problem(self, limits: FetchLimits) -> str | None:
        elapsed = time.monotonic() - self.started
        if elapsed > limits.deadline:
            return f"fetching video_url took longer than its {limits.deadline:g} s deadline"
        if elapsed > limits.rate_grace and self.received < limits.min_rate * elapsed:
            return (
                f"fetching video_url averaged {self.received / elapsed:.0f} bytes/s, "
                f"below the minimum of {limits.min_rate:.0f}"
            )
        return None


_WATCH_INTERVAL = 0.25  # how often deadlines and cancellation are checked


async def fetch_to_file(
    url: str,
    destination: Path,
    *,
    limits: FetchLimits,
    policy: UrlPolicy,
    cancel: CancelToken | None = None,
) -> int:
    """Stream ``url`` into ``destination``; returns the byte count.

    Raises :class:`FetchError` for refused or unreachable URLs, HTTP errors, too many
    redirects, timeouts, transfers past the deadline or below the minimum rate, and
    bodies over ``max_bytes``; :class:`~pipelines.errors.PipelineCanceled` within
    about a quarter of a second of ``cancel`` being set.  The partial file is removed
    in every failure.

    The body is asked for and stored as sent (``Accept-Encoding: identity``; any
    ``Content-Encoding`` is left undecoded), so the size limit counts wire bytes and a
    small compressed body cannot expand on disk.
    """
    transfer = _Transfer()
    task = asyncio.create_task(_download(url, destination, limits, policy, transfer))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_WATCH_INTERVAL)
            if done:
                return task.result()
            if cancel is not None and cancel.canceled:
                await _stop(task)
                cancel.raise_if_canceled()
            problem = transfer.problem(limits)
            if problem is not None:
                await _stop(task)
                raise FetchError(problem)
    except BaseException:
        if not task.done():
            await _stop(task)
        destination.unlink(missing_ok=True)
        raise


async def _stop(task: asyncio.Task[int]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _download(
    url: str, destination: Path, limits: FetchLimits, policy: UrlPolicy, transfer: _Transfer
) -> int:
    max_bytes = limits.max_bytes
    try:
        async with httpx.AsyncClient(follow_redirects=False, timeout=limits.read_timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                address = await resolve_checked(url, policy)
                target, headers, extensions = pinned_target(url, address)
                headers["Accept-Encoding"] = "identity"
                async with client.stream(
                    "GET", target, headers=headers, extensions=extensions
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(
                                f"HTTP {response.status_code} redirect without a Location header"
                            )
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"fetching video_url returned HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                        raise FetchError(f"video is {declared} bytes; the limit is {max_bytes}")
                    with destination.open("wb") as out:
                        # Raw: exactly the bytes sent, whatever Content-Encoding says.
                        async for block in response.aiter_raw():
                            transfer.received += len(block)
                            if transfer.received > max_bytes:
                                raise FetchError(f"video exceeds the {max_bytes}-byte limit")
                            out.write(block)
                    return transfer.received
            raise FetchError(f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        raise FetchError(
            f"fetching video_url timed out after {limits.read_timeout:g} s without data"
        ) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"fetching video_url failed ({type(exc).__name__})") from None
