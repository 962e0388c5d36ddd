"""HMAC-SHA256 signatures for the local backend's download URLs.

A signature covers the path and the expiry, so neither can be changed without the
server secret.  The secret comes from ``RETROIVA_SIGNING_SECRET``, or is generated once
into ``<data_dir>/signing.key`` (mode 0600) so every local replica shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from serve_app.access.private_files import write_once

__all__ = ["load_signing_secret", "sign_path", "signature_valid"]


def load_signing_secret(configured: str | None, data_dir: Path) -> bytes:
    if configured:
        return configured.encode()
    return write_once(data_dir / "signing.key", secrets.token_hex(32).encode())


def sign_path(secret: bytes, path: str, expires: int) -> str:
    return hmac.new(secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signature_valid(secret: bytes, path: str, expires: int, signature: str) -> bool:
    # Bytes, not str: compare_digest raises TypeError on non-ASCII text (found by the
    # schema fuzzer: ?signature=%C2%80 was a 500).
    return hmac.compare_digest(
        sign_path(secret, path, expires).encode(), signature.encode("utf-8", "surrogateescape")
    )
