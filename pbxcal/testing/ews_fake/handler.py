"""The fake's HTTP request handler: the token endpoint, NTLM's handshake, the SOAP
endpoint and the autodiscover endpoint, and GetStreamingEvents as a chunked response
that stays open (one Envelope per chunk until ``ConnectionStatus`` ``Closed``).

The handler only moves bytes; ``FakeEws`` (``fake``) decides every answer. Start reading
at ``Handler.do_POST``.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import spnego
from spnego.exceptions import SpnegoError

if TYPE_CHECKING:
    from pbxcal.testing.ews_fake.server import FakeEws

EWS_PATH = "/EWS/Exchange.asmx"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"


class Handler(BaseHTTPRequestHandler):
    fake: FakeEws
    protocol_version = "HTTP/1.1"  # NTLM authenticates a connection, not a request
    ntlm: Any = None
    principal: str | None = None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        fake = self.fake
        path = urllib.parse.urlsplit(self.path).path
        if path.endswith("/oauth2/v2.0/token"):
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
            status_code, answer = fake.issuer.token(path, form)
            self._reply(status_code, json.dumps(answer), None, "application/json")
            return
        if path.lower() not in (EWS_PATH.lower(), AUTODISCOVER_PATH):
            self._reply(404, "", None)
            return
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("NTLM ") and fake._ntlm_file is not None:
            challenge = self._ntlm_step(authorization[5:])
            if challenge is not None:
                self._reply(401, "", f"NTLM {challenge}")
                return
            user = self.principal
        elif not authorization and self.principal is not None:
            user = self.principal  # an NTLM-authenticated connection
        else:
            user = fake._authenticate(authorization)
        if path.lower() == AUTODISCOVER_PATH:
            status_code, reply = fake._autodiscover(user, body)
            self._reply(status_code, reply, None)
            return
        parsed = fake._parse(user, body)
        if isinstance(parsed[0], int):
            status_code, reply = parsed
            bearer = authorization.startswith("Bearer ")
            self._reply(status_code, reply, 'Bearer error="invalid_token"' if bearer else None)
            return
        operation, request, impersonated = parsed
        assert user is not None
        if operation == "GetStreamingEvents":
            self._stream(user, request, impersonated)
            return
        status_code, reply = fake._handle(user, operation, request, impersonated)
        self._reply(status_code, reply, None)

    def do_HEAD(self) -> None:
        # exchangelib's "is this redirect URL alive" probe of an autodiscover URL
        status_code = 200 if self.path.lower().startswith(AUTODISCOVER_PATH) else 404
        self.send_response(status_code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream(self, user: str, request: ET.Element | None, impersonated: str | None) -> None:
        """One Envelope per chunk, for as long as the connection timeout lasts."""
        fake = self.fake
        with fake._lock:
            generation, dropped = fake._subs.generation, fake._subs.dropped
        opened = fake._open_stream(user, request, impersonated)
        if isinstance(opened[0], int):
            self._reply(opened[0], opened[1], None)
            return
        ids, deadline = opened
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        while True:
            message, state = fake._next_on_stream(ids, deadline, generation, dropped)
            try:
                if state == "drop":
                    self.connection.shutdown(2)
                    return
                data = (message or "").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                if state == "end":
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                return
            if state == "end":
                return

    def _ntlm_step(self, token: str) -> str | None:
        try:
            raw = base64.b64decode(token)
            if raw[8:9] == b"\x01" or self.ntlm is None:
                self.ntlm = spnego.server(protocol="ntlm")
            out = self.ntlm.step(raw)
        except (SpnegoError, binascii.Error, ValueError):
            self.ntlm, self.principal = None, None
            return None
        if self.ntlm.complete:
            self.principal = str(self.ntlm.client_principal)
            return None
        return base64.b64encode(out).decode() if out else None

    def _reply(
        self, status_code: int, reply: str, challenge: str | None, content_type: str = "text/xml"
    ) -> None:
        data = reply.encode()
        self.send_response(status_code)
        if status_code == 401:
            if challenge is not None:
                self.send_header("WWW-Authenticate", challenge)
            else:
                if self.fake._ntlm_file is not None:
                    self.send_header("WWW-Authenticate", "NTLM")
                self.send_header("WWW-Authenticate", 'Basic realm="fake-ews"')
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
