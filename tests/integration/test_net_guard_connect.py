"""The SSRF guard at connect time, with real sockets: TLS servers on 127.0.0.1 and 127.0.0.2.

Each client (httpx through ``GuardedAsyncTransport``, requests through ``GuardedAdapter``,
niquests/caldav through ``guard_niquests_session``) must refuse a redirect to an address
outside ``allow_networks``, refuse a host whose DNS answer changed to loopback after the
form's check (rebinding), and connect to exactly the address the guard checked while TLS
still verifies the URL's host name.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import niquests
import pytest
import requests

from pbxcal.net import AddressGuard, UrlRefused, check_url
from pbxcal.net.httpx_guard import guarded_async_client
from pbxcal.net.urllib3_guard import AddressRefused, GuardedAdapter, guard_niquests_session
from pbxcal.testing.tls import make_tls

# -- a CA, one certificate for cal.test / 127.0.0.1 / 127.0.0.2, and small TLS servers ----


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(*make_tls(tmp_path_factory.mktemp("pki"), ("cal.test", "127.0.0.1", "127.0.0.2")))


@dataclass
class Hit:
    path: str
    host_header: str
    sni: str | None
    local_address: str


@dataclass
class TlsServer:
    """An HTTPS server on one loopback address; ``/go?to=URL`` answers 302 to URL."""

    address: str
    port: int
    hits: list[Hit] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"https://{self.address}:{self.port}{path}"


def _serve(pki: Pki, address: str) -> tuple[TlsServer, Callable[[], None]]:
    sni_seen: dict[int, str | None] = {}  # id(TLS socket) -> the server name it sent
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)

    def on_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni_seen[id(sock)] = name

    context.sni_callback = on_sni
    server_state = TlsServer(address, 0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.hits.append(
                Hit(
                    self.path,
                    self.headers.get("Host", ""),
                    sni_seen.get(id(self.connection)),
                    self.connection.getsockname()[0],
                )
            )
            if self.path.startswith("/go?to="):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/go?to="))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/calendar")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PROPFIND = do_GET  # CalDAV's first request

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            sock, peer = super().get_request()
            return context.wrap_socket(sock, server_side=True), peer

    httpd = Server((address, 0), Handler)
    server_state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return server_state, stop


@pytest.fixture
def servers(pki: Pki) -> Iterator[tuple[TlsServer, TlsServer]]:
    first, stop_first = _serve(pki, "127.0.0.1")
    second, stop_second = _serve(pki, "127.0.0.2")
    try:
        yield first, second
    finally:
        stop_first()
        stop_second()


class RebindingResolver:
    """Answers ``cal.test`` with ``answers`` in turn (the last one repeats)."""

    def __init__(self, answers: Sequence[Sequence[str]]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, host: str, port: int) -> Sequence[str]:
        if host != "cal.test":
            raise OSError(-2, "Name or service not known")
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


def loopback_only(host: str, port: int) -> Sequence[str]:
    if host == "cal.test":
        return ["127.0.0.2"]
    raise OSError(-2, "Name or service not known")


# -- the three clients behind one small interface ------------------------------------------


def _httpx_get(guard: AddressGuard, pki: Pki, url: str) -> tuple[int, str]:
    import asyncio

    async def run() -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        async with guarded_async_client(guard, verify=context, follow_redirects=True) as client:
            response = await client.get(url, timeout=10)
            return response.status_code, str(response.url)

    return asyncio.run(run())


def _requests_get(guard: AddressGuard, pki: Pki, url: str) -> tuple[int, str]:
    with requests.Session() as session:
        adapter = GuardedAdapter(guard, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        try:
            response = session.get(url, verify=str(pki.ca_file), timeout=10)
        except requests.ConnectionError as exc:
            raise _refusal_in(exc) from exc
        return response.status_code, response.url


def _niquests_get(guard: AddressGuard, pki: Pki, url: str) -> tuple[int, str]:
    with niquests.Session() as session:
        guard_niquests_session(session, guard)
        try:
            response = session.get(url, verify=str(pki.ca_file), timeout=10)
        except niquests.exceptions.ConnectionError as exc:
            raise _refusal_in(exc) from exc
        assert response.status_code is not None
        return response.status_code, str(response.url)


def _refusal_in(exc: BaseException) -> BaseException:
    """The guard's ``AddressRefused`` in an HTTP library's exception chain, as UrlRefused."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return UrlRefused(str(seen))
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, BaseException) and arg is not seen:
                found = _refusal_in(arg)
                if isinstance(found, UrlRefused):
                    return found
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException) and reason is not seen:
            found = _refusal_in(reason)
            if isinstance(found, UrlRefused):
                return found
        seen = seen.__cause__ or seen.__context__
    return exc


