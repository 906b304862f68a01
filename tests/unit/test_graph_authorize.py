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


async def test_a_rotated_refresh_token_comes_back_as_the_updated_secret(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    """After a refresh (access tokens expired: Graph answers 401, MSAL refreshes), the
    source hands back the new cache; the fake rotated the refresh token, so only the new
    cache can refresh again."""
    import json

    flow = authorizer(fake)
    start = flow.begin(REDIRECT)
    cache = flow.finish(start, query_of(fake.consent(start.url, MAILBOX)))
    [old] = [e["secret"] for e in json.loads(cache)["RefreshToken"].values()]
    tokens = DelegatedTokens("cli-app", cache, tenant=TENANT,
                             authority_host=fake.authority_host, ca_file=fake.ca_file)
    source = GraphCalendarSource(tokens, None, calls=calls, graph_url=fake.graph_url,
                                 ca_file=fake.ca_file, token_secret="graph-token-cache")
    other = GraphCalendarSource(tokens, None, calls=calls, graph_url=fake.graph_url)
    assert source.throttle_key is not None and "cli-app" in source.throttle_key
    assert source.throttle_key == other.throttle_key  # same app, same account
    await source.changes(None)
    assert source.updated_secret() is None  # the access token in the cache served
    fake.expire_access_tokens()
    await source.changes(None)
    update = source.updated_secret()
    assert update is not None and update[0] == "graph-token-cache"
    [new] = [e["secret"] for e in json.loads(update[1])["RefreshToken"].values()]
    assert new != old and fake.refresh_token_works("cli-app", new)
    assert not fake.refresh_token_works("cli-app", old)  # rotation: the old one is spent
    assert source.updated_secret() is None  # handed out once
    assert other.updated_secret() is None  # a source without token_secret never does


def test_throttle_keys_tell_apps_and_mailboxes_apart() -> None:
    from pbxcal.calendars.graph import AppOnlyTokens

    calls = BlockingCalls(1)
    try:
        one = AppOnlyTokens(TENANT, "app-1", "s")
        a = GraphCalendarSource(one, "Anna@contoso.com", calls=calls)
        b = GraphCalendarSource(one, "anna@contoso.com", calls=calls)
        c = GraphCalendarSource(one, "bob@contoso.com", calls=calls)
        d = GraphCalendarSource(AppOnlyTokens(TENANT, "app-2", "s"), "anna@contoso.com",
                                calls=calls)  # fmt: skip
        assert a.throttle_key == b.throttle_key
        assert len({a.throttle_key, c.throttle_key, d.throttle_key}) == 3
    finally:
        calls.close()


def test_a_grant_file_round_trip_and_refusals(tmp_path: pytest.TempPathFactory) -> None:
    import json
    from pathlib import Path

    from pbxcal.calendars.graph.authorize import (
        MicrosoftGrant,
        read_grant_file,
        write_grant_file,
    )

    path = Path(str(tmp_path)) / "grant.json"
    grant = MicrosoftGrant("cli-app", TENANT, '{"cache": "rt-secret"}', "https://login.test")
    write_grant_file(path, grant)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_grant_file(path) == grant
    assert "rt-secret" not in repr(grant)
    with pytest.raises(OSError):
        write_grant_file(path, grant)  # never over an existing file
    bad = Path(str(tmp_path)) / "bad.json"
    for content, message in [
        ("[]", "not a Microsoft grant"),
        (json.dumps({"type": "microsoft-delegated", "client_id": "x", "tenant": "t"}),
         "misses token_cache"),
        (json.dumps({"type": "microsoft-delegated", "client_id": "x", "tenant": "a b",
                     "token_cache": "rt-secret"}), "no usable tenant"),
        (json.dumps({"type": "microsoft-delegated", "client_id": "x", "tenant": "t",
                     "token_cache": "c", "authority_host": "http://evil"}), "not https"),
    ]:
        bad.write_text(content)
        with pytest.raises(CalendarAuthFailed, match=message) as caught:
            read_grant_file(bad)
        assert "rt-secret" not in str(caught.value)
