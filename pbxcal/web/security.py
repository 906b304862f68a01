"""Security headers on every answer, and a per-address rate limit.

What it does: ``security_headers(public_url, form_hosts)`` is an aiohttp middleware that
puts a strict Content-Security-Policy (nothing inline, no script at all, styles and
images only from this site, forms only to this site and the sign-in hosts, no framing,
no ``<base>``), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` (for browsers without ``frame-ancestors``), HSTS when the
public URL is https, and ``Cache-Control: no-store`` (a shared computer's back button
must not show someone's status page) on every answer, errors included. Static files
keep a short public cache instead. ``RateLimit(per_minute)`` counts requests per remote
address in a sliding minute and answers 429 beyond it (``/i/*`` and the OAuth
callbacks: guessing invitation tokens or replaying callbacks stays slow).

What it must not do: trust ``X-Forwarded-For`` (anyone can send it; behind a reverse
proxy every customer has the proxy's address, which is why the limit is generous), or
keep state that grows without bound (old addresses are dropped).

Start at ``security_headers``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Static files (the CSS) may be cached for a while; everything else is no-store.
STATIC_PREFIX = "/static/"


def content_security_policy(form_hosts: Iterable[str] = ()) -> str:
    """The CSP of every page: ``form_hosts`` are origins forms may post to (sign-in)."""
    form_action = " ".join(["'self'", *sorted(set(form_hosts))])
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers(public_url: str | None, form_hosts: Iterable[str] = ()) -> Middleware:
    """The middleware described in the module docstring."""
    csp = content_security_policy(form_hosts)
    https = public_url is not None and urlsplit(public_url).scheme == "https"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405, redirects: same headers
            _apply(exc, request.path, csp, https)
            raise
        _apply(response, request.path, csp, https)
        return response

    return middleware


def _apply(response: web.StreamResponse, path: str, csp: str, https: bool) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", csp)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if https:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if path.startswith(STATIC_PREFIX):
        headers.setdefault("Cache-Control", "public, max-age=3600")
    else:
        headers["Cache-Control"] = "no-store"


class RateLimit:
    """At most ``per_minute`` requests per remote address in any 60 seconds.

    ``allow(request)`` says whether this request may go on (and counts it). At most
    ``max_addresses`` addresses are remembered; the least recently seen go first.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, request: web.Request) -> bool:
        return self.allow_address(request.remote or "?")

    def allow_address(self, address: str) -> bool:
        now = self._clock()
        times = self._seen.pop(address, None) or deque()
        while times and times[0] <= now - 60.0:
            times.popleft()
        allowed = len(times) < self.per_minute
        if allowed:
            times.append(now)
        self._seen[address] = times
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return allowed
