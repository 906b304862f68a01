"""The delegated grant through MSAL's authorization-code flow with PKCE against
``FakeGraph``: the token cache it ends with drives a ``GraphCalendarSource`` on /me;
a refused consent, a foreign redirect and a reused code are refused plainly.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterator

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.graph import DelegatedTokens, GraphCalendarSource
from pbxcal.calendars.graph.authorize import Authorizer
from pbxcal.errors import CalendarAuthFailed, CalendarError
from pbxcal.testing.graph_fake import TENANT, FakeGraph

MAILBOX = "agent@contoso.com"
REDIRECT = "http://localhost:8765/callback"


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        server.add_public_client("cli-app")
        server.add_mailbox(MAILBOX)
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(2)
    yield pool
    pool.close()


def authorizer(fake: FakeGraph) -> Authorizer:
    return Authorizer("cli-app", tenant=TENANT, authority_host=fake.authority_host,
                      ca_file=fake.ca_file)


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


async def test_authorization_code_flow_gives_a_working_grant(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, {"id": "a", "subject": "333",
                             "start": {"dateTime": "2026-11-24T09:00:00", "timeZone": "UTC"},
                             "end": {"dateTime": "2026-11-24T10:00:00", "timeZone": "UTC"}})
    flow = authorizer(fake)
    start = flow.begin(REDIRECT)
    assert start.url.startswith(fake.authority_host + f"/{TENANT}/oauth2/v2.0/authorize?")
    assert "offline_access" in query_of(start.url)["scope"]
    redirect = fake.consent(start.url, MAILBOX)
    cache = flow.finish(start, query_of(redirect))
    tokens = DelegatedTokens("cli-app", cache, tenant=TENANT,
                             authority_host=fake.authority_host, ca_file=fake.ca_file)
    source = GraphCalendarSource(tokens, None, calls=calls, graph_url=fake.graph_url,
                                 ca_file=fake.ca_file)
    change_set = await source.changes(None)
    assert change_set is not None and [r.uid for r in change_set.upserted] == ["a"]
    code = query_of(redirect)["code"]
    assert code not in cache  # the code is spent, not kept


def test_refused_consent_is_auth_failed(fake: FakeGraph) -> None:
    flow = authorizer(fake)
    start = flow.begin(REDIRECT)
    redirect = fake.consent(start.url, MAILBOX, approve=False)
    with pytest.raises(CalendarAuthFailed) as caught:
        flow.finish(start, query_of(redirect))
    assert "access_denied" in str(caught.value)


def test_a_redirect_of_another_authorization_is_refused(fake: FakeGraph) -> None:
    flow = authorizer(fake)
    mine = flow.begin(REDIRECT)
    other = flow.begin(REDIRECT)
    redirect = fake.consent(other.url, MAILBOX)
    with pytest.raises(CalendarError) as caught:
        flow.finish(mine, query_of(redirect))
    assert query_of(redirect)["code"] not in str(caught.value)


def test_a_code_is_redeemed_once(fake: FakeGraph) -> None:
    flow = authorizer(fake)
    start = flow.begin(REDIRECT)
    query = query_of(fake.consent(start.url, MAILBOX))
    flow.finish(start, query)
    with pytest.raises(CalendarAuthFailed) as caught:
        flow.finish(start, query)
    assert query["code"] not in str(caught.value)
