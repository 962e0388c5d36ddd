"""API keys and webhook secrets: made random, stored as digests, compared in constant time.

Webhook secrets are ``whsec_`` + standard base64 of 32 random bytes: the form the
Standard Webhooks libraries decode, so a receiver passes the secret to them as it is.
Secrets made before that (``whsec_`` + URL-safe base64 of 32 random bytes, unpadded)
stay valid without a rotation: their Standard Webhooks key is the same 32 bytes, read
with the URL-safe alphabet (:func:`webhook_signing_key`).  The standard libraries read
only the standard alphabet, so a receiver holding such a secret passes them the bytes
(``Webhook(base64.urlsafe_b64decode(secret[6:] + "="))``) or rotates to a new secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING

from serve_app.jobs.records import ApiKeyRecord

if TYPE_CHECKING:
    from serve_app.jobs.store import KeyStore

__all__ = [
    "KEY_PREFIX",
    "SECRET_PREFIX",
    "digest_key",
    "keys_match",
    "new_api_key",
    "new_id",
    "new_webhook_secret",
    "rotate_webhook_secret",
    "webhook_signing_key",
]

KEY_PREFIX = "sk_live_"
_DISPLAY_CHARS = len(KEY_PREFIX) + 4


def new_id(prefix: str) -> str:
    """``prefix_`` + 24 random URL-safe characters (144 bits)."""
    return f"{prefix}_{secrets.token_urlsafe(18)}"


def digest_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_match(presented_digest: str, stored_digest: str) -> bool:
    return hmac.compare_digest(presented_digest, stored_digest)


SECRET_PREFIX = "whsec_"
_URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


def new_webhook_secret() -> str:
    """``whsec_`` + standard base64 of 32 random bytes (what Standard Webhooks expects)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_signing_key(secret: str) -> bytes:
    """The HMAC key of ``webhook-signature`` for ``secret``.

    Standard base64 after ``whsec_`` (today's secrets) decodes as the spec says; a
    secret from before (URL-safe alphabet, no padding) is the same kind of random
    bytes in the other alphabet, decoded as such; anything else (a hand-set secret)
    signs with its own UTF-8 bytes.  ``X-Retroiva-Signature`` is unaffected: it keys
    HMAC with the whole secret string, as it always has.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
        if key:
            return key
    except binascii.Error:
        pass
    if _URLSAFE.fullmatch(encoded) and len(encoded) % 4 != 1:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return secret.encode()


async def rotate_webhook_secret(
    store: KeyStore, key_ref: str, now: float, overlap_seconds: float
) -> tuple[str, float] | None:
    """Give a key (id or unambiguous prefix) a new webhook secret; the old one keeps
    signing for ``overlap_seconds``.  Returns ``(secret, previous_valid_until)``, or
    None when there is no such key; raises AmbiguousKey like the store.

    The API's ``POST /v2/webhook_secret/rotate`` and ``retroiva keys
    rotate-webhook-secret`` both go through here.
    """
    secret = new_webhook_secret()
    until = now + overlap_seconds
    # No overlap asked (a leaked secret): every older secret ends now.  Otherwise an
    # earlier rotation's previous secret still in its overlap is kept, with its own end.
    keep_at = now if overlap_seconds > 0 else None
    if not await store.rotate_webhook_secret(key_ref, secret, until, keep_at):
        return None
    [record] = await store.find_keys(key_ref)
    kept = record.previous_secret_expires_at
    return secret, until if kept is None else min(until, kept)


def new_api_key(name: str, rate_limit: int) -> tuple[str, ApiKeyRecord]:
    """A fresh key (32 random bytes) and the record that stores only its digest."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id=new_id("key"),
        name=name,
        prefix=key[:_DISPLAY_CHARS],
        digest=digest_key(key),
        webhook_secret=new_webhook_secret(),
        rate_limit=rate_limit,
        created_at=time.time(),
    )
    return key, record
