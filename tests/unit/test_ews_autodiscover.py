"""Autodiscover for EWS links, driven by the real exchangelib ``Autodiscovery``.

The seam: exchangelib derives the autodiscover URLs from the address's domain
(``https://example.org/...``, ``https://autodiscover.example.org/...``,
``http://autodiscover.example.org/`` for a redirect, then the DNS SRV record
``_autodiscover._tcp.example.org``) and checks each host name with dnspython, whose
nameservers a link can name (``dns_server``, tests only). ``FakeDns`` on a loopback UDP
port knows nothing of ``example.org`` (so the first three steps fail as for a domain
without autodiscover hosts) and answers the SRV record with ``0 0 443 localhost.`` —
exchangelib accepts SRV targets on port 443 only, so ``FakeEws`` (TLS, certificate for
``localhost``, trusted through the link's ``ca_bundle``) listens on 127.0.0.1:443 (these
tests need root, as the integration tests do). exchangelib then POSTs GetUserSettings to
``https://localhost/autodiscover/autodiscover.svc`` and the fake answers its
``ExternalEwsUrl``. Nothing of exchangelib is replaced but its persistent autodiscover
cache file, moved into the test's directory so an earlier run cannot short-cut the steps.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from exchangelib.autodiscover import cache as exchangelib_cache
from exchangelib.protocol import close_connections

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings
from pbxcal.errors import CalendarAuthFailed, CalendarError
from pbxcal.testing.ews_fake import FakeEws
from pbxcal.testing.ews_fake.dns import FakeDns

ANNA = "anna@example.org"
PASSWORD = "pw-Anna-42"
FOUND = "https://localhost/EWS/Exchange.asmx"
VCAL = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:m-1\r\nSUMMARY:0612345678\r\n"
    "DTSTART:20261201T090000Z\r\nDTEND:20261201T100000Z\r\nDTSTAMP:20261101T100000Z\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


@pytest.fixture(autouse=True)
def own_exchangelib_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(
        exchangelib_cache, "AUTODISCOVER_PERSISTENT_STORAGE", tmp_path / "autodiscover.cache"
    )
    exchangelib_cache.autodiscover_cache.close()  # forget protocols of earlier tests
    yield
    # Every test's fake is https://localhost:443 with a new certificate: exchangelib's
    # protocol cache (by URL and credentials) must not hand the next test this one's
    # connections.
    close_connections()
    exchangelib_cache.autodiscover_cache.close()


def fake_on_443(wait: float = 60.0) -> FakeEws:
    """FakeEws on 127.0.0.1:443; another test run holding the port is waited for."""
    if os.geteuid() != 0:
        pytest.fail("the autodiscover tests listen on 127.0.0.1:443: run them as root")
    deadline = time.monotonic() + wait
    while True:
        try:
            return FakeEws(tls=True, port=443, hostnames=("localhost",)).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                pytest.fail(f"127.0.0.1:443 is not free for the autodiscover fake: {exc}")
        time.sleep(0.2)  # waiting for a port another process holds, not for our own work


@pytest.fixture
def fake() -> Iterator[FakeEws]:
    server = fake_on_443()
    try:
        server.add_user(ANNA, PASSWORD)
        server.put_item(ANNA, "m-1", VCAL)
        server.autodiscover_url = FOUND
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_server() -> Iterator[FakeDns]:
    with FakeDns() as server:
        server.add("_autodiscover._tcp.example.org", "SRV", "0 0 443 localhost.")
        server.add("localhost", "A", "127.0.0.1")
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(workers=2)
    yield pool
    pool.close()


def make(
    calls: BlockingCalls, fake: FakeEws, dns: FakeDns, password: str = PASSWORD
) -> EwsCalendarSource:
    settings = EwsSettings(
        service_endpoint="", mailbox=ANNA, username=ANNA, auth="basic",
        ca_bundle=fake.ca_file, autodiscover=True, dns_server=dns.address,
    )  # fmt: skip
    return EwsCalendarSource(calls, settings, password=password, timeout=5, deadline=60)


async def test_the_ews_url_is_found_through_the_srv_record_and_kept_in_the_cursor(
    fake: FakeEws, dns_server: FakeDns, calls: BlockingCalls
) -> None:
    source = make(calls, fake, dns_server)
    assert source.notifications() is None  # nothing known before the first read
    change = await source.changes(None)
    assert change is not None and {r.uid for r in change.upserted} == {"m-1"}
    assert ("_autodiscover._tcp.example.org", "SRV") in dns_server.queries
    assert ("example.org", "A") in dns_server.queries  # step 1 was tried first
    assert fake.operations()[0] == "GetUserSettings"
    assert f'"url":"{FOUND}"' in change.cursor
    assert source.settings.service_endpoint == FOUND
    assert source.notifications() is not None
    # after a restart: the stored URL is used, autodiscover is not asked again
    seen = len(fake.requests)
    restarted = make(calls, fake, dns_server)
    fake.put_item(ANNA, "m-2", VCAL.replace("UID:m-1", "UID:m-2"))
    again = await restarted.changes(change.cursor)
    assert again is not None and {r.uid for r in again.upserted} == {"m-2"}
    assert "GetUserSettings" not in [r.operation for r in fake.requests[seen:]]


async def test_a_stored_url_that_stopped_answering_is_discovered_again(
    fake: FakeEws, dns_server: FakeDns, calls: BlockingCalls
) -> None:
    first = await make(calls, fake, dns_server).changes(None)
    assert first is not None
    with socket.socket() as bound:  # a port nobody listens on: the server "moved"
        bound.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{bound.getsockname()[1]}/EWS/Exchange.asmx"
        stale = first.cursor.replace(FOUND, dead)
        change = await make(calls, fake, dns_server).changes(stale)
    assert change is not None and change.full and f'"url":"{FOUND}"' in change.cursor


async def test_a_domain_without_autodiscover_is_a_plain_error(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    with (
        FakeDns() as empty,
        pytest.raises(CalendarError, match="no autodiscover service") as caught,
    ):
        await make(calls, fake, empty).check()
    assert not isinstance(caught.value, CalendarAuthFailed)
    assert ("_autodiscover._tcp.example.org", "SRV") in empty.queries


async def test_a_wrong_password_at_autodiscover_is_refused_plainly(
    fake: FakeEws, dns_server: FakeDns, calls: BlockingCalls
) -> None:
    with pytest.raises(CalendarAuthFailed, match="refused") as caught:
        await make(calls, fake, dns_server, password="wrong-one").check()
    assert "wrong-one" not in str(caught.value)
