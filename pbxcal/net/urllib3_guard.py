"""requests and niquests (caldav's HTTP client) that connect only to checked addresses.

Both libraries sit on ``urllib3`` here, and in this environment ``urllib3`` *is*
urllib3-future (niquests' dependency installs itself under that name), whose connections
ask a pluggable resolver for every socket they open: ``resolver.create_connection``
calls ``resolver.getaddrinfo(host, port)`` and connects to exactly the records it
returns, IP literals, redirect targets, Alt-Svc/HTTP/3 upgrades and OCSP fetches
included. ``GuardedResolver.getaddrinfo`` answers through ``AddressGuard.addresses``:
only checked addresses, or ``AddressRefused`` (an ``OSError`` carrying the one-line
reason, which the HTTP library reports as a connection error). TLS still verifies
the URL's host name; SNI and ``Host`` are unchanged.

* niquests (``caldav.DAVClient`` builds its own ``niquests.Session`` and keeps it in its
  public ``session`` attribute; caldav 3.6 offers no session or adapter argument):
  ``guard_niquests_session(session, guard)`` mounts guarded adapters for ``https://``
  and ``http://`` (HTTP/3 off) and sets the session's resolver (used for OCSP).
  ``trust_env`` stays as it is, so ``REQUESTS_CA_BUNDLE`` still names trusted CAs, but
  the adapters drop every proxy.
* requests: ``GuardedAdapter(guard)`` is an ``HTTPAdapter`` whose pool manager gets the
  guarded resolver; mount it on a session. With the original urllib3 (no resolver API)
  it raises ``RuntimeError`` when built: it never connects unguarded.

Both adapters also refuse, before any connection, a request (or a redirect) that is
not https or carries user info, and never use a proxy. Start reading at
``GuardedResolver.getaddrinfo``.
"""

from __future__ import annotations

import socket
from typing import Any

import requests
import requests.adapters

from pbxcal.net.guard import AddressGuard, UrlRefused, parse_url

try:  # urllib3-future: the resolver API this module relies on
    from urllib3.contrib.resolver import BaseResolver
    from urllib3.contrib.resolver.system import SystemResolver
except ImportError:  # pragma: no cover - the original urllib3
    SystemResolver = None  # type: ignore[assignment,misc]
    BaseResolver = None  # type: ignore[assignment,misc]

__all__ = ["AddressRefused", "GuardedAdapter", "GuardedResolver", "guard_niquests_session"]


class AddressRefused(OSError):
    """The guard refused the host's address; ``str()`` is the one-line reason."""


if SystemResolver is not None:

    class GuardedResolver(SystemResolver):
        """A urllib3-future resolver that only answers addresses the guard allows."""

        def __init__(self, guard: AddressGuard) -> None:
            super().__init__()
            self.guard = guard

        def recycle(self) -> GuardedResolver:
            return self

        def support(self, hostname: str | bytes | None) -> bool | None:
            return True

        def getaddrinfo(
            self,
            host: bytes | str | None,
            port: str | int | None,
            family: socket.AddressFamily,
            type: socket.SocketKind,
            proto: int = 0,
            flags: int = 0,
            *,
            quic_upgrade_via_dns_rr: bool = False,
        ) -> list[tuple[Any, ...]]:
            if host is None:
                raise AddressRefused("a guarded connection needs a host")
            name = host.decode("ascii") if isinstance(host, bytes) else host
            number = int(port) if port is not None else 443
            try:
                addresses = self.guard.addresses(name, number)
            except UrlRefused as exc:
                raise AddressRefused(str(exc)) from exc
            records: list[tuple[Any, ...]] = []
            for address in addresses:
                af = socket.AF_INET if address.version == 4 else socket.AF_INET6
                if family not in (socket.AF_UNSPEC, af):
                    continue
                sockaddr: tuple[Any, ...] = (
                    (address.compressed, number)
                    if af == socket.AF_INET
                    else (address.compressed, number, 0, 0)
                )
                records.append((af, type or socket.SOCK_STREAM, proto, "", sockaddr))
            if not records:
                raise AddressRefused(f"{name} has no address of the wanted family")
            return records

else:  # pragma: no cover

    class GuardedResolver:  # type: ignore[no-redef]
        def __init__(self, guard: AddressGuard) -> None:
            raise RuntimeError(
                "urllib3 here has no resolver API (urllib3-future is needed to guard "
                "requests/niquests connections)"
            )


def _check_shape(url: str | None) -> None:
    parse_url(url or "")  # https, no user info, a proper host; DNS comes at connect time


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests' ``HTTPAdapter`` whose connections pass ``guard``; mount it on a session."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self.guard = guard
        self.resolver = GuardedResolver(guard)
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["resolver"] = self.resolver
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise UrlRefused("a guarded connection cannot go through a proxy")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        _check_shape(request.url)
        kwargs["proxies"] = None
        return super().send(request, *args, **kwargs)


def guard_niquests_session(session: Any, guard: AddressGuard) -> None:
    """Make a ``niquests.Session`` (e.g. ``DAVClient.session``) connect only via ``guard``."""
    import niquests
    import niquests.adapters

    resolver = GuardedResolver(guard)

    class _Adapter(niquests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            _check_shape(request.url)
            kwargs["proxies"] = None
            return super().send(request, *args, **kwargs)

    if not isinstance(session, niquests.Session):
        raise TypeError("guard_niquests_session needs a niquests.Session")
    session.resolver = resolver
    for prefix in ("https://", "http://"):
        old = session.adapters.get(prefix)
        session.mount(prefix, _Adapter(resolver=resolver, disable_http3=True))
        if old is not None:
            old.close()
