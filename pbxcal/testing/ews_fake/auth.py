"""The fake's OAuth side and its TLS certificate.

``TokenIssuer`` is the token endpoint ``POST /<tenant>/oauth2/v2.0/token`` as Entra ID
answers the client-credentials grant (``grant_type``, ``client_id``, ``client_secret``,
``scope`` ending in ``/.default``): a JSON token with ``expires_in``, or the OAuth error
Entra ID gives (wrong secret → 401 ``invalid_client``, withdrawn consent → 400
``invalid_grant``, unknown app → 400 ``unauthorized_client``). ``check`` tells the EWS
side which app a bearer token belongs to (``None``: unknown, expired or revoked).

``certificate(names)`` makes a self-signed certificate for IP addresses and DNS names.
Start reading at ``TokenIssuer.token``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class _App:
    tenant: str
    secret: str
    consent: bool = True


@dataclass
class _Token:
    client_id: str
    expires: float  # time.monotonic()
    revoked: bool = False


class TokenIssuer:
    """See the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: dict[str, _App] = {}
        self._tokens: dict[str, _Token] = {}
        #: Seconds a new token lives (``expires_in``).
        self.lifetime = 3600.0
        #: Seconds the EWS side still accepts a token after ``expires_in`` (servers allow
        #: for clock skew), so a client that renews on time never gets a 401.
        self.grace = 1.0
        #: Token requests answered so far (any outcome).
        self.requests = 0

    def add_app(self, tenant: str, client_id: str, secret: str) -> None:
        with self._lock:
            self._apps[client_id] = _App(tenant, secret)

    def revoke_consent(self, client_id: str) -> None:
        """The admin withdrew the app's consent: its tokens stop working, new ones are
        refused with ``invalid_grant``."""
        with self._lock:
            self._apps[client_id].consent = False
            for token in self._tokens.values():
                if token.client_id == client_id:
                    token.revoked = True

    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (401 ``invalid_token``)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires = 0.0

    def check(self, value: str) -> str | None:
        with self._lock:
            token = self._tokens.get(value)
            if token is None or token.revoked or token.expires <= time.monotonic():
                return None
            return token.client_id

    def token(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            tenant = path.split("/")[1]
            app = self._apps.get(form.get("client_id", ""))
            if form.get("grant_type") != "client_credentials":
                return 400, _error("unsupported_grant_type", "AADSTS70003: unsupported grant")
            if app is None or app.tenant != tenant:
                return 400, _error("unauthorized_client", "AADSTS700016: no such application")
            if not secrets.compare_digest(form.get("client_secret", ""), app.secret):
                return 401, _error("invalid_client", "AADSTS7000215: Invalid client secret")
            if not app.consent:
                return 400, _error("invalid_grant", "AADSTS65001: consent withdrawn")
            if not form.get("scope", "").endswith("/.default"):
                return 400, _error("invalid_scope", "AADSTS70011: the scope is not valid")
            value = secrets.token_urlsafe(24)
            expires = time.monotonic() + self.lifetime + self.grace
            self._tokens[value] = _Token(form["client_id"], expires)
            return 200, {
                "token_type": "Bearer",
                "expires_in": int(self.lifetime),
                "ext_expires_in": int(self.lifetime),
                "access_token": value,
            }


def _error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description, "error_codes": [0]}


def certificate(names: tuple[str, ...]) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``names`` (IP addresses or DNS names): PEM cert, key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-ews")])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
