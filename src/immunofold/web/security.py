"""HTTP guards of `immunofold serve`, as plain ASGI middleware around the FastAPI app.

Outermost first:
    SecurityHeaders   CSP, nosniff, frame and referrer policy on every response, errors included
    RequestGuard      Host header (DNS rebinding), API token (off loopback), cross-site checks (CSRF)
    BodyLimit         request bodies over a size limit -> 413, before anything parses them
Every refusal is JSON: {"detail": "<one line>", "field": null}.

Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) is refused (403) when its
Origin (else Referer) is not this server, or Sec-Fetch-Site says another site. A request that comes from
a browser (it carries Origin, Referer or Sec-Fetch-Site) must also send the page's CSRF token in the
X-CSRF-Token header (the page reads it from its <meta name="csrf-token">); scripts such as curl, which a
hostile page cannot drive, need no CSRF token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
CSRF_HEADER = "x-csrf-token"
TOKEN_COOKIE = "immunofold_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (a bind address or a Host header name)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The host part of a Host header or netloc, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _headers(scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers") or []}


async def send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Send a complete JSON error response {"detail", "field": null}."""
    body = json.dumps({"detail": detail, "field": None}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.lower().encode(), value.encode("latin-1")) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Add SECURITY_HEADERS (and no-store on /api/ and the page) to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        no_store = scope["path"] == "/" or scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k in SECURITY_HEADERS} | ({"cache-control"} if no_store else set())
                kept = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in names]
                added = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if no_store:
                    added.append((b"cache-control", b"no-store"))
                message = {**message, "headers": kept + added}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class RequestGuard:
    """Refuse requests with a foreign Host header (400), without the API token (401) or cross-site (403).

    allowed_hosts: Host header names served (never empty: the check cannot be turned off).
    api_token: when set, every /api/ request and the page need it (Authorization: Bearer, or the cookie the
    page gets by opening /?token=...); /static/ and /vendor/ (public code) do not.
    csrf_token: the token the page sends with its state-changing requests.
    """

    def __init__(self, app, allowed_hosts, csrf_token: str, api_token: str | None = None):
        if not allowed_hosts or "*" in allowed_hosts:
            raise ValueError("allowed_hosts must name the hosts served; the Host check cannot be turned off")
        self.app = app
        self.allowed_hosts = {host_name(h) for h in allowed_hosts}
        self.csrf_token = csrf_token
        self.api_token = api_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        host = headers.get("host", "")
        if host_name(host) not in self.allowed_hosts:
            shown = host[:80] or "(none)"
            return await send_json(
                send, 400, f"Host header {shown!r} is not served here (start the server with --allowed-host NAME)"
            )
        bearer = False
        if self.api_token is not None and self._needs_token(scope["path"]):
            query_token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if scope["path"] == "/" and query_token and self._is_token(query_token):
                return await self._set_cookie_and_redirect(send, query_token)
            bearer = self._is_token(self._bearer(headers))
            if not bearer and not self._is_token(self._cookie(headers)):
                return await send_json(
                    send,
                    401,
                    "API token missing or wrong: open the address `immunofold serve` printed (it ends in ?token=...)"
                    " or send 'Authorization: Bearer TOKEN'",
                    {"WWW-Authenticate": "Bearer"},
                )
        if scope["method"] in UNSAFE_METHODS:
            problem = self._cross_site_problem(headers, host, bearer)
            if problem:
                return await send_json(send, 403, problem)
        return await self.app(scope, receive, send)

    @staticmethod
    def _needs_token(path: str) -> bool:
        return path in ("/", "/api") or path.startswith("/api/")

    def _is_token(self, candidate: str) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.api_token.encode())

    @staticmethod
    def _bearer(headers: dict[str, str]) -> str:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    @staticmethod
    def _cookie(headers: dict[str, str]) -> str:
        try:
            cookie = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            return ""
        return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""

    def _cross_site_problem(self, headers: dict[str, str], host: str, bearer: bool) -> str | None:
        """Why a state-changing request looks cross-site (one line), or None."""
        own = host.strip().lower()
        origin, referer, fetch_site = headers.get("origin"), headers.get("referer"), headers.get("sec-fetch-site")
        if origin is not None:
            if origin == "null" or urlsplit(origin).netloc.lower() != own:
                return f"cross-site request refused: Origin {origin[:80]!r} is not this server ({own})"
        elif referer is not None and urlsplit(referer).netloc.lower() != own:
            return f"cross-site request refused: Referer {referer[:80]!r} is not this server ({own})"
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:20]})"
        from_browser = origin is not None or referer is not None or fetch_site is not None
        sent = headers.get(CSRF_HEADER, "")
        if from_browser and not bearer and not (sent and hmac.compare_digest(sent.encode(), self.csrf_token.encode())):
            return "page token (X-CSRF-Token) missing or out of date: reload the page"
        return None

    @staticmethod
    async def _set_cookie_and_redirect(send, token: str) -> None:
        cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


class BodyLimit:
    """Refuse request bodies over a size limit (413), whether or not Content-Length is sent."""

    def __init__(self, app, default_limit: int, limits: dict[str, int]):
        self.app = app
        self.default_limit = default_limit
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.default_limit)
        too_large = f"request too large (limit {limit // (1024 * 1024)} MB)"
        length = _headers(scope).get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await send_json(send, 400, "invalid Content-Length header")
            if int(length) > limit:
                return await send_json(send, 413, too_large)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                return await send_json(send, 413, too_large)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        payload = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
