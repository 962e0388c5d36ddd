"""Dashboard sign-in: the admin token, signed session cookies and CSRF tokens.

A session is a cookie holding ``payload.signature``: who signed in (a key id or the
operator), when it expires and a random nonce, signed with HMAC-SHA256 under a key
derived from the admin token.  Nothing is kept server-side, so every API replica
accepts every session; the API key itself never leaves the sign-in form.  Each request
still looks the key up, so a revoked key's sessions end at once, and a new admin token
ends every session.  A form's CSRF token is an HMAC of the session's nonce (or, before
sign-in, of a random pre-session cookie), checked on every state-changing request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serve_app.access.private_files import write_once

__all__ = [
    "ADMIN_PREFIX",
    "Session",
    "SessionSigner",
    "admin_token_path",
    "load_admin_token",
    "new_admin_token",
]

ADMIN_PREFIX = "adm_"
_ADMIN_FILE = "admin.token"

Role = Literal["key", "operator"]


def new_admin_token() -> str:
    return ADMIN_PREFIX + secrets.token_urlsafe(32)


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / _ADMIN_FILE


def load_admin_token(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """The admin token and whether this call created it.

    ``RETROIVA_ADMIN_TOKEN`` when set; otherwise the one generated once into
    ``<data_dir>/admin.token`` (mode 0600), which every local replica shares.
    """
    if configured:
        return configured, False
    path = admin_token_path(data_dir)
    existed = path.exists()
    return write_once(path, new_admin_token().encode()).decode(), not existed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    role: Role
    key_id: str | None  # the signed-in key; None for the operator
    expires_at: int
    nonce: str


class SessionSigner:
    """Makes and checks session cookies and CSRF tokens under one admin token."""

    def __init__(self, admin_token: str, lifetime_seconds: int) -> None:
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest()
        # Separate keys per purpose, so a CSRF token can never pass as a session.
        self._session_key = hmac.new(
            self._admin_digest, b"dashboard session", hashlib.sha256
        ).digest()
        self._csrf_key = hmac.new(self._admin_digest, b"dashboard csrf", hashlib.sha256).digest()
        self.lifetime_seconds = lifetime_seconds

    def is_admin_token(self, presented: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._admin_digest)

    def issue(self, role: Role, key_id: str | None) -> tuple[str, Session]:
        session = Session(
            role, key_id, int(time.time()) + self.lifetime_seconds, secrets.token_urlsafe(16)
        )
        payload = _b64(
            json.dumps(
                {
                    "r": session.role,
                    "k": session.key_id,
                    "e": session.expires_at,
                    "n": session.nonce,
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, cookie: str | None) -> Session | None:
        """The cookie's session if its signature holds and it has not expired."""
        if not cookie or len(cookie) > 1024:
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(
            self._sign(payload).encode(), signature.encode("utf-8", "surrogateescape")
        ):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(data["r"], data["k"], int(data["e"]), str(data["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.role not in ("key", "operator") or session.expires_at <= time.time():
            return None
        return session

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, nonce: str, presented: str) -> bool:
        return hmac.compare_digest(
            self.csrf_token(nonce).encode(), presented.encode("utf-8", "surrogateescape")
        )

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._session_key, payload.encode(), hashlib.sha256).digest())
