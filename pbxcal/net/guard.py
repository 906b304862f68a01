"""Checks a URL a customer typed before pbxcal connects to it: https, a real host name,
and every address it resolves to public (or inside an admin's ``allow_networks``).

``check_url(url, allow_networks, resolver=...)`` parses, resolves and checks in one go and
returns a ``CheckedUrl`` (the URL, its ASCII host, port and the addresses it resolved
to) or raises ``UrlRefused`` with one line fit for a customer's page and a log:
"the address 10.0.0.5 of cal.example is a private network address". Messages never
quote user info, a query or a fragment (URLs appear through ``redact_url``).

``AddressGuard(allow_networks, resolver)`` is the same check for one host at a time; the
connect-time guards (``pbxcal.net.httpx_guard``, ``pbxcal.net.urllib3_guard``) call
``guard.addresses(host, port)`` for every new connection, redirects included, and then
connect to exactly those addresses, so a DNS answer that changes between the form's
check and the connection (DNS rebinding) is caught.

Rules, and why:
* https only (``webcal``/``webcals`` count as https: pbxcal fetches those over https);
* no user info: credentials belong in the form's fields, and ``user@host`` tricks
  (``https://good.example\\@10.0.0.1/``) hide the real host;
* the host is a DNS name (IDNA-checked, UTS #46) or a literal IP address in its standard
  notation; ``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` are refused
  because the C resolver would read them as 127.0.0.1;
* any port.

Blocking: the default resolver is ``socket.getaddrinfo``; call ``check_url`` in a
thread from async code (``await check_url_async(...)``). Start reading at ``check_url``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from pbxcal.core.redact import printable, redact_url
from pbxcal.errors import InputError
from pbxcal.net.addresses import AddressPolicy, IPAddress, IPNetwork

__all__ = [
    "AddressGuard",
    "CheckedUrl",
    "HostNotFound",
    "Resolver",
    "UrlRefused",
    "check_url",
    "check_url_async",
    "system_resolver",
]

#: (host, port) -> the IP addresses (text) the host resolves to; blocking.
Resolver = Callable[[str, int], Sequence[str]]

_SCHEMES = {"https": "https", "webcal": "https", "webcals": "https"}
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
#: The last label of a host the WHATWG URL parser and inet_aton read as an IPv4 number.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


class UrlRefused(InputError):
    """The URL may not be used: not https, user info, a bad host, or a refused address."""


class HostNotFound(UrlRefused):
    """The host name does not resolve (right now): may be temporary, unlike the others."""


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed: ``url`` (``webcal`` turned into ``https``), ASCII ``host``,
    ``port`` and the ``addresses`` its host resolved to when it was checked."""

    url: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer (A and AAAA, ``/etc/hosts`` included) for ``host``."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in answers]


def _shown(host: str) -> str:
    return printable(host[:100])


