"""CSRF for the guests' forms: a signed double-submit cookie (guests have no session).

What it does: the first booking page a browser sees sets ``pbxcal_guest``, a random
value (HttpOnly, SameSite=Lax, Path=/book, Secure like the portal's cookie). Every
form carries ``HMAC-SHA256(key, "pbxcal guest form|" + that value)``, where the key is
derived from the store's key ring (``KeyRing.derive(b"pbxcal guest csrf")``, every key
of the ring accepted so a key rotation breaks no open page). ``check_form`` accepts a
POST only when the cookie is there, the form's token is its HMAC, and the ``Origin``
header (when the browser sends one) is this site. A page an attacker fetches for
themselves gives them a token for *their* cookie, not the guest's, which is what
makes this a CSRF defence (a token bound only to the form would not be).

Why not the portal's session cookie (``cookies.PortalSession``): that one is an
invitation session (invitation id, PBX, extension) that a guest does not have; faking
one for guests would mix two purposes in one sealed value. Nothing secret or personal
is in this cookie.

Start at ``check_form``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web
from markupsafe import Markup, escape

from pbxcal.web import context
from pbxcal.web.cookies import CSRF_FIELD, secure_cookies

COOKIE = "pbxcal_guest"
KEY_INFO = b"pbxcal guest csrf"
_PURPOSE = b"pbxcal guest form|"
_MAX_COOKIE = 100


class FormRefused(Exception):
    """A guest's POST without the right token, or from another site (the 403 page)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _keys(request: web.Request) -> tuple[bytes, ...]:
    keys = context(request).keys
    if keys is None:  # the public pages run only with a key ring (WebServer checks)
        raise FormRefused("no-key")
    return keys.derive(KEY_INFO)


def _token(key: bytes, cookie: str) -> str:
    return hmac.new(key, _PURPOSE + cookie.encode(), hashlib.sha256).hexdigest()


def guest_cookie(request: web.Request) -> tuple[str, bool]:
    """(the browser's guest cookie value, whether it is new and must be set)."""
    value = request.cookies.get(COOKIE, "")
    if value and len(value) <= _MAX_COOKIE and value.isascii():
        return value, False
    return secrets.token_urlsafe(32), True


def form_field(request: web.Request, cookie: str) -> Markup:
    """The hidden field that carries the token for ``cookie``."""
    token = _token(_keys(request)[0], cookie)
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(token))


def set_guest_cookie(request: web.Request, response: web.StreamResponse, cookie: str) -> None:
    portal = context(request).config.portal
    secure = secure_cookies(portal.public_url) if portal is not None else True
    response.set_cookie(COOKIE, cookie, path="/book", secure=secure, httponly=True, samesite="Lax")


async def check_form(request: web.Request) -> dict[str, str]:
    """The POSTed form when its token matches the guest cookie and it comes from this
    site; ``FormRefused`` (nothing happens) otherwise."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and origin != _own_origin(request):
        raise FormRefused("cross-site")
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or len(cookie) > _MAX_COOKIE:
        raise FormRefused("no-cookie")
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not any(
        hmac.compare_digest(sent.encode(), _token(key, cookie).encode()) for key in _keys(request)
    ):
        raise FormRefused("token")
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _own_origin(request: web.Request) -> str:
    portal = context(request).config.portal
    if portal is None:
        return f"{request.scheme}://{request.host}"
    parts = urlsplit(portal.public_url)
    return f"{parts.scheme}://{parts.netloc}"
