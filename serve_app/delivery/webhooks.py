"""Webhook events: JavaScript-compatible JSON, HMAC signatures, delivery with retries.

The reference's receiver verifies ``HMAC(JSON.stringify(req.body))``: JavaScript's
re-serialisation of the parsed body, not the bytes we sent.  So every body is written
exactly as ``JSON.stringify`` would write it: compact separators, non-ASCII as UTF-8
(lone surrogates escaped), integers within ±2^53, and floats in JavaScript's number
format (``1`` not ``1.0``, ``1e-7`` not ``1e-07``).

Signatures: ``X-Retroiva-Signature`` (hex HMAC-SHA256 of the body under the whole
secret string, the reference's scheme) and, beside it, Standard Webhooks'
``webhook-id`` (the event id, the same on every retry and redelivery),
``webhook-timestamp`` (this attempt's send time: receivers refuse stale ones) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` under
:func:`~serve_app.access.keys.webhook_signing_key`; after a rotation, a second ``v1,``
entry under the previous secret until its overlap ends).

Delivery: a POST under a 10 s deadline for the whole attempt (connect, send, status
line and headers; a receiver that answers a byte at a time cannot stretch it); any 2xx
is success; otherwise retries follow ``Settings.retry_schedule`` with ±20 % jitter,
then the event is marked failed and kept.  A redelivery (through the API) makes the
event pending again with a fresh round of retries.  Only the status line and headers are read: the
response body is never read, so a receiver answering with a huge or endless body
costs nothing.  Each request goes to an address that passes the same checks as
``video_url`` fetches; a refused address is recorded as a failed attempt.

A runner makes at most ``webhook_concurrency`` deliveries at once, and at most
``webhook_concurrency_per_key`` of them for one API key, so a key whose receivers are
slow waits for its own slots while other keys' events go out.  A revoked key's
events are not sent: each is marked failed with that reason.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from decimal import Decimal
from typing import Any

import httpx

from serve_app.access.keys import webhook_signing_key
from serve_app.api.schemas import Job
from serve_app.delivery.fetch import FetchError, pinned_target, resolve_checked
from serve_app.jobs.records import ApiKeyRecord, JobRecord, WebhookAttempt
from serve_app.jobs.store import JobStore
from serve_app.metrics import count_webhook_delivery
from serve_app.settings import Settings
from vocabulary import DeliveryStatus

__all__ = [
    "WebhookDispatcher",
    "event_body",
    "js_json",
    "retry_delay",
    "schedule_delay",
    "sign",
    "standard_headers",
    "standard_signature",
]

log = logging.getLogger(__name__)

_MAX_SAFE_INTEGER = 2**53 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _js_float(value: float) -> str:
    """``Number.prototype.toString`` for a finite float (ECMA-262 Number::toString)."""
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    k, n = len(text), len(text) + int(exponent)  # value = 0.digits × 10^n
    prefix = "-" if sign else ""
    if k <= n <= 21:
        return prefix + text + "0" * (n - k)
    if 0 < n <= 21:
        return prefix + text[:n] + "." + text[n:]
    if -6 < n <= 0:
        return prefix + "0." + "0" * -n + text
    mantissa = text[0] + ("." + text[1:] if k > 1 else "")
    return f"{prefix}{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def _js_text(value: Any) -> str:
    """``value`` as ``JSON.stringify`` writes it, lone surrogates still raw."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INTEGER:
            raise ValueError(f"{value} cannot round-trip through JavaScript numbers")
        return int.__repr__(value)  # an IntEnum's digits, not its name
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON has no NaN or Infinity")
        return _js_float(value)
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}:{_js_text(v)}" for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_js_text(v) for v in value) + "]"
    raise TypeError(f"cannot serialise {type(value).__name__}")


def js_json(value: Any) -> str:
    """``value`` serialised exactly as ``JSON.stringify`` would serialise it.

    Written out here rather than through ``json.dumps``: only the number format
    differs from Python's, and the encoder offers no public hook for floats.
    """
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", _js_text(value))


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks ``v1,`` entry for ``secret``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(key: ApiKeyRecord, msg_id: str, now: float, body: bytes) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for a send at
    ``now``: one entry per secret valid at ``now`` (current first)."""
    secrets = [key.webhook_secret]
    if key.previous_webhook_secret and (key.previous_secret_expires_at or 0) > now:
        secrets.append(key.previous_webhook_secret)
    timestamp = math.floor(now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            standard_signature(s, msg_id, timestamp, body) for s in secrets
        ),
    }


def event_body(job: JobRecord, job_object: Job) -> str:
    """The event for ``job``'s terminal transition, as the exact text to send."""
    return js_json(
        {
            "id": job.event_id,
            "type": job.event_type,
            "created_at": math.floor(job.completed_at or time.time()),
            "data": job_object.model_dump(mode="json"),
        }
    )


