"""Which IP addresses a customer's calendar URL may reach: public ones, or an admin's ranges.

``AddressPolicy(allow_networks)`` parses ``[portal] allow_networks`` once;
``policy.refusal(address)`` is ``None`` for an address pbxcal may connect to and
otherwise the words for why not ("a private network address"), ready to follow "is".

Refused: unspecified, 0.0.0.0/8, loopback, link-local (169.254.0.0/16 with the cloud
metadata address 169.254.169.254, fe80::/10), RFC 1918 private, unique-local fc00::/7,
carrier-grade NAT 100.64.0.0/10, multicast, site-local fec0::/10, documentation,
benchmarking and reserved ranges, and anything else the stdlib does not call
``is_global``. IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) are judged by that IPv4 address: Python 3.11 calls
``64:ff9b::7f00:1`` and ``::127.0.0.1`` global, so ``is_global`` alone is not enough.

Pure: no I/O, no DNS. Start reading at ``AddressPolicy.refusal``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["AddressPolicy", "IPAddress", "IPNetwork", "embedded_ipv4", "parse_networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


#: (network, words) checked in order; the first match names the refusal.
_NAMED: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/32"), "an unspecified address"),
    (_net("::/128"), "an unspecified address"),
    (_net("0.0.0.0/8"), "a 'this network' address (0.0.0.0/8)"),
    (_net("127.0.0.0/8"), "a loopback address"),
    (_net("::1/128"), "a loopback address"),
    (_net("169.254.169.254/32"), "the cloud metadata address"),
    (_net("fd00:ec2::254/128"), "the cloud metadata address"),
    (_net("169.254.0.0/16"), "a link-local address"),
    (_net("fe80::/10"), "a link-local address"),
    (_net("10.0.0.0/8"), "a private network address"),
    (_net("172.16.0.0/12"), "a private network address"),
    (_net("192.168.0.0/16"), "a private network address"),
    (_net("fc00::/7"), "a private network address (unique local)"),
    (_net("100.64.0.0/10"), "a carrier-grade NAT address (100.64.0.0/10)"),
    (_net("224.0.0.0/4"), "a multicast address"),
    (_net("ff00::/8"), "a multicast address"),
    (_net("fec0::/10"), "a site-local address"),
    (_net("64:ff9b:1::/48"), "a local NAT64 address"),
    (_net("192.0.2.0/24"), "a documentation address"),
    (_net("198.51.100.0/24"), "a documentation address"),
    (_net("203.0.113.0/24"), "a documentation address"),
    (_net("2001:db8::/32"), "a documentation address"),
    (_net("198.18.0.0/15"), "a benchmarking address"),
    (_net("240.0.0.0/4"), "a reserved address"),
)

_IPV4_COMPATIBLE = _net("::/96")
_SIIT = _net("::ffff:0:0:0/96")
_NAT64 = _net("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, SIIT, NAT64, 6to4)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    plain = ipaddress.IPv6Address(int(address))  # without a scope id
    if plain in _IPV4_COMPATIBLE or plain in _SIIT or plain in _NAT64:
        if plain in _IPV4_COMPATIBLE and int(plain) <= 1:
            return None  # "::" and "::1" are IPv6's own unspecified and loopback addresses
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    return None


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """CIDR strings ("10.20.0.0/16"; host bits may be set) as networks; ``ValueError``."""
    return tuple(
        n if not isinstance(n, str) else ipaddress.ip_network(n.strip(), strict=False)
        for n in networks
    )


class AddressPolicy:
    """Public addresses, plus the networks an admin allowed. See the module docstring."""

    def __init__(self, allow_networks: Iterable[str | IPNetwork] = ()) -> None:
        self.allow_networks = parse_networks(allow_networks)

    def allowed_explicitly(self, address: IPAddress) -> bool:
        """Inside one of the admin's networks (an IPv6 form of an allowed IPv4 counts)."""
        candidates: list[IPAddress] = [address]
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            candidates.append(ipaddress.IPv6Address(int(address)))
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allow_networks
        )

    def refusal(self, address: IPAddress) -> str | None:
        """``None`` when pbxcal may connect to ``address``; otherwise why not."""
        if self.allowed_explicitly(address):
            return None
        return public_refusal(address)


def public_refusal(address: IPAddress) -> str | None:
    """``None`` for a public internet address; otherwise the words for what it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return "a link-local address" if address.is_link_local else "an address with a zone"
    inner = embedded_ipv4(address)
    if inner is not None:
        words = public_refusal(inner)
        return f"{words} (as IPv6: {inner})" if words else None
    for network, words in _NAMED:
        if address.version == network.version and address in network:
            return words
    if not address.is_global:
        return "not a public internet address"
    return None
