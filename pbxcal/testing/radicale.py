"""A real Radicale CalDAV server for tests and demos, on a free loopback port.

``RadicaleServer(directory, users={"alice": "secret"})`` serves Radicale's WSGI
application in-process (a threading ``wsgiref`` server in a daemon thread) on
``127.0.0.1`` and a port the kernel picked, so parallel test runs never collide. Auth is
set explicitly to ``htpasswd`` with plain-text users written into ``directory`` (since
Radicale 3.5 the default denies everything), the storage lives in ``directory`` too,
and the failed-login delay is 0 so a wrong-password test is fast. ``stop()`` closes the
listening socket: a client then sees "connection refused", which is how tests model a
server that is down; ``start()`` serves the same storage again on the same port if it is
still free.

Two switches model other servers, in front of the real Radicale: ``sync_collection =
False`` answers the RFC 6578 sync-collection REPORT with 403 ``DAV:supported-report``
(a server without sync tokens, so clients fall back to ETags), and ``fault = (status,
body)`` answers every request with that status and body (a 5xx, or garbage) until it is
set back to ``None``.

Helpers for writing test data the way a calendar client would: ``make_calendar(user,
name)`` (MKCALENDAR with a display name), ``put(user, calendar, name, ical)``,
``delete(...)`` and ``move(...)``, plain HTTP with basic auth (``urllib``), independent
of the ``caldav`` library that pbxcal's adapter uses, so a test cannot pass because both
sides share a bug.

Must not be imported by the daemon (Radicale is a test dependency) and never listens on
anything but loopback. ``python -m pbxcal.testing.radicale DIR`` runs one by hand with a
user ``demo`` whose password is read from ``$PBXCAL_RADICALE_PASSWORD`` (never argv).
Start reading at ``RadicaleServer``.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse

import radicale.config
from radicale.app import Application

__all__ = ["RadicaleServer"]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    #: Set for https: each accepted connection is wrapped, the handshake runs in its thread.
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Radicale logs on its own; the per-request access line is noise in test output."""


