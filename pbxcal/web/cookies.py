"""The customer portal's session: one sealed cookie, and the CSRF token inside it.

What it does: keeps a customer's place in the portal (which invitation they opened, for
which PBX and extension, the link they made) in one cookie, ``pbxcal_portal``, sealed
with AES-256-GCM under a key derived by HKDF from the store's key ring
(``KeyRing.derive(b"pbxcal portal cookie")``). Sealing both hides the contents and makes
them tamper-proof: a customer cannot change the invitation or link id in it. Every key
of the ring opens a cookie (so a key rotation does not log anyone out); the current one
seals. The cookie is ``HttpOnly``, ``SameSite=Lax``, ``Path=/`` and ``Secure`` unless
the portal's public URL is plain http on loopback (tests and a local demo).

CSRF: the session holds a random token; every form carries it (``csrf_field``) and
every POST handler calls ``check_csrf`` first, which also refuses a cross-site
``Origin``. Synchronizer token plus SameSite plus Origin: the three defences OWASP lists,
without a library (aiohttp-csrf is abandoned; aiohttp-session would add a dependency
for the forty lines here and still need the key derivation).

What it must not do: put a secret (a password, a token) into the session; a session is
readable by no one but the server, but it is also replayable until it expires.

The API P2's OAuth pages use: ``await portal_session(request)`` (None when there is
none or it is broken/expired), ``set_session(response, session)``, ``csrf_field(session)``
and ``await check_csrf(request, session)`` (raises the 403 page). Start at ``PortalSession``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from markupsafe import Markup, escape

from pbxcal.store import KeyRing
from pbxcal.web import context

COOKIE_NAME = "pbxcal_portal"
#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf_token"
#: How long a portal session lives after the invitation was opened (or last renewed).
SESSION_LIFETIME = timedelta(hours=2)
#: HKDF ``info``: names the purpose of the derived key.
COOKIE_KEY_INFO = b"pbxcal portal cookie"
_AAD = b"pbxcal portal cookie v1"
_NONCE_BYTES = 12
#: Bigger cookies are not ours (ours is ~250 bytes).
_MAX_COOKIE = 2048
_APP_KEY = "pbxcal.web.cookies"


@dataclass
class PortalSession:
    """What the portal remembers about one customer between requests (sealed)."""

    #: The invitation opened (id), its token's SHA-256 hex (to re-read its state),
    #: and the PBX extension it is for.
    invitation_id: int
    token_hash: str
    pbx: str
    extension: str
    #: When the session ends (UTC epoch seconds).
    expires: float
    #: The link made in this session, if any.
    link_id: int | None = None
    #: True once this session linked a calendar (relinking after "wrong account" is allowed).
    linked: bool = False
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def start(
        cls, invitation_id: int, token_hash: str, pbx: str, extension: str, now: datetime
    ) -> PortalSession:
        return cls(invitation_id, token_hash, pbx, extension, (now + SESSION_LIFETIME).timestamp())


class CookieSealer:
    """Seals and opens session cookies with keys derived from the store's key ring."""

    def __init__(self, keys: KeyRing, *, secure: bool) -> None:
        derived = keys.derive(COOKIE_KEY_INFO)
        self._seal_with = AESGCM(derived[0])
        self._open_with = [AESGCM(key) for key in derived]
        self.secure = secure

    def seal(self, session: PortalSession) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(asdict(session), separators=(",", ":")).encode()
        sealed = self._seal_with.encrypt(nonce, plain, _AAD)
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, value: str, now: datetime) -> PortalSession | None:
        """The session in ``value``; None when it is not ours, altered or expired."""
        if len(value) > _MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        for cipher in self._open_with:
            try:
                plain = cipher.decrypt(nonce, sealed, _AAD)
            except (InvalidTag, ValueError):
                continue
            session = _session(json.loads(plain))
            if session is None or session.expires <= now.timestamp():
                return None
            return session
        return None


def _session(data: Any) -> PortalSession | None:
    try:
        return PortalSession(**data)
    except TypeError:  # written by another version: start again
        return None


def secure_cookies(public_url: str) -> bool:
    """False only for a plain-http public URL on loopback (tests, a local demo)."""
    parts = urlsplit(public_url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ip_address(host).is_loopback
    except ValueError:
        return True


def install(app: web.Application, sealer: CookieSealer) -> None:
    """Make ``portal_session`` and ``set_session`` work for ``app``'s requests."""
    app[_sealer_key] = sealer


_sealer_key = web.AppKey(_APP_KEY, CookieSealer)


def _sealer(request: web.Request) -> CookieSealer:
    return request.config_dict[_sealer_key]


async def portal_session(request: web.Request, now: datetime | None = None) -> PortalSession | None:
    """The request's session, or None (no cookie, not ours, altered or expired)."""
    value = request.cookies.get(COOKIE_NAME)
    if not value:
        return None
    moment = now or context(request).clock.now()
    return _sealer(request).open(value, moment)


def set_session(request: web.Request, response: web.StreamResponse, session: PortalSession) -> None:
    """Write ``session`` into ``response`` as the sealed cookie."""
    sealer = _sealer(request)
    response.set_cookie(
        COOKIE_NAME,
        sealer.seal(session),
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=sealer.secure,
        httponly=True,
        samesite="Lax",
    )


def clear_session(request: web.Request, response: web.StreamResponse) -> None:
    sealer = _sealer(request)
    response.del_cookie(COOKIE_NAME, path="/", secure=sealer.secure, httponly=True, samesite="Lax")


def csrf_field(session: PortalSession) -> Markup:
    """The hidden form field that carries the session's CSRF token."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        CSRF_FIELD, escape(session.csrf)
    )


class CsrfRefused(Exception):
    """A POST without the session's CSRF token, or from another site (the 403 page)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def check_csrf(request: web.Request, session: PortalSession | None) -> dict[str, str]:
    """The POSTed form when its CSRF token is the session's and it comes from this site.

    Raises ``CsrfRefused`` (the portal shows a 403 page, nothing changes) otherwise.
    """
    if session is None:
        raise CsrfRefused("no-session")
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and origin != _own_origin(request):
        raise CsrfRefused("cross-site")
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise CsrfRefused("token")
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _own_origin(request: web.Request) -> str:
    portal = context(request).config.portal
    if portal is None:
        return f"{request.scheme}://{request.host}"
    parts = urlsplit(portal.public_url)
    return f"{parts.scheme}://{parts.netloc}"


def renewed(session: PortalSession, now: datetime) -> PortalSession:
    """``session`` valid for another ``SESSION_LIFETIME`` from ``now``."""
    return replace(session, expires=(now + SESSION_LIFETIME).timestamp())
