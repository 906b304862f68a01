"""The admin API end to end, against a real ``pbxcal run`` (its one HTTP server, the
sandboxed Asterisk, a real SQLite store) and a real SMTP server (aiosmtpd on loopback).

One service for the module: PBX ``main`` (the Asterisk sandbox, extensions 100-299) with
one calendar linked to extension 100 that forwards now, and PBX ``branch`` (never
reached; only there to scope a reseller's token to). Tokens are made and revoked with
the real CLI (``pbxcal admin-token``). The tests show: missing, wrong, revoked and
out-of-scope tokens are refused (out-of-scope exactly like a missing link); links are
listed and shown with their status, active forwardings and ignored appointments; a
sync request reaches the service's sync; disable and enable change what Asterisk
holds; an invitation is e-mailed (the mail is received and parsed) and its URL opens
the portal; delete removes; every call is in the audit log; and the checked-in OpenAPI
document holds against the running service under schemathesis (every check, a bounded
and derandomized number of examples, so it is repeatable in CI). The schemathesis test
runs last: it may disable or delete links.
"""

from __future__ import annotations

import email
import json
import queue
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from aiosmtpd.controller import Controller
from daemon_helpers import (
    DaemonRun,
    Event,
    Link,
    free_port,
    new_key_file,
    wait_for,
    wait_forwarding,
    whole_second,
    write_calendar,
)
from hypothesis import HealthCheck, settings

from pbxcal.store import Store
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.web.api import OPENAPI_FILE

pytestmark = pytest.mark.integration

MAIL_TIMEOUT = 15.0


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, list[str], bytes]] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def next(self) -> tuple[str, list[str], Message]:
        sender, recipients, raw = self.messages.get(timeout=MAIL_TIMEOUT)
        return sender, recipients, email.message_from_bytes(raw, policy=default_policy)


@dataclass
class Service:
    daemon: DaemonRun
    ast: AsteriskSandbox
    inbox: Inbox
    ops: str
    reseller: str
    revoked: str
    link_id: int
    calendar: Path
    events: list[Event]

    @property
    def base_url(self) -> str:
        return f"http://{self.daemon.listen}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        sub, *rest = args
        return subprocess.run(
            self.daemon.command(sub, *rest), capture_output=True, text=True, timeout=120
        )


def make_token(service_cli: Any, name: str, *pbxes: str) -> str:
    extra = [arg for pbx in pbxes for arg in ("--pbx", pbx)]
    done = service_cli("admin-token", "create", "--name", name, *extra)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("pbxcal_") and "\n" not in token
    assert token not in done.stderr
    return token


