"""The one-shot loopback redirect listener of the installed-app OAuth flows (Google's
``links authorize google``, Microsoft's ``links authorize microsoft``).

Usage (blocking: a CLI command or a worker thread, never the event loop)::

    with LoopbackRedirect() as listener:           # 127.0.0.1, a port the system picks
        redirect_uri = f"http://127.0.0.1:{listener.port}/"   # or http://localhost:PORT/
        ...show the authorization URL built with redirect_uri...
        query = listener.wait(timeout, what="Google authorization")

``wait`` serves requests one at a time until one arrives on ``/`` carrying ``code`` or
``error`` (a browser's ``/favicon.ico`` and other paths get 404 and are ignored), answers
it with a short "you can close this window" page and returns its query as a dict. No
redirect within ``timeout`` → ``CalendarUnavailable`` naming ``what``. Checking the
``state`` and redeeming the code are the caller's (each flow's library does it).

Must not do: listen on anything but loopback, log a request (its query holds the
authorization code), or keep listening after the first answer. Start reading at
``LoopbackRedirect.wait``.
"""

from __future__ import annotations

import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any

from pbxcal.errors import CalendarUnavailable

_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>pbxcal</title>"
    b"<p>pbxcal: you can close this window and return to the terminal.</p>"
)


class _RedirectHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        if parsed.path != "/" or not ({"code", "error"} & query.keys()):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.pbxcal_query = query  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_PAGE)))
        self.end_headers()
        self.wfile.write(_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the query holds the authorization code: never log it


class LoopbackRedirect:
    """A listener on ``127.0.0.1`` for one OAuth redirect. See the module docstring."""

    def __init__(self) -> None:
        self._server = HTTPServer(("127.0.0.1", 0), _RedirectHandler)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def wait(self, timeout: float, *, what: str) -> dict[str, str]:
        """The query of the first redirect on ``/`` with ``code`` or ``error``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CalendarUnavailable(
                    f"{what}: no answer from the browser within {timeout:g}s"
                )
            self._server.timeout = left
            self._server.handle_request()  # one request, or the timeout
            query: dict[str, str] | None = getattr(self._server, "pbxcal_query", None)
            if query is not None:
                return query

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> LoopbackRedirect:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
