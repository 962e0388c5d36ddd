"""Verifying webhook deliveries: Standard Webhooks headers, or ``X-Retroiva-Signature``.

Retroiva signs every event two ways with the key's ``whsec_…`` secret:

- **Standard Webhooks** (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, a space-separated
  list of ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` whose key is the
  base64-decoded part after ``whsec_``; several entries while a rotated secret's
  overlap lasts.  The timestamp must be within ``tolerance`` seconds of now, which
  stops replays of captured deliveries.
- **Retroiva's own** ``X-Retroiva-Signature``: hex HMAC-SHA256 of the raw body keyed
  with the whole ``whsec_…`` string, as the API reference's Node snippet computes it.
  It covers no delivery time, so it cannot stop a replay: de-duplicate on the event id.

When the Standard Webhooks headers are present they decide (a stale or wrong one is
refused even if the other header matches, or the timestamp check could be sidestepped);
``X-Retroiva-Signature`` is checked only on deliveries without them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from retroiva_client.errors import WebhookVerificationError

__all__ = ["DEFAULT_TOLERANCE_SECONDS", "verify_webhook"]

DEFAULT_TOLERANCE_SECONDS = 5 * 60  # the Standard Webhooks reference libraries' default


_URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


def _standard_key(secret: str) -> bytes:
    """The HMAC key for ``webhook-signature``, derived from ``secret`` as the service does.

    ``whsec_`` + standard base64 (every secret made since Standard Webhooks) decodes as
    the spec says; older secrets are URL-safe base64 without padding, decoded as such;
    anything else (a secret set by hand) keys HMAC with its own UTF-8 bytes.
    """
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
        if key:
            return key
    except (binascii.Error, ValueError):
        pass
    if _URLSAFE.fullmatch(encoded) and len(encoded) % 4 != 1:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return secret.encode()


def _verify_standard(
    body: bytes, headers: Mapping[str, str], secret: str, tolerance: float, now: float
) -> None:
    event_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not event_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    # Bounded before int(): Python refuses to parse over ~4300 digits with a ValueError
    # that would escape as a 500 in the receiver instead of a clean rejection.
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance:g} s from now")
    signed = f"{event_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_standard_key(secret), signed, hashlib.sha256).digest())
    for entry in signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return
    raise WebhookVerificationError("no webhook-signature entry matches the secret")


def _verify_retroiva(body: bytes, signature: str, secret: str) -> None:
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(
        expected.encode(), signature.strip().lower().encode("utf-8", "replace")
    ):
        raise WebhookVerificationError("X-Retroiva-Signature does not match the secret")


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    allow_legacy: bool = False,
) -> dict[str, Any]:
    """Check a delivery's signature and return its event (the parsed JSON body).

    ``body`` must be the raw request body, exactly as received; ``headers`` any
    mapping of the request's headers (names in any case); ``secret`` the key's
    ``whsec_…`` webhook secret.  Raises :class:`WebhookVerificationError` when
    neither scheme's headers are present, or the present one does not verify.

    The service always sends both schemes, so by default the Standard Webhooks headers
    are required: ``X-Retroiva-Signature`` alone carries no timestamp, and a captured
    delivery with the other headers stripped would verify forever.  ``allow_legacy``
    accepts it alone, for deliveries from services older than the Standard headers.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    if any(name in lowered for name in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        _verify_standard(raw, lowered, secret, tolerance, time.time() if now is None else now)
    elif "x-retroiva-signature" in lowered and allow_legacy:
        _verify_retroiva(raw, lowered["x-retroiva-signature"], secret)
    elif "x-retroiva-signature" in lowered:
        raise WebhookVerificationError(
            "only X-Retroiva-Signature is present: it has no timestamp, so a replayed "
            "delivery would verify; pass allow_legacy=True to accept it"
        )
    else:
        raise WebhookVerificationError("no webhook-signature or X-Retroiva-Signature header")
    try:
        event = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the signed body is not a JSON object")
    return event
