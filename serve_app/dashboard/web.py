"""Shared page machinery: templates, forms, the signed-in person, CSRF and cookies."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from serve_app.dashboard.sessions import Session, SessionSigner
from serve_app.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from serve_app.jobs.job_spec import UPSCALE_FACTORS
from serve_app.jobs.records import ApiKeyRecord
from vocabulary import Engine, PresetName

if TYPE_CHECKING:
    from serve_app.api.app import Api

__all__ = ["SESSION_COOKIE", "Dashboard", "SignInRequired", "Visitor"]

SESSION_COOKIE = "retroiva_session"
# Before sign-in: a random value whose HMAC is the sign-in form's CSRF token.
PRE_SESSION_COOKIE = "retroiva_presession"
_HERE = Path(__file__).parent

# The pages load only their own CSS and JS; nothing inline, nothing from elsewhere.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Job pages hold signed download links; they must not leak through a Referer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """No valid session for this page: the person is sent to the sign-in page."""


@dataclass(frozen=True)
class Visitor:
    """Who is signed in: a key holder (with their key) or the operator."""

    session: Session
    key: ApiKeyRecord | None

    @property
    def is_operator(self) -> bool:
        return self.session.role == "operator"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Dashboard:
    """State shared by every page: the API's handlers and store, the signer, templates."""

    def __init__(self, api: Api, signer: SessionSigner) -> None:
        self.api = api
        self.settings = api.settings
        self.signer = signer
        self.templates = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # The form's choices are the vocabulary's, in the order the API documents them.
        self.templates.globals.update(
            presets=[p.value for p in PresetName],
            engines=[e.value for e in Engine],
            upscale_factors=[str(f) for f in UPSCALE_FACTORS],
        )
        self.templates.filters["when"] = _when
        self.templates.filters["duration"] = _duration

    # Responses
    def render(
        self,
        request: Request,
        template: str,
        visitor: Visitor | None,
        status: int = 200,
        **context: Any,
    ) -> Response:
        nonce = visitor.session.nonce if visitor else self.pre_session(request)
        html = self.templates.get_template(template).render(
            root=self.root(request),
            visitor=visitor,
            csrf=self.signer.csrf_token(nonce),
            rate=getattr(request.state, "rate_headers", None),
            now=time.time(),
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
        if visitor is None and request.cookies.get(PRE_SESSION_COOKIE) != nonce:
            self.set_cookie(request, response, PRE_SESSION_COOKIE, nonce, 3600)
        return response

    def pre_session(self, request: Request) -> str:
        """The visitor's pre-session nonce: their cookie's, else a new one."""
        nonce = request.cookies.get(PRE_SESSION_COOKIE, "")
        if not 16 <= len(nonce) <= 64 or not nonce.isascii():
            nonce = getattr(request.state, "new_pre_session", "") or secrets.token_urlsafe(16)
            request.state.new_pre_session = nonce
        return nonce

    def redirect(self, request: Request, path: str) -> Response:
        """303 to ``path`` under the dashboard (Post/Redirect/Get)."""
        return RedirectResponse(
            self.root(request) + path, status_code=303, headers=_SECURITY_HEADERS
        )

    def root(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _secure(self, request: Request) -> bool:
        """Secure cookies wherever the browser reaches us over HTTPS (directly, or
        through a proxy that public_url names); plain-HTTP local use can't have them."""
        public = self.settings.public_url or ""
        return request.url.scheme == "https" or public.startswith("https://")

    def set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.root(request) + "/",
            secure=self._secure(request),
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, request: Request, response: Response, name: str) -> None:
        response.delete_cookie(
            name,
            path=self.root(request) + "/",
            secure=self._secure(request),
            httponly=True,
            samesite="strict",
        )

    # Requests
    async def form(self, request: Request) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, bounded like the API's JSON."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type and request.headers.get("content-length", "0") == "0":
            return {}  # an empty POST: refused by the CSRF check, as a form would be
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequestError("forms must be sent as application/x-www-form-urlencoded")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.settings.max_body_bytes:
                raise PayloadTooLargeError(f"form exceeds {self.settings.max_body_bytes} bytes")
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequestError("malformed form") from None
        return dict(pairs)

    def check_origin(self, request: Request) -> None:
        """Refuse a state-changing request that a browser says came from another site.

        Our own origin is the address this server sees, or, behind a TLS-terminating
        proxy, the one ``public_url`` names (the browser's Origin is the proxy's)."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            there = urlsplit(origin)
            ours = {urlsplit(str(request.url))[:2]}
            if self.settings.public_url:
                ours.add(urlsplit(self.settings.public_url)[:2])
            if (there.scheme, there.netloc) not in ours:
                raise ForbiddenError("cross-origin form submission refused")

    def check_csrf(self, request: Request, form: dict[str, str], nonce: str) -> None:
        self.check_origin(request)
        if not self.signer.csrf_valid(nonce, form.get("csrf", "")):
            raise ForbiddenError(
                "the form's CSRF token is missing or stale; reload the page and try again"
            )

    async def visitor(self, request: Request, role: str | None = None) -> Visitor:
        """The signed-in person (``role``: only that kind), else :class:`SignInRequired`.

        A key holder's key is read afresh: a revoked key is signed out at once.
        """
        session = self.signer.verify(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired
        key = None
        if session.role == "key":
            store = await self.api._store()
            key = await store.get_key(session.key_id or "")
            if key is None or key.revoked_at is not None:
                raise SignInRequired
        if role is not None and session.role != role:
            # Signed in, as the other kind of person: their session stays.
            who = "the operator" if session.role == "operator" else "a key holder"
            raise NotFoundError(f"no page {request.url.path} for {who}")
        return Visitor(session, key)

    async def as_key(self, request: Request, visitor: Visitor) -> ApiKeyRecord:
        """Let the API's handlers act for the signed-in key holder, and count this
        request against their rate limit: :meth:`Api.authenticate` takes the key from
        the request's state (the session and CSRF token were checked here)."""
        request.state.dashboard_key = visitor.key
        return await self.api.authenticate(request)

    async def post(self, request: Request, role: str) -> tuple[Visitor, dict[str, str]]:
        """A state-changing request's visitor and form, CSRF checked."""
        visitor = await self.visitor(request, role)
        form = await self.form(request)
        self.check_csrf(request, form, visitor.session.nonce)
        return visitor, form