class AddressGuard:
    """Resolves a host and lets it through only when every address is allowed."""

    def __init__(
        self,
        allow_networks: Iterable[str | IPNetwork] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.policy = AddressPolicy(allow_networks)
        self.resolver = resolver

    def addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """The addresses of ``host`` (a name or literal) if all are allowed; ``UrlRefused``.

        ``host`` is checked as ``check_url`` checks it (a redirect's host is customer
        input too). Every answer must pass, not just one: the connection may use any.
        """
        ascii_host, literal = parse_host(host)
        if literal is not None:
            self.check(literal, ascii_host)
            return (literal,)
        try:
            answers = self.resolver(ascii_host, port)
        except (OSError, UnicodeError) as exc:
            raise HostNotFound(f"the host name {_shown(ascii_host)} was not found") from exc
        found: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError as exc:
                raise UrlRefused(
                    f"the host name {_shown(ascii_host)} resolved to something that is not "
                    "an IP address"
                ) from exc
            self.check(address, ascii_host)
            if address not in found:
                found.append(address)
        if not found:
            raise HostNotFound(f"the host name {_shown(ascii_host)} has no address")
        return tuple(found)

    def check(self, address: IPAddress, host: str) -> None:
        """``UrlRefused`` unless the policy allows ``address`` (found for ``host``)."""
        words = self.policy.refusal(address)
        if words is None:
            return
        shown = address.compressed
        if host.strip("[]").lower() == shown.lower():
            raise UrlRefused(f"the address {shown} is {words}")
        raise UrlRefused(f"the address {shown} of {_shown(host)} is {words}")


def parse_host(host: str) -> tuple[str, IPAddress | None]:
    """``host`` as an ASCII name, or a literal address; ``UrlRefused`` if it is neither.

    Accepts ``[v6]`` and bare IPv6, dotted-quad IPv4 in its standard notation only, and
    DNS names (IDNA UTS #46, letters, digits, hyphens; underscores tolerated).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise UrlRefused("the address has no host name")
    if ":" in text:
        if "%" in text:
            raise UrlRefused("an IPv6 address with a zone cannot be used")
        try:
            return text, ipaddress.IPv6Address(text)
        except ValueError:
            raise UrlRefused(f"the host {_shown(text)} is not a valid IPv6 address") from None
    name = text[:-1] if text.endswith(".") else text
    try:
        ascii_name = name.lower() if name.isascii() else idna.encode(name, uts46=True).decode()
    except (idna.IDNAError, UnicodeError):
        raise UrlRefused(f"the host name {_shown(text)} is not a valid host name") from None
    labels = ascii_name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return ascii_name, ipaddress.IPv4Address(ascii_name)
        except ValueError:
            raise UrlRefused(
                f"the host {_shown(text)} is an IP address in an unusual notation; "
                "write it as four decimal numbers (a.b.c.d) or use a host name"
            ) from None
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UrlRefused(f"the host name {_shown(text)} is not a valid host name")
    return ascii_name, None


def parse_url(url: str) -> tuple[str, str, int]:
    """``(https URL, host, port)`` from a customer's URL, before any DNS; ``UrlRefused``."""
    text = url.strip()
    scheme, sep, _rest = text.partition("://")
    if not sep:
        raise UrlRefused("the address must start with https://")
    wanted = _SCHEMES.get(scheme.lower())
    if wanted is None:
        raise UrlRefused(
            f"only https:// addresses can be used (this one is {printable(scheme[:20])}://)"
        )
    try:
        parts = urlsplit(wanted + text[len(scheme) :])
        port = parts.port
    except ValueError:
        raise UrlRefused(f"{redact_url(text)} is not a usable address") from None
    if "@" in parts.netloc or parts.username is not None:
        raise UrlRefused(
            "the address contains a user name or password; enter those in their own fields"
        )
    if "\\" in parts.netloc or any(c.isspace() for c in text):
        raise UrlRefused(f"{redact_url(text)} is not a usable address")
    host, _literal = parse_host(parts.hostname or "")
    if port == 0:
        raise UrlRefused("port 0 cannot be used")
    return parts.geturl(), host, port or 443


def check_url(
    url: str,
    allow_networks: Iterable[str | IPNetwork] = (),
    *,
    resolver: Resolver = system_resolver,
    guard: AddressGuard | None = None,
) -> CheckedUrl:
    """``url`` if it is https, without user info, and all its addresses are allowed.

    ``guard`` (optional) is a prepared ``AddressGuard`` (networks parsed once); otherwise
    one is made from ``allow_networks`` and ``resolver``. Raises ``UrlRefused``
    (``HostNotFound`` when DNS has no answer). Blocking (DNS).
    """
    https_url, host, port = parse_url(url)
    active = guard or AddressGuard(allow_networks, resolver)
    return CheckedUrl(https_url, host, port, active.addresses(host, port))


async def check_url_async(
    url: str,
    allow_networks: Iterable[str | IPNetwork] = (),
    *,
    resolver: Resolver = system_resolver,
    guard: AddressGuard | None = None,
) -> CheckedUrl:
    """``check_url`` in a worker thread, for the event loop (the portal's handlers)."""
    return await asyncio.to_thread(check_url, url, allow_networks, resolver=resolver, guard=guard)
