"""Graph change notifications against ``FakeGraph``: the validation handshake answered
by ``push.validation_token``, notifications checked by ``SubscriptionBook`` (clientState,
unknown subscriptions, lifecycle events), renewal and deletion through the real MSAL +
httpx client.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.graph import AppOnlyTokens, GraphCalendarSource, GraphNotFound
from pbxcal.calendars.graph.push import Accepted, Refused, SubscriptionBook, validation_token
from pbxcal.errors import CalendarError
from pbxcal.testing.graph_fake import TENANT, FakeGraph

SECRET = "client-secret-do-not-print"
MAILBOX = "agent@contoso.com"
EXPIRES = datetime(2026, 12, 1, tzinfo=UTC)


class Webhook:
    """A loopback webhook: echoes validation tokens (unless ``echo`` is off), answers
    202 to notifications and keeps their bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.echo = True
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                token = validation_token(query)
                if token is not None:
                    data = token.encode() if hook.echo else b"nope"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                hook.bodies.append(body)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}/webhooks/graph"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        server.add_app("app-1", SECRET)
        server.add_mailbox(MAILBOX)
        yield server


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(4)
    yield pool
    pool.close()


def source_for(fake: FakeGraph, calls: BlockingCalls) -> GraphCalendarSource:
    tokens = AppOnlyTokens(
        TENANT, "app-1", SECRET, authority_host=fake.authority_host, ca_file=fake.ca_file
    )
    return GraphCalendarSource(
        tokens, MAILBOX, calls=calls, graph_url=fake.graph_url, ca_file=fake.ca_file
    )


def event(event_id: str) -> dict[str, Any]:
    return {"id": event_id, "subject": "333",
            "start": {"dateTime": "2026-11-24T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-24T10:00:00", "timeZone": "UTC"}}


async def test_subscribe_notify_check_renew_unsubscribe(
    fake: FakeGraph, calls: BlockingCalls, webhook: Webhook
) -> None:
    source = source_for(fake, calls)
    subscription = await source.subscribe(webhook.url, webhook.url + "/lifecycle", EXPIRES)
    assert subscription.resource == f"users/{MAILBOX}/events"
    assert subscription.expires_at == EXPIRES
    assert len(subscription.client_state) <= 128
    book: SubscriptionBook[str] = SubscriptionBook()
    book.add(subscription, "link-7")

    fake.put_event(MAILBOX, event("a"))
    fake.delete_event(MAILBOX, "a")
    fake.send_lifecycle(subscription.id, "reauthorizationRequired")
    deliveries = fake.wait_for_deliveries(3)
    assert [d.status for d in deliveries] == [202, 202, 202]
    assert deliveries[2].url.endswith("/lifecycle")
    results = [r for body in webhook.bodies for r in book.check(body)]
    assert results == [
        Accepted("link-7", "changed", subscription.id),
        Accepted("link-7", "changed", subscription.id),
        Accepted("link-7", "reauthorizationRequired", subscription.id),
    ]

    later = EXPIRES + timedelta(days=2)
    renewed = await source.renew(subscription, later)
    assert renewed.expires_at == later and renewed.client_state == subscription.client_state
    assert renewed.needs_renewal(later - timedelta(hours=1))
    assert not renewed.needs_renewal(later - timedelta(days=1))
    await source.unsubscribe(renewed)
    assert fake.subscription_ids() == []
    await source.unsubscribe(renewed)  # already gone: fine
    with pytest.raises(GraphNotFound):
        await source.renew(renewed, later)


def test_forged_and_malformed_notifications_are_refused() -> None:
    from pbxcal.calendars.graph import GraphSubscription

    subscription = GraphSubscription("sub-1", "users/x/events", "the-state", EXPIRES)
    book: SubscriptionBook[int] = SubscriptionBook()
    book.add(subscription, 1)

    def body(**item: Any) -> bytes:
        return json.dumps({"value": [item]}).encode()

    assert book.check(body(subscriptionId="sub-1", clientState="forged")) == [
        Refused("wrong clientState")]
    assert book.check(body(subscriptionId="sub-2", clientState="the-state")) == [
        Refused("unknown subscription")]
    assert book.check(b"not json") == [Refused("malformed")]
    assert book.check(body(subscriptionId="sub-1")) == [Refused("malformed")]
    assert book.check(body(subscriptionId="sub-1", clientState="the-state",
                           lifecycleEvent="somethingElse")) == [Refused("unknown lifecycle event")]
    assert book.check(body(subscriptionId="sub-1", clientState="the-state",
                           lifecycleEvent="missed")) == [Accepted(1, "missed", "sub-1")]
    book.remove("sub-1")
    assert book.check(body(subscriptionId="sub-1", clientState="the-state")) == [
        Refused("unknown subscription")]
    assert book.refused["wrong clientState"] == 1
    assert book.refused["unknown subscription"] == 2



def test_subscriptions_from_the_store_and_taken_over_ones_check_by_digest() -> None:
    from pbxcal.calendars.google.push import token_digest
    from pbxcal.calendars.graph import GraphSubscription

    book: SubscriptionBook[int] = SubscriptionBook()

    def body(**item: Any) -> bytes:
        return json.dumps({"value": [item]}).encode()

    # made by another process: known only as a digest, trusted for max_age seconds
    book.learn("sub-7", token_digest("state-7"), 7, at=10.0)
    assert book.check(body(subscriptionId="sub-7", clientState="state-7")) == [
        Accepted(7, "changed", "sub-7")]
    assert book.check(body(subscriptionId="sub-7", clientState="state-8")) == [
        Refused("wrong clientState")]
    assert book.fresh("sub-7", 39.0, 30.0) and not book.fresh("sub-7", 40.0, 30.0)
    assert book.get("sub-7") is None  # not tended here
    # taken over: tended here, its client state still only a digest
    taken = GraphSubscription("sub-7", "me/events", "", EXPIRES)
    book.add(taken, 7, digest=token_digest("state-7"))
    assert book.fresh("sub-7", 1e9, 30.0) and book.get("sub-7") == taken
    assert book.check(body(subscriptionId="sub-7", clientState="state-7")) == [
        Accepted(7, "changed", "sub-7")]
    assert book.check(body(subscriptionId="sub-7", clientState="")) == [
        Refused("wrong clientState")]
    assert SubscriptionBook.subscription_ids(
        json.dumps({"value": [{"subscriptionId": "a"}, {"subscriptionId": 3}, "x"]}).encode()
    ) == {"a"}
    assert SubscriptionBook.subscription_ids(b"nonsense") == set()

def test_validation_token() -> None:
    assert validation_token({"validationToken": "abc def"}) == "abc def"
    assert validation_token({}) is None
    assert validation_token({"validationToken": "x\r\ny"}) is None


async def test_a_webhook_that_fails_the_handshake_gets_no_subscription(
    fake: FakeGraph, calls: BlockingCalls, webhook: Webhook
) -> None:
    webhook.echo = False
    source = source_for(fake, calls)
    with pytest.raises(CalendarError) as caught:
        await source.subscribe(webhook.url, webhook.url + "/lifecycle", EXPIRES)
    assert "ValidationError" in str(caught.value)
    assert fake.subscription_ids() == []
