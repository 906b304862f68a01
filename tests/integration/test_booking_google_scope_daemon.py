"""Booking into Google calendars through a real ``pbxcal run``, with the Google fake that
checks scopes as Google does (a refresh asking for more than the grant holds: 400
``invalid_scope``; a token for reading only: 403 ``insufficientPermissions`` on writes).

Two agents: ``nina`` (extension 101) linked with a grant made now by the real
``pbxcal links authorize google`` (the test plays the browser) and ``otto`` (extension
102) with a grant made before bookings were written (``calendar.events.readonly``, no
scopes recorded), both added with ``links add`` and ``agents add``. The tests show: the
new grant asks for and records ``calendar.events``, syncs, and a guest's booking is
inserted into the calendar; the old grant keeps syncing (also after an edit, and after a
refused booking), and a booking into it answers 502 with the one-line message, leaves no
booking row and no event. Run against the code before the fix, the booking into the new
grant fails (Google's 403 to the read-only token), which is what this file guards.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for

from pbxcal.store import Store, load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.google_fake import FakeGoogle

pytestmark = pytest.mark.integration

AMS = ZoneInfo("Europe/Amsterdam")
NINA = "nina@example.com"
OTTO = "otto@example.com"
READ_ONLY = "https://www.googleapis.com/auth/calendar.events.readonly"
WRITE = "https://www.googleapis.com/auth/calendar.events"
REFUSAL = "the Google grant allows reading only: link the calendar again to book into it"


@dataclass
class Service:
    daemon: DaemonRun
    google: FakeGoogle
    token: str
    keys: Path
    nina_link: int
    otto_link: int
    grant: dict[str, Any]
    asked: list[str]
    day: datetime


def cli(
    daemon: DaemonRun, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    sub, *rest = args
    return subprocess.run(
        daemon.command(sub, *rest), capture_output=True, text=True, timeout=120, env=env
    )


def authorize(daemon: DaemonRun, google: FakeGoogle, work: Path) -> tuple[Path, list[str]]:
    """``pbxcal links authorize google`` with the test as the user's browser."""
    client = work / "client.json"
    client.write_text(json.dumps(google.add_client("desktop-1", "desktop-secret-1")))
    output = work / "nina.json"
    env = {**os.environ, "OAUTHLIB_INSECURE_TRANSPORT": "1"}  # the fake speaks plain http
    proc = subprocess.Popen(
        daemon.command("links", "authorize", "google", "--client-file", str(client),
                       "--output", str(output), "--timeout", "30"),
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    url = next((line.strip() for line in proc.stderr if line.strip().startswith("http")), "")
    assert url, "no consent address printed"
    asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["scope"].split()
    with urllib.request.urlopen(google.consent(url, account=NINA), timeout=10) as reply:  # noqa: S310
        assert reply.status == 200
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    return output, asked


def add_link(daemon: DaemonRun, google: FakeGoogle, extension: str, calendar: str,
             grant: Path) -> int:  # fmt: skip
    done = cli(daemon, "links", "add", "--extension", extension, "--provider", "google",
               "--source", calendar, "--credentials-file", str(grant),
               "--api-endpoint", google.api_endpoint, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["added"])


@pytest.fixture(scope="module")
def service(
    asterisk: AsteriskSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("google-scope")
    asterisk.cli("database deltree pbxcal")
    google = FakeGoogle().start()
    try:
        soon = datetime.now(AMS).date() + timedelta(days=7)
        day = soon + timedelta(days=(7 - soon.weekday()) % 7)  # a Monday 7-13 days ahead
        monday = datetime(day.year, day.month, day.day, tzinfo=AMS)
        for calendar in (NINA, OTTO):
            google.add_calendar(calendar)
            google.put_event(calendar, {
                "id": "call", "summary": "Customer call",
                "start": {"dateTime": (monday + timedelta(hours=10)).isoformat()},
                "end": {"dateTime": (monday + timedelta(hours=11)).isoformat()},
            })  # fmt: skip
        keys = new_key_file(work)
        portal = '\n[portal]\npublic_url = "https://pbx.example.com"\n'
        daemon = DaemonRun(work, asterisk, [], interval=3600, key_file=keys,
                           pbx_extra='extensions = ["100-299"]\n', extra_config=portal)  # fmt: skip
        grant_file, asked = authorize(daemon, google, work)
        grant = json.loads(grant_file.read_text())
        old = work / "otto.json"  # what `links authorize google` wrote before
        old.write_text(json.dumps(google.add_user("desktop-1", "desktop-secret-1",
                                                  "refresh-otto", (READ_ONLY,))))  # fmt: skip
        nina = add_link(daemon, google, "101", NINA, grant_file)
        otto = add_link(daemon, google, "102", OTTO, old)
        for agent, extension, link in (("nina", "101", nina), ("otto", "102", otto)):
            done = cli(daemon, "agents", "add", agent, "--pbx", "main", "--extension", extension,
                       "--name", agent.title(), "--booking-link", str(link),
                       "--conflict-link", str(link), "--settings",
                       '{"min_notice_minutes": 0, "timezone": "Europe/Amsterdam"}')  # fmt: skip
            assert done.returncode == 0, done.stderr
        daemon.start()
        daemon.wait_ready(60)
        done = cli(daemon, "admin-token", "create", "--name", "ops")
        assert done.returncode == 0, done.stderr
        with Store.open(daemon.store) as store:
            wait_for(lambda: store.expansion_stamps([nina, otto]), lambda s: len(s) == 2,
                     timeout=60, what="both calendars synced")  # fmt: skip
        yield Service(daemon, google, done.stdout.strip(), keys, nina, otto, grant, asked,
                      monday)  # fmt: skip
        daemon.terminate()
    finally:
        google.stop()


def api(svc: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {svc.token}"}
    return httpx.request(method, f"http://{svc.daemon.listen}/api/v1{path}", headers=headers,
                         timeout=30, **kwargs)  # fmt: skip


def booked(svc: Service, calendar: str) -> list[dict[str, Any]]:
    with svc.google._lock:
        return [dict(e) for e in svc.google._calendars[calendar].events.values()
                if str(e.get("iCalUID", "")).endswith("@pbxcal")]  # fmt: skip


def book(svc: Service, agent: str, hour: int) -> httpx.Response:
    start = (svc.day + timedelta(hours=hour)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return api(svc, "POST", f"/agents/{agent}/bookings",
               json={"start": start, "duration": 30, "subject": "Quote",
                     "guest_name": "Gail", "guest_email": "gail@example.org"})  # fmt: skip


def test_a_grant_from_links_authorize_google_asks_for_calendar_events_and_books(
    service: Service,
) -> None:
    busy = api(service, "GET", "/agents/nina/availability",
               params={"from": service.day.date().isoformat(),
                       "to": service.day.date().isoformat()})  # fmt: skip
    assert busy.status_code == 200, busy.text
    starts = [datetime.fromisoformat(s["start"]).astimezone(AMS).hour for s in busy.json()["slots"]]
    assert 10 not in starts and 9 in starts  # the synced call makes nina busy
    answer = book(service, "nina", 9)
    assert answer.status_code == 201, answer.text
    [event] = booked(service, NINA)
    assert event["iCalUID"] == answer.json()["uid"]
    assert event["hangoutLink"] == answer.json()["join_url"]
    assert service.google.requests["insufficientPermissions"] == 0
    # the grant asked for calendar.events and records it (its refreshes ask for that)
    assert service.asked == [WRITE] and service.grant["scopes"] == [WRITE]


def test_an_old_read_only_grant_books_nothing_and_keeps_syncing(service: Service) -> None:
    inserts = service.google.requests["events.insert"]
    answer = book(service, "otto", 9)
    assert answer.status_code == 502, answer.text
    assert answer.json()["detail"] == REFUSAL
    assert booked(service, OTTO) == []
    assert service.google.requests["events.insert"] == inserts  # nothing was sent
    with Store.open(service.daemon.store, keys=load_key_ring(str(service.keys), None)) as store:
        assert store.list_bookings("otto", service.day - timedelta(days=30)) == []
        # the grant still reads: an edit reaches the store after a sync on request
        service.google.put_event(OTTO, {
            "id": "late", "summary": "Late meeting",
            "start": {"dateTime": (service.day + timedelta(hours=15)).isoformat()},
            "end": {"dateTime": (service.day + timedelta(hours=16)).isoformat()},
        })  # fmt: skip
        queued = api(service, "POST", f"/links/{service.otto_link}/sync")
        assert queued.status_code == 202, queued.text
        wait_for(lambda: {e.uid for e in store.load_events(service.otto_link)[0]},
                 lambda uids: "late" in uids, timeout=30, what="the edit synced")  # fmt: skip
    [link] = [entry for entry in service.daemon.links() if entry["id"] == service.otto_link]
    assert link["status"] == "connected", link