class RadicaleServer:
    """One Radicale on ``127.0.0.1``; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        users: Mapping[str, str],
        *,
        tls: ssl.SSLContext | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``tls``: serve https with this server context; ``ca_file``: what the test-data
        helpers (``put``, ``make_calendar``) trust then."""
        self.tls = tls
        self._client_tls = ssl.create_default_context(cafile=ca_file) if tls else None
        for name, password in users.items():
            if not name or any(c in name + password for c in ":\r\n"):
                raise ValueError("user names and passwords: non-empty, no ':' or newlines")
        self.directory = Path(directory)
        self.users = dict(users)
        self.port = 0
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        users_file = self.directory / "users"
        users_file.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
        users_file.chmod(0o600)
        configuration = radicale.config.load()
        configuration.update(
            {
                "auth": {
                    "type": "htpasswd",
                    "htpasswd_filename": str(users_file),
                    "htpasswd_encryption": "plain",
                    "delay": "0",
                },
                "rights": {"type": "owner_only"},
                "storage": {"filesystem_folder": str(self.directory / "collections")},
                "logging": {"level": "warning", "mask_passwords": "True"},
            },
            "pbxcal.testing.radicale",
            privileged=True,
        )
        self._radicale = Application(configuration)
        #: ``False``: refuse the sync-collection REPORT like a server without RFC 6578.
        self.sync_collection = True
        #: ``(status, body)``: answer every request with this instead of Radicale's answer.
        self.fault: tuple[int, bytes] | None = None
        #: Extra headers sent with ``fault`` (e.g. ``{"Retry-After": "7"}``).
        self.fault_headers: dict[str, str] = {}

    def _application(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        if self.fault is not None:
            status, body = self.fault
            headers = _plain(body) + list(self.fault_headers.items())
            start_response(f"{status} {_REASONS.get(status, 'Fault')}", headers)
            return [body]
        if not self.sync_collection and environ.get("REQUEST_METHOD") == "REPORT":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            if b"sync-collection" in body:
                refusal = (
                    b'<?xml version="1.0" encoding="utf-8"?>'
                    b'<D:error xmlns:D="DAV:"><D:supported-report/></D:error>'
                )
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(refusal)))],
                )
                return [refusal]
            environ["wsgi.input"] = io.BytesIO(body)
        return self._radicale(environ, start_response)

    @property
    def url(self) -> str:
        """The server's root URL (``http://127.0.0.1:PORT/``, https with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> RadicaleServer:
        """Listen (again) and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        server = make_server(
            "127.0.0.1",
            self.port,
            self._application,
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self.port = server.server_address[1]
        server.tls = self.tls
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"radicale-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket: new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> RadicaleServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- writing test data like a calendar client ---------------------------------------

    def calendar_url(self, user: str, calendar: str) -> str:
        """The URL of ``user``'s calendar collection named ``calendar`` (its path segment)."""
        return f"{self.url}{quote(user)}/{quote(calendar)}/"

    def make_calendar(
        self,
        user: str,
        calendar: str,
        display_name: str | None = None,
        timezone: str | None = None,
    ) -> str:
        """Create a calendar collection (MKCALENDAR); returns its URL. ``timezone``: a
        VCALENDAR with one VTIMEZONE, as the CALDAV:calendar-timezone property."""
        url = self.calendar_url(user, calendar)
        name = display_name if display_name is not None else calendar
        zone = (
            f"<C:calendar-timezone>{_xml_text(timezone)}</C:calendar-timezone>" if timezone else ""
        )
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:set><D:prop>"
            f"<D:displayname>{_xml_text(name)}</D:displayname>{zone}"
            '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
            "</C:supported-calendar-component-set>"
            "</D:prop></D:set></C:mkcalendar>"
        )
        self.request(user, "MKCALENDAR", url, body.encode(), "application/xml")
        return url

    def put(self, user: str, calendar: str, name: str, ical: str) -> str:
        """Store one calendar object (``name`` like ``"lunch.ics"``); returns its ETag."""
        url = self.calendar_url(user, calendar) + quote(name)
        headers = self.request(user, "PUT", url, ical.encode(), "text/calendar; charset=utf-8")
        return headers.get("ETag", "")

    def delete(self, user: str, calendar: str, name: str) -> None:
        self.request(user, "DELETE", self.calendar_url(user, calendar) + quote(name))

    def move(self, user: str, calendar: str, name: str, to_calendar: str, to_name: str) -> None:
        """WebDAV MOVE of one object, within a calendar or into another one."""
        source = self.calendar_url(user, calendar) + quote(name)
        target = self.calendar_url(user, to_calendar) + quote(to_name)
        self.request(user, "MOVE", source, headers={"Destination": target})

    def request(
        self,
        user: str,
        method: str,
        url: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Mapping[str, str]:
        """One authenticated request; raises ``RuntimeError`` on a status >= 300."""
        credentials = base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - loopback
        request.add_header("Authorization", f"Basic {credentials}")
        if content_type:
            request.add_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback
                request, timeout=10, context=self._client_tls
            ) as response:
                response.read()
                return dict(response.headers.items())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"Radicale: {method} {url} answered {exc.code}") from None


_REASONS = {
    200: "OK",
    207: "Multi-Status",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _plain(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    """Run one Radicale by hand (demo): user ``demo``, password from the environment."""
    parser = argparse.ArgumentParser(prog="python -m pbxcal.testing.radicale")
    parser.add_argument("directory", type=Path, help="storage and users file go here")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: any free)")
    args = parser.parse_args(argv)
    password = os.environ.get("PBXCAL_RADICALE_PASSWORD", "")
    if not password:
        print("set PBXCAL_RADICALE_PASSWORD to the password of user 'demo'", file=sys.stderr)
        return 2
    server = RadicaleServer(args.directory, {"demo": password})
    server.port = args.port
    server.start()
    print(f"Radicale on {server.url} (user demo); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