@pytest.fixture(scope="module")
def service(
    asterisk: AsteriskSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("admin-api")
    asterisk.cli("database deltree pbxcal")
    now = whole_second(datetime.now(UTC))
    calendar = work / "anna.ics"
    events = [
        Event("call", "0612345678", now - timedelta(hours=1), now + timedelta(hours=2)),
        Event("lunch", "Lunch", now + timedelta(days=1), now + timedelta(days=1, hours=1)),
        Event("desk", "201", now + timedelta(days=2), now + timedelta(days=2, hours=1)),
    ]
    write_calendar(calendar, events)
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    extra = (
        '\n[portal]\npublic_url = "https://pbx.example.com"\n'
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nfrom = "pbxcal@example.com"\n'
        # never reached: a second tenant for scoped tokens, writing nothing anywhere
        f'\n[pbx.branch]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'secret_file = "{work / "ami.secret"}"\ndiscover_extensions = false\n'
        'extensions = ["500-599"]\nbackoff_max = 1\n'
    )
    daemon = DaemonRun(
        work,
        asterisk,
        [Link("100", calendar)],
        interval=3600,  # no polling during the test: a new sync-log line is ours
        pbx_extra='extensions = ["100-299"]\n',
        extra_config=extra,
        key_file=new_key_file(work),
    )
    daemon.start()
    try:
        wait_for(
            lambda: daemon.http("/api/v1/openapi.json")[0],
            lambda status: status == 200,
            timeout=60,
            what="the admin API to answer",
        )
        wait_forwarding(asterisk, "100", "+31612345678", timeout=30)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            sub, *rest = args
            return subprocess.run(
                daemon.command(sub, *rest), capture_output=True, text=True, timeout=120
            )

        ops = make_token(cli, "ops")
        reseller = make_token(cli, "reseller", "branch")
        revoked = make_token(cli, "gone")
        done = cli("admin-token", "revoke", "gone")
        assert done.returncode == 0, done.stderr
        listed = json.loads(cli("links", "list", "--json").stdout)["links"]
        link_id = listed[0]["id"]
        yield Service(daemon, asterisk, inbox, ops, reseller, revoked, link_id, calendar, events)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.terminate()
        smtp.stop()


def assert_error(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert body["detail"] and "\n" not in body["detail"]


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer nope", "Bearer pbxcal_nope", "Basic b3BzOnNlY3JldA==", "REVOKED"],
)
def test_missing_wrong_and_revoked_tokens_are_401(
    service: Service, authorization: str | None
) -> None:
    headers = {}
    if authorization == "REVOKED":
        headers["Authorization"] = f"Bearer {service.revoked}"
    elif authorization is not None:
        headers["Authorization"] = authorization
    with service.client() as client:
        for method, path in (
            ("GET", "/api/v1/links"),
            ("GET", f"/api/v1/links/{service.link_id}"),
            ("POST", f"/api/v1/links/{service.link_id}/disable"),
            ("GET", "/api/v1/invitations"),
        ):
            answer = client.request(method, path, headers=headers)
            assert_error(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/api/v1/openapi.json").status_code == 200
    shown = service.client(service.ops).get(f"/api/v1/links/{service.link_id}").json()
    assert shown["active"] is True  # the refused disable changed nothing


def test_an_out_of_scope_link_looks_exactly_like_a_missing_one(service: Service) -> None:
    link = service.link_id
    with service.client(service.reseller) as reseller:
        assert reseller.get("/api/v1/links").json() == {"links": []}
        for method, suffix in (
            ("GET", ""), ("GET", "/sync-log"), ("POST", "/sync"), ("POST", "/disable"),
            ("POST", "/enable"), ("DELETE", ""),
        ):  # fmt: skip
            hidden = reseller.request(method, f"/api/v1/links/{link}{suffix}")
            missing = reseller.request(method, f"/api/v1/links/{link + 1000}{suffix}")
            assert_error(hidden, 404, "not-found")
            assert hidden.json()["detail"].replace(str(link), "N") == missing.json()[
                "detail"
            ].replace(str(link + 1000), "N")
        refused = reseller.post("/api/v1/invitations", json={"pbx": "main", "extension": "101"})
        assert_error(refused, 404, "not-found")
        assert reseller.get("/api/v1/invitations").json() == {"invitations": []}
    with service.client(service.ops) as ops:
        shown = ops.get(f"/api/v1/links/{link}")
        assert shown.status_code == 200 and shown.json()["active"] is True
    assert service.ast is not None


def test_bad_input_is_a_json_400_or_404(service: Service) -> None:
    with service.client(service.ops) as ops:
        assert_error(ops.get("/api/v1/links/abc"), 400, "bad-request")
        assert_error(ops.get("/api/v1/links/0"), 400, "bad-request")
        assert_error(ops.get("/api/v1/links/99999"), 404, "not-found")
        assert_error(ops.get(f"/api/v1/links/{service.link_id}/sync-log?limit=0"), 400,
                     "bad-request")  # fmt: skip
        assert_error(ops.post("/api/v1/invitations", content=b"{"), 400, "bad-request")
        assert_error(ops.post("/api/v1/invitations", json=["x"]), 400, "bad-request")
        assert_error(ops.post("/api/v1/invitations", json={"pbx": "main"}), 400, "bad-request")
        assert_error(
            ops.post("/api/v1/invitations", json={"pbx": "main", "extension": "101", "x": 1}),
            400, "bad-request",
        )  # fmt: skip
        assert_error(
            ops.post("/api/v1/invitations", json={"pbx": "main", "extension": "999"}),
            404, "not-found",
        )  # fmt: skip
        assert_error(ops.get("/api/v1/nothing"), 404, "not-found")
        wrong = ops.put("/api/v1/links")
        assert_error(wrong, 405, "method-not-allowed")
        assert "GET" in wrong.headers["allow"]
        assert ops.get("/api/v1/invitations").json() == {"invitations": []}


# -- links ---------------------------------------------------------------------------------


def test_links_show_status_forwardings_and_ignored_appointments(service: Service) -> None:
    with service.client(service.ops) as ops:
        [listed] = ops.get("/api/v1/links").json()["links"]
        shown = ops.get(f"/api/v1/links/{service.link_id}").json()
    for link in (listed, shown):
        assert link["id"] == service.link_id
        assert (link["extension"], link["pbx"], link["status"]) == ("100", "main", "connected")
        assert link["last_sync"] and link["last_result"] == "changed"
        assert [f["targets"] for f in link["active_forwardings"]] == [["+31612345678"]]
        assert [f["targets"] for f in link["upcoming_forwardings"]] == [["201"]]
        assert [(i["title"], i["reason"]) for i in link["ignored"]] == [("Lunch", "not-a-number")]
    with service.client(service.ops) as ops:
        log = ops.get(f"/api/v1/links/{service.link_id}/sync-log", params={"limit": 5}).json()
    assert log["link_id"] == service.link_id
    assert [e["result"] for e in log["entries"]][-1] == "changed"


def test_sync_request_reaches_the_running_service(service: Service) -> None:
    """Polling is hourly: only the requested sync can bring an edit to Asterisk."""
    path = f"/api/v1/links/{service.link_id}/sync"
    edited = [replace(service.events[0], title="0687654321")]
    for events, target in ((edited, "+31687654321"), (service.events, "+31612345678")):
        write_calendar(service.calendar, events)
        with service.client(service.ops) as ops:
            answer = ops.post(path)
        assert answer.status_code == 202
        assert answer.json() == {"link_id": service.link_id, "queued": True}
        wait_forwarding(service.ast, "100", target, timeout=20)


def test_disable_and_enable_change_what_asterisk_holds(service: Service) -> None:
    path = f"/api/v1/links/{service.link_id}"
    with service.client(service.ops) as ops:
        disabled = ops.post(f"{path}/disable")
        assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
        wait_forwarding(service.ast, "100", None, timeout=20)
        assert_error(ops.post(f"{path}/sync"), 409, "conflict")
        enabled = ops.post(f"{path}/enable")
        assert enabled.status_code == 200 and enabled.json()["active"] is True
        wait_forwarding(service.ast, "100", "+31612345678", timeout=20)


# -- invitations ---------------------------------------------------------------------------


def test_invitation_is_emailed_listed_and_opens_the_portal(service: Service) -> None:
    with service.client(service.ops) as ops:
        answer = ops.post(
            "/api/v1/invitations",
            json={"pbx": "main", "extension": "101", "email": "anna@example.com",
                  "language": "nl"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        created = answer.json()
        listed = ops.get("/api/v1/invitations").json()["invitations"]
    url = created["url"]
    assert url.startswith("https://pbx.example.com/i/") and created["emailed"] is True
    assert created["invitation"]["state"] == "open"
    assert created["invitation"]["created_by"] == "api:ops"
    sender, recipients, message = service.inbox.next()
    assert (sender, recipients) == ("pbxcal@example.com", ["anna@example.com"])
    assert message["Subject"] == "Koppel uw agenda aan uw telefoon"
    assert url in message.get_content()
    token = url.rsplit("/", 1)[1]
    assert [i["id"] for i in listed] == [created["invitation"]["id"]]
    assert token not in json.dumps(listed)
    with service.client() as browser:
        opened = browser.get(f"/i/{token}")  # the portal takes it: a session, on to /link
        assert opened.status_code == 303 and opened.headers["location"] == "/link"
        assert "pbxcal_portal=" in opened.headers["set-cookie"]
        refused = browser.get(f"/i/{token[:-2]}xy")
        assert refused.status_code == 404 and "set-cookie" not in refused.headers


def test_cli_invitation_is_emailed_in_english(service: Service) -> None:
    done = service.cli(
        "invitations", "create", "--pbx", "main", "--extension", "102",
        "--email", "bob@example.com", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["emailed"] is True and created["invitation"]["extension"] == "102"
    _, recipients, message = service.inbox.next()
    assert recipients == ["bob@example.com"]
    assert message["Subject"] == "Link your calendar to your phone"
    assert created["url"] in message.get_content()


def test_delete_removes_a_link(service: Service, tmp_path: Path) -> None:
    calendar = tmp_path / "bob.ics"
    write_calendar(calendar, [])
    added = service.cli("links", "add", "--extension", "202", "--source", str(calendar), "--json")
    assert added.returncode == 0, added.stderr
    link_id = json.loads(added.stdout)["added"]
    with service.client(service.ops) as ops:
        removed = ops.delete(f"/api/v1/links/{link_id}")
        assert removed.status_code == 200
        assert removed.json() == {"removed": link_id, "revoked": False, "note": ""}
        assert_error(ops.get(f"/api/v1/links/{link_id}"), 404, "not-found")
        assert link_id not in [link["id"] for link in ops.get("/api/v1/links").json()["links"]]


def test_every_call_is_audit_logged(service: Service) -> None:
    with Store.open(service.daemon.store) as store:
        before = store.audit_entries(1)[0].id
    with service.client(service.ops) as ops:
        ops.get(f"/api/v1/links/{service.link_id}/sync-log")
    with service.client("pbxcal_wrong") as wrong:
        wrong.get("/api/v1/links")

    def read() -> list[Any]:
        with Store.open(service.daemon.store) as store:
            return store.audit_entries(500)

    def both_in(found: list[Any]) -> bool:
        new = {(e.actor, e.action) for e in found if e.id > before}
        return {("ops", "link.sync-log"), ("-", "auth.refused")} <= new

    # the lines are committed in batches (every 50 ms)
    entries, _ = wait_for(
        read,
        both_in,
        timeout=10,
        what="the two calls' audit lines",
    )
    newest_refusal = next(e for e in entries if e.action == "auth.refused")
    assert (newest_refusal.actor, newest_refusal.target) == ("-", "/api/v1/links")
    newest_ops = next(e for e in entries if e.actor == "ops")
    assert (newest_ops.action, newest_ops.target) == ("link.sync-log", f"link:{service.link_id}")
    assert newest_ops.detail["status"] == 200 and newest_ops.remote == "127.0.0.1"
    actions = {(e.actor, e.action) for e in entries}
    assert {("reseller", "link.show"), ("ops", "link.disable"), ("ops", "invitation.create"),
            ("ops", "link.delete")} <= actions  # fmt: skip
    assert any(e.action == "token.revoke" and e.actor.startswith("cli:") for e in entries)
    dump = repr(entries)
    assert service.ops not in dump and service.reseller not in dump


# -- the OpenAPI document against the running service (last: it may delete links) --------


api_schema = schemathesis.openapi.from_path(OPENAPI_FILE)


@pytest.fixture
def requests_under_urllib3_future() -> Iterator[None]:
    """caldav's niquests installs urllib3-future over urllib3, whose pool container has
    no ``keys()``; schemathesis 4.32 counts pooled connections through it only to resend
    a request a server dropped unread. Count nothing there instead (so no such resend:
    our server does not drop keep-alive connections); everything else is unchanged."""
    from schemathesis.transport import requests as transport

    original = transport._count_opened_connections

    def count(session: Any) -> int:
        try:
            return original(session)
        except AttributeError:
            return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transport, "_count_opened_connections", count)
        yield


@api_schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_document_holds_against_the_running_service(
    case: Any, service: Service, requests_under_urllib3_future: None
) -> None:
    case.call_and_validate(
        base_url=service.base_url, headers={"Authorization": f"Bearer {service.ops}"}
    )