CLIENTS = {"httpx": _httpx_get, "requests": _requests_get, "niquests": _niquests_get}
Get = Callable[[AddressGuard, Pki, str], tuple[int, str]]


@pytest.fixture(params=sorted(CLIENTS))
def get(request: pytest.FixtureRequest) -> Get:
    return CLIENTS[request.param]


# -- the cases ----------------------------------------------------------------------------


def test_redirect_to_another_loopback_address_is_refused(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    first, second = servers
    guard = AddressGuard(["127.0.0.1/32"])
    check_url(first.url("/"), ["127.0.0.1/32"])  # the form's check passes
    with pytest.raises(UrlRefused, match=r"the address 127\.0\.0\.2 is a loopback address"):
        get(guard, pki, first.url("/go?to=" + second.url("/secret")))
    assert [hit.path for hit in first.hits] == ["/go?to=" + second.url("/secret")]
    assert second.hits == []


def test_the_same_redirect_is_followed_when_the_range_is_allowed(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    # the control for the test above: 127.0.0.2 is reachable, so the refusal was the guard's
    first, second = servers
    status, final = get(AddressGuard(["127.0.0.0/8"]), pki, first.url("/go?to=" + second.url("/")))
    assert status == 200
    assert final == second.url("/")
    assert [hit.path for hit in second.hits] == ["/"]


def test_redirect_to_the_metadata_address_is_refused(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    first, _second = servers
    with pytest.raises(UrlRefused, match=r"169\.254\.169\.254 is the cloud metadata address"):
        get(
            AddressGuard(["127.0.0.1/32"]),
            pki,
            first.url("/go?to=https://169.254.169.254/latest/meta-data/"),
        )


def test_redirect_to_plain_http_is_refused(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    first, _second = servers
    with pytest.raises(UrlRefused, match="only https://"):
        get(AddressGuard(["127.0.0.1/32"]), pki, first.url("/go?to=http://127.0.0.1:1/"))


def test_dns_rebinding_after_the_check_is_refused_at_connect(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    first, _second = servers
    resolver = RebindingResolver([["93.184.216.34"], ["127.0.0.1"]])
    guard = AddressGuard([], resolver)
    url = f"https://cal.test:{first.port}/feed.ics"
    checked = check_url(url, guard=guard)
    assert checked.addresses == (ipaddress.ip_address("93.184.216.34"),)
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.1 of cal\.test is a loopback address"):
        get(guard, pki, url)
    assert resolver.calls == 2
    assert first.hits == []


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(
    get: Get, pki: Pki, servers: tuple[TlsServer, TlsServer]
) -> None:
    # cal.test exists only in the guard's resolver: the request can reach 127.0.0.2 only
    # by connecting to the address the guard checked; TLS verified "cal.test".
    _first, second = servers
    guard = AddressGuard(["127.0.0.2/32"], loopback_only)
    status, _final = get(guard, pki, f"https://cal.test:{second.port}/feed.ics")
    assert status == 200
    assert len(second.hits) == 1
    hit = second.hits[0]
    assert hit.local_address == "127.0.0.2"
    assert hit.sni == "cal.test"
    assert hit.host_header in ("cal.test", f"cal.test:{second.port}")


def test_caldav_client_session_is_guarded(pki: Pki, servers: tuple[TlsServer, TlsServer]) -> None:
    # caldav's DAVClient builds its own niquests session; guarding it refuses the redirect
    from caldav.davclient import DAVClient

    first, second = servers
    client = DAVClient(
        url=first.url("/"), ssl_verify_cert=str(pki.ca_file), enable_rfc6764=False, timeout=10
    )
    guard_niquests_session(client.session, AddressGuard(["127.0.0.1/32"]))
    with pytest.raises(niquests.exceptions.ConnectionError) as failed:
        client.request(first.url("/go?to=" + second.url("/dav/")), "GET")
    assert "127.0.0.2 is a loopback address" in str(_refusal_in(failed.value))
    assert second.hits == []
    client.close()


# -- the wiring: SourceFactory builds customers' links (settings["guarded"]) guarded --------


def _link(provider: str, source: str, **settings: Any) -> Any:
    from pbxcal.store import Link

    return Link(
        id=7, extension="100", pbx="main", provider=provider, source=source,
        settings=settings, active=True, origin="portal",
        created_at=datetime.datetime.now(datetime.UTC),
    )  # fmt: skip


@pytest.fixture
def trusted_ca(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # how an admin trusts a private CA for every client: httpx reads SSL_CERT_FILE,
    # niquests REQUESTS_CA_BUNDLE; the guard leaves both working
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))


def _factory(allow_networks: Sequence[str]) -> Any:
    from pbxcal.calendars.blocking import BlockingCalls
    from pbxcal.calendars.providers import SourceFactory

    return SourceFactory(
        httpx.AsyncClient(follow_redirects=True, timeout=10),
        1_000_000,
        BlockingCalls(workers=2),
        lambda _link_id, _kind: b"secret",
        timeout=10,
        allow_networks=allow_networks,
    )


@pytest.mark.usefixtures("trusted_ca")
def test_a_guarded_ics_link_fetches_an_allowed_address_and_refuses_the_redirect(
    servers: tuple[TlsServer, TlsServer],
) -> None:
    import asyncio

    from pbxcal.calendars import Fetched

    first, second = servers

    async def run() -> None:
        factory = _factory(["127.0.0.1/32"])
        try:
            good = factory(_link("ics", first.url("/feed.ics"), guarded=True))
            assert isinstance(await good.fetch(None), Fetched)
            bad = factory(_link("ics", first.url("/go?to=" + second.url("/")), guarded=True))
            with pytest.raises(UrlRefused, match=r"127\.0\.0\.2 is a loopback address"):
                await bad.fetch(None)
        finally:
            await factory.aclose()
            await factory.client.aclose()

    asyncio.run(run())
    assert [hit.path for hit in first.hits] == ["/feed.ics", "/go?to=" + second.url("/")]
    assert second.hits == []


def test_a_guarded_link_to_a_refused_address_is_not_even_built() -> None:
    from pbxcal.errors import CalendarError

    factory = _factory([])
    for link in (
        _link("ics", "https://127.0.0.1/feed.ics", guarded=True),
        _link("ics", "/etc/passwd", guarded=True),
        _link("caldav", "https://169.254.169.254/dav/", guarded=True, username="anna"),
        _link("ews", "https://10.0.0.5/EWS/Exchange.asmx", guarded=True, mailbox="a@b.example"),
    ):
        with pytest.raises(CalendarError, match=r"^refused: "):
            factory(link)


@pytest.mark.usefixtures("trusted_ca")
def test_an_admin_link_is_not_guarded(servers: tuple[TlsServer, TlsServer]) -> None:
    # links add: an admin may link an intranet server; no guard, no allow_networks needed
    import asyncio

    from pbxcal.calendars import Fetched

    first, second = servers

    async def run() -> None:
        factory = _factory([])
        try:
            source = factory(_link("ics", first.url("/go?to=" + second.url("/"))))
            assert isinstance(await source.fetch(None), Fetched)
        finally:
            await factory.client.aclose()

    asyncio.run(run())
    assert [hit.path for hit in second.hits] == ["/"]


@pytest.mark.usefixtures("trusted_ca")
def test_a_guarded_caldav_link_refuses_the_redirect_at_connect(
    servers: tuple[TlsServer, TlsServer],
) -> None:
    import asyncio

    from pbxcal.errors import CalendarUnavailable

    first, second = servers
    factory = _factory(["127.0.0.1/32"])
    link = _link(
        "caldav", first.url("/go?to=" + second.url("/dav/")), guarded=True, username="anna"
    )
    source = factory(link)
    with pytest.raises(CalendarUnavailable, match="cannot connect"):
        asyncio.run(source.changes(None))
    assert first.hits and all(hit.path.startswith("/go?to=") for hit in first.hits)
    assert second.hits == []