def retry_delay(attempt: int, base: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (1-based): base × 2^(attempt-1), jitter ±20 %.

    With ±20 % jitter each gap still exceeds the one before (0.8 × 2 > 1.2).
    """
    return base * 2 ** (attempt - 1) * rng.uniform(0.8, 1.2)


def schedule_delay(retry: int, schedule: tuple[float, ...], rng: random.Random) -> float | None:
    """Delay before retry ``retry`` (1-based) of ``schedule``, jitter ±20 %; None once
    the schedule is spent."""
    if not 1 <= retry <= len(schedule):
        return None
    return schedule[retry - 1] * rng.uniform(0.8, 1.2)


class WebhookDispatcher:
    """Delivers due events from the store's outbox; safe to run in several processes."""

    def __init__(
        self, store: JobStore, settings: Settings, job_object: Any, rng: random.Random | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self._job_object = job_object  # JobRecord -> Job, with the output URL filled in
        self._rng = rng or random.Random()
        self._inflight: set[asyncio.Task[None]] = set()
        self._per_key: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"WebhookDispatcher(inflight={len(self._inflight)})"

    async def tick(self) -> None:
        """Start deliveries for due events while there are slots (overall and per key)."""
        lease = self.settings.webhook_timeout_seconds + 5
        per_key = self.settings.webhook_concurrency_per_key
        # One claim at a time, skipping keys at their limit, so an event is only
        # claimed when it can start now: none waits, claimed, behind a slow key.
        while len(self._inflight) < self.settings.webhook_concurrency:
            full = [key for key, count in self._per_key.items() if count >= per_key]
            claimed = await self.store.claim_due_webhooks(time.time(), lease, 1, exclude_keys=full)
            if not claimed:
                return
            job = claimed[0]
            self._per_key[job.key_id] += 1
            task = asyncio.create_task(self.deliver(job))
            self._inflight.add(task)
            task.add_done_callback(functools.partial(self._done, key_id=job.key_id))

    def _done(self, task: asyncio.Task[None], key_id: str) -> None:
        self._inflight.discard(task)
        self._per_key[key_id] -= 1
        if self._per_key[key_id] <= 0:
            del self._per_key[key_id]

    async def drain(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def deliver(self, job: JobRecord) -> None:
        assert job.webhook_url is not None
        body = job.webhook_body or await self.store.freeze_webhook_body(
            job.id, event_body(job, await self._job_object(job))
        )  # kept before it is sent
        key = await self.store.get_key(job.key_id)
        number = job.webhook_attempts + 1
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        revoked = key is None or key.revoked_at is not None
        try:
            if key is None:
                raise FetchError("the job's API key no longer exists")
            if key.revoked_at is not None:
                raise FetchError("the job's API key was revoked")
            address = await resolve_checked(job.webhook_url, self.settings.url_policy)
            target, headers, extensions = pinned_target(job.webhook_url, address)
            payload = body.encode()
            headers.update(
                {
                    "Content-Type": "application/json",
                    "User-Agent": "Retroiva-Webhooks/2",
                    "X-Retroiva-Signature": sign(key.webhook_secret, payload),
                    "X-Retroiva-Event-Id": job.event_id,
                    "X-Retroiva-Timestamp": str(math.floor(job.completed_at or time.time())),
                    # Signed at send time: Standard Webhooks receivers refuse stale timestamps.
                    **standard_headers(key, job.event_id, time.time(), payload),
                }
            )
            deadline = self.settings.webhook_timeout_seconds
            async with (
                asyncio.timeout(deadline),
                httpx.AsyncClient(timeout=deadline, follow_redirects=False) as client,
                client.stream(
                    "POST", target, content=payload, headers=headers, extensions=extensions
                ) as response,
            ):
                # Leaving the block without reading the body closes the connection.
                status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except FetchError as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"no response within the {self.settings.webhook_timeout_seconds:g} s deadline"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempt = WebhookAttempt(
            job.id,
            number,
            time.time(),
            status_code,
            error,
            round((time.monotonic() - started) * 1000),
            redelivery=job.webhook_round_start > 0,
        )
        # Retries count within the current round (a redelivery starts a new one).
        delay = schedule_delay(
            number - job.webhook_round_start, self.settings.retry_schedule, self._rng
        )
        if error is None:
            status, next_at = DeliveryStatus.DELIVERED, None
        elif delay is None or revoked:
            status, next_at = DeliveryStatus.FAILED, None
            log.warning(
                "webhook %s for %s failed after %d attempts: %s",
                job.event_id,
                job.id,
                number,
                error,
            )
        else:
            status, next_at = DeliveryStatus.PENDING, time.time() + delay
        await self.store.record_webhook_attempt(attempt, status=status, next_at=next_at, body=body)
        count_webhook_delivery(
            "delivered"
            if error is None
            else "failed"
            if status == DeliveryStatus.FAILED
            else "retrying"
        )
