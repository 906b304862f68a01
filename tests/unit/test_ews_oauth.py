"""EWS with OAuth (client credentials, as Exchange with hybrid modern auth takes them):
the real exchangelib gets its token from ``FakeEws``'s own token endpoint over TLS on
loopback (``authority_host``; the fake's certificate trusted through ``ca_bundle``) and
sends it as a bearer token, which the fake checks on every EWS request. A token the
server refuses (expired there) is replaced by a new one; withdrawn consent is "needs
relink"; a wrong client secret is "auth failed" without the secret in the message. The
notification stream authenticates the same way.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings
from pbxcal.errors import CalendarAuthFailed, CalendarError, CalendarNeedsRelink
from pbxcal.testing.ews_fake import FakeEws

TENANT = "contoso.example"
CLIENT_ID = "0e1f2a3b-app"
SECRET = "app-secret-7Qx"
ALICE = "alice@example.org"
VCAL = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:m-1\r\nSUMMARY:0612345678\r\n"
    "DTSTART:20261201T090000Z\r\nDTEND:20261201T100000Z\r\nDTSTAMP:20261101T100000Z\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


@pytest.fixture
def fake() -> Iterator[FakeEws]:
    with FakeEws(tls=True) as server:
        server.add_app(TENANT, CLIENT_ID, SECRET)
        server.add_mailbox(ALICE)
        server.allow_impersonation(CLIENT_ID)
        server.put_item(ALICE, "m-1", VCAL)
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(workers=2)
    yield pool
    pool.close()


def oauth_settings(fake: FakeEws, **more: str) -> EwsSettings:
    return EwsSettings(
        service_endpoint=fake.url, mailbox=ALICE, username="", auth="oauth",
        access="impersonation", ca_bundle=fake.ca_file, tenant=more.get("tenant", TENANT),
        client_id=CLIENT_ID, authority_host=fake.origin,
    )  # fmt: skip


def make(calls: BlockingCalls, fake: FakeEws, secret: str = SECRET) -> EwsCalendarSource:
    return EwsCalendarSource(calls, oauth_settings(fake), password=secret, timeout=5, deadline=20)


async def test_a_token_from_the_token_endpoint_reads_the_calendar_and_is_reused(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    source = make(calls, fake)
    change = await source.changes(None)
    assert change is not None and {r.uid for r in change.upserted} == {"m-1"}
    assert await source.changes(change.cursor) is None
    assert fake.issuer.requests == 1  # one token for every request while it lives
    assert {r.user for r in fake.requests} == {CLIENT_ID}
    assert {r.impersonated for r in fake.requests} == {ALICE}


async def test_a_token_the_server_refuses_as_expired_is_replaced(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    source = make(calls, fake)
    change = await source.changes(None)
    assert change is not None
    fake.issuer.expire_tokens()
    fake.put_item(ALICE, "m-1", VCAL.replace("0612345678", "0687654321"))
    again = await source.changes(change.cursor)
    assert again is not None and "0687654321" in again.upserted[0].ical
    assert fake.issuer.requests == 2


async def test_a_token_the_client_finds_expired_is_replaced_before_sending(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.issuer.lifetime = 1.0  # expires_in=1: oauthlib sees it expire one second later
    source = make(calls, fake)
    change = await source.changes(None)
    assert change is not None
    # oauthlib rounds the receipt time: its expiry is within 1.5 s of receiving the token
    expires = time.time() + 1.6
    while time.time() <= expires:  # the behaviour under test needs the lifetime to pass
        await asyncio.sleep(0.05)
    fake.put_item(ALICE, "m-1", VCAL.replace("0612345678", "0687654321"))
    again = await source.changes(change.cursor)
    assert again is not None and "0687654321" in again.upserted[0].ical
    assert fake.issuer.requests == 2
    assert {r.user for r in fake.requests} == {CLIENT_ID}  # no request went out unauthorized


async def test_withdrawn_consent_needs_relink(fake: FakeEws, calls: BlockingCalls) -> None:
    source = make(calls, fake)
    change = await source.changes(None)
    assert change is not None
    fake.issuer.revoke_consent(CLIENT_ID)
    with pytest.raises(CalendarNeedsRelink, match="invalid_grant"):
        await source.changes(change.cursor)


async def test_a_wrong_client_secret_is_auth_failed_without_the_secret(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    with pytest.raises(CalendarAuthFailed) as caught:
        await make(calls, fake, secret="not-the-secret").check()
    assert "not-the-secret" not in str(caught.value) and "invalid_client" in str(caught.value)
    assert not any(r.operation for r in fake.requests)  # no EWS request without a token


async def test_oauth_needs_https(calls: BlockingCalls) -> None:
    with FakeEws() as plain:
        settings = EwsSettings(
            service_endpoint=plain.url, mailbox=ALICE, username="", auth="oauth",
            tenant=TENANT, client_id=CLIENT_ID, authority_host=plain.origin,
        )  # fmt: skip
        with pytest.raises(CalendarError, match="https"):
            await EwsCalendarSource(calls, settings, password=SECRET).check()


def test_the_notification_stream_uses_the_bearer_token_too(fake: FakeEws) -> None:
    from pbxcal.calendars.ews.push import EwsNotifications

    source = EwsNotifications(oauth_settings(fake), SECRET, timeout=5)
    sub = source.subscribe()
    assert sub.kind == "streaming"
    seen: list[int] = []
    got = threading.Event()

    def on_events(count: int) -> None:
        seen.append(count)
        got.set()

    thread = threading.Thread(
        target=lambda: source.listen(sub, on_events, minutes=1), daemon=True
    )
    thread.start()
    fake.wait_for_stream(1, 5)
    fake.put_item(ALICE, "m-2", VCAL.replace("UID:m-1", "UID:m-2"))
    assert got.wait(5) and seen == [1]
    source.interrupt()
    thread.join(5)
    assert {r.user for r in fake.requests} == {CLIENT_ID}
