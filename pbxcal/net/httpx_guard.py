"""httpx that connects only to addresses the ``AddressGuard`` accepted (ICS feeds, portal).

The seam is httpcore's network backend, the one place httpx turns a host name into a
socket: ``GuardedAsyncBackend.connect_tcp(host, port)`` resolves ``host`` through the
guard (in a worker thread), refuses the connection with ``UrlRefused`` if any answer is
not allowed, and then opens the TCP connection to exactly one of the checked IP
addresses. TLS is started afterwards by httpcore with ``server_hostname`` = the URL's
host, so certificate checks, SNI and the ``Host`` header are unchanged. Every new
connection goes through it (redirect targets included), so an answer that changes
between ``check_url`` and the connection (DNS rebinding) is refused at connect time.

``GuardedAsyncTransport`` / ``GuardedTransport`` are ``httpx.AsyncHTTPTransport`` /
``HTTPTransport`` with that backend, refusing a request (redirects too) whose scheme is
not https or that carries user info. They never use a proxy (a proxy would resolve the
host itself); ``trust_env`` only means ``SSL_CERT_FILE``/``SSL_CERT_DIR`` here, as in
httpx. ``guarded_async_client(guard, **kwargs)`` builds
an ``httpx.AsyncClient`` on it. httpx has no public way to hand its pool a network
backend, so the transports set the pool's ``_network_backend`` and check that the pool
is the one they know (``TypeError`` otherwise: an httpx upgrade must fail loudly, not
connect unguarded); ``tests/integration/test_net_guard_connect.py`` proves the seam holds.

A DNS failure at connect time is ``httpcore.ConnectError`` (so httpx maps it to
``httpx.ConnectError``: temporary); a refused address is ``UrlRefused``, raised through
httpx unchanged. Start reading at ``GuardedAsyncBackend.connect_tcp``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio.to_thread
import httpcore
import httpx

from pbxcal.net.addresses import IPAddress
from pbxcal.net.guard import AddressGuard, HostNotFound, UrlRefused

__all__ = [
    "GuardedAsyncBackend",
    "GuardedAsyncTransport",
    "GuardedBackend",
    "GuardedTransport",
    "guarded_async_client",
]


class GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """Connects to the guard's checked addresses of a host; see the module docstring."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend) -> None:
        self.guard = guard
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await anyio.to_thread.run_sync(self.guard.addresses, host, port)
        except HostNotFound as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address.compressed, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # addresses is never empty
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("a guarded connection cannot use a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedBackend(httpcore.NetworkBackend):
    """The blocking twin of ``GuardedAsyncBackend``."""

    def __init__(self, guard: AddressGuard, inner: httpcore.NetworkBackend) -> None:
        self.guard = guard
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses: tuple[IPAddress, ...] = self.guard.addresses(host, port)
        except HostNotFound as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return self.inner.connect_tcp(
                    address.compressed, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise UrlRefused("a guarded connection cannot use a Unix socket")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _check_request(request: httpx.Request) -> None:
    """https only and no user info, for the first request and every redirect."""
    if request.url.scheme != "https":
        raise UrlRefused(
            f"only https:// addresses can be used (this one is {request.url.scheme[:20]}://)"
        )
    if request.url.userinfo:
        raise UrlRefused(
            "the address contains a user name or password; enter those in their own fields"
        )


def _refuse_options(kwargs: dict[str, Any]) -> None:
    for option in ("proxy", "uds"):
        if kwargs.get(option) is not None:
            raise TypeError(f"a guarded transport cannot use {option}=")


class GuardedAsyncTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections pass the guard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        _refuse_options(kwargs)
        super().__init__(**kwargs)
        pool = self._pool
        if type(pool) is not httpcore.AsyncConnectionPool or not hasattr(pool, "_network_backend"):
            raise TypeError("this httpx/httpcore version cannot be guarded (pool changed)")
        pool._network_backend = GuardedAsyncBackend(guard, pool._network_backend)
        self.guard = guard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_request(request)
        return await super().handle_async_request(request)


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections pass the guard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        _refuse_options(kwargs)
        super().__init__(**kwargs)
        pool = self._pool
        if type(pool) is not httpcore.ConnectionPool or not hasattr(pool, "_network_backend"):
            raise TypeError("this httpx/httpcore version cannot be guarded (pool changed)")
        pool._network_backend = GuardedBackend(guard, pool._network_backend)
        self.guard = guard

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _check_request(request)
        return super().handle_request(request)


def guarded_async_client(
    guard: AddressGuard, *, verify: Any = True, **client_kwargs: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on a ``GuardedAsyncTransport`` (``verify``: as httpx's)."""
    transport = GuardedAsyncTransport(guard, verify=verify)
    return httpx.AsyncClient(transport=transport, **client_kwargs)
