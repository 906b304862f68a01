"""``calendars.google.web_flow`` on its own: the authorization URL, the client file,
redemption and revocation answers mapped to one-line errors (FakeGoogle and
httpx.MockTransport for answers the fake does not give)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pbxcal.calendars.google.web_flow import (
    WEB_SCOPES,
    begin,
    endpoint_allowed,
    finish,
    pkce_challenge,
    read_web_client,
    revoke,
    web_client,
)
from pbxcal.errors import CalendarAuthFailed, CalendarError, CalendarUnavailable
from pbxcal.testing.google_fake import FakeGoogle

SECRET = "the-web-secret"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with FakeGoogle() as fake:
        yield fake


def test_begin_asks_for_offline_consent_with_state_and_s256() -> None:
    client = web_client({"web": {"client_id": "c", "client_secret": SECRET}})
    url, secret = begin(client, "https://pbx.example/oauth/google/callback")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith("https://accounts.google.com/o/oauth2/auth?")
    assert query["state"] == secret["state"] and len(secret["state"]) >= 43
    assert query["code_challenge"] == pkce_challenge(secret["code_verifier"])
    assert query["code_challenge_method"] == "S256" and 43 <= len(secret["code_verifier"]) <= 128
    assert query["access_type"] == "offline" and "consent" in query["prompt"].split()
    assert query["scope"].split() == list(WEB_SCOPES)
    assert SECRET not in url and secret["code_verifier"] not in url
    _, other = begin(client, "https://pbx.example/oauth/google/callback")
    assert other["state"] != secret["state"] and other["code_verifier"] != secret["code_verifier"]


def test_client_file_must_be_a_web_client(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"installed": {"client_id": "c", "client_secret": "s"}}))
    with pytest.raises(CalendarAuthFailed, match="Web application"):
        read_web_client(path)
    path.write_text(json.dumps({"web": {"client_id": "c"}}))
    with pytest.raises(CalendarAuthFailed, match="misses client_secret"):
        read_web_client(path)
    path.write_text(json.dumps({"web": {"client_id": "c", "client_secret": "s",
                                        "token_uri": "http://token.example/"}}))  # fmt: skip
    with pytest.raises(CalendarAuthFailed, match="token_uri must be an https URL"):
        read_web_client(path)
    with pytest.raises(CalendarAuthFailed, match="cannot be read"):
        read_web_client(tmp_path / "missing.json")
    assert SECRET not in repr(web_client({"web": {"client_id": "c", "client_secret": SECRET}}))


def test_endpoints_are_https_or_loopback_http() -> None:
    assert endpoint_allowed("https://oauth2.googleapis.com/token")
    assert endpoint_allowed("http://127.0.0.1:8080/token")
    assert not endpoint_allowed("http://oauth2.googleapis.com/token")
    assert not endpoint_allowed("https://user:pw@oauth2.googleapis.com/token")
    assert not endpoint_allowed("file:///etc/passwd")


async def test_finish_redeems_once_and_revoke_makes_the_grant_unusable(google: FakeGoogle) -> None:
    client = web_client(google.add_web_client("web-1", SECRET))
    url, secret = begin(client, "http://127.0.0.1:1/cb")
    back = google.consent(url, account="anna@example.com")
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    info = await finish(client, secret, query)
    assert info["refresh_token"].startswith("refresh-") and info["client_secret"] == SECRET
    with pytest.raises(CalendarAuthFailed, match=r"refused the code \(invalid_grant\)"):
        await finish(client, secret, query)  # a code works once
    await revoke(info, f"{google.base_url}/revoke")
    assert google.revoked == [info["refresh_token"]]
    await revoke(info, f"{google.base_url}/revoke")  # already revoked: invalid_token, done
    with pytest.raises(CalendarError, match="does not belong"):
        await finish(client, secret, {**query, "state": "other"})


async def test_refusals_and_outages_are_one_line_errors() -> None:
    client = web_client({"web": {"client_id": "c", "client_secret": SECRET}})
    _, secret = begin(client, "https://pbx.example/cb")
    good = {"state": secret["state"], "code": "the-code"}
    with pytest.raises(CalendarAuthFailed, match=r"not completed \(access_denied\)"):
        await finish(client, secret, {"state": secret["state"], "error": "access_denied"})

    def answer(status: int, body: object) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(status, json=body))

    with pytest.raises(CalendarUnavailable, match="answered 503"):
        await finish(client, secret, good, transport=answer(503, {}))
    with pytest.raises(CalendarAuthFailed, match="no refresh token"):
        await finish(client, secret, good, transport=answer(200, {"access_token": "a"}))
    with pytest.raises(CalendarAuthFailed, match=r"\(\?\)"):  # a strange error code is not echoed
        await finish(client, secret, good, transport=answer(400, {"error": "<b>x</b>"}))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(CalendarUnavailable, match="cannot be reached"):
        await finish(client, secret, good, transport=httpx.MockTransport(refuse))
    info = {"refresh_token": "r"}
    with pytest.raises(CalendarAuthFailed, match=r"revocation refused \(unauthorized_client\)"):
        await revoke(info, transport=answer(400, {"error": "unauthorized_client"}))
