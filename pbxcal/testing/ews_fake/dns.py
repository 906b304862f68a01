"""``FakeDns``: a tiny DNS server on a loopback UDP port, for exchangelib's autodiscover.

exchangelib looks host names up with dnspython before it tries an autodiscover URL
(A records) and asks for ``_autodiscover._tcp.<domain>`` (SRV); its resolver's
nameservers can be set (``Autodiscovery.DNS_RESOLVER_ATTRS``), which pbxcal exposes for
tests as the link setting ``dns_server``. ``FakeDns`` answers the records it was given
(``add(name, rdtype, text)``, e.g. ``add("_autodiscover._tcp.example.org", "SRV",
"0 0 443 localhost.")``) and NXDOMAIN for any other name; ``queries`` logs (name, type).

Must not do: recurse, or listen on anything but loopback. Start reading at ``FakeDns``.
"""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["FakeDns"]


class FakeDns:
    """See the module docstring."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def add(self, name: str, rdtype: str, text: str) -> None:
        with self._lock:
            self._records.setdefault((name.rstrip(".").lower(), rdtype), []).append(text)

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the value of the link setting ``dns_server``."""
        assert self._sock is not None, "start() first"
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    def start(self) -> FakeDns:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sock is not None:
            sock.close()

    def __enter__(self) -> FakeDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(0.05)  # a closed socket does not wake recvfrom: look again soon
        while self._sock is not None:
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:  # not DNS: ignore it
                continue
            sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            texts = list(self._records.get((name, rdtype), []))
            known = any(n == name for n, _ in self._records)
        if not texts:
            if not known:
                response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, question.rdtype)
        for text in texts:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, text), ttl=60)
        response.answer.append(rrset)
        return response
