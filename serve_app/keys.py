"""API keys and webhook secrets: made random, stored as digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from serve_app.records import ApiKeyRecord

__all__ = ["KEY_PREFIX", "digest_key", "keys_match", "new_api_key", "new_id",
           "new_webhook_secret"]

KEY_PREFIX = "sk_live_"
_DISPLAY_CHARS = len(KEY_PREFIX) + 4


def new_id(prefix: str) -> str:
    """``prefix_`` + 24 random URL-safe characters (144 bits)."""
    return f"{prefix}_{secrets.token_urlsafe(18)}"


def digest_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_match(presented_digest: str, stored_digest: str) -> bool:
    return hmac.compare_digest(presented_digest, stored_digest)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def new_api_key(name: str, rate_limit: int) -> tuple[str, ApiKeyRecord]:
    """A fresh key (32 random bytes) and the record that stores only its digest."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(id=new_id("key"), name=name, prefix=key[:_DISPLAY_CHARS],
                          digest=digest_key(key), webhook_secret=new_webhook_secret(),
                          rate_limit=rate_limit, created_at=time.time())
    return key, record
