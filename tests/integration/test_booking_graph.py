"""Booking with a Microsoft 365 calendar (the protocol-level Graph fake on TLS loopback,
read and written through the real MSAL and pbxcal's Graph client) against a real
``pbxcal run``: the link is added with the real CLI, read by the daemon's real sync
(which stores the mailbox's working hours and zone with the sync state), the agent with
``pbxcal agents add``, and everything asked over the admin API.

The tests show: an agent whose booking link is that calendar and who has no hours or
zone of their own is offered Outlook's working hours (Monday-Thursday 08:30-16:00) in
Outlook's zone (Pacific Standard Time = America/Los_Angeles), the meeting in the
mailbox busy; an agent with their own hours and zone on the same link keeps them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for

from pbxcal.store import Store
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.graph_fake import TENANT, FakeGraph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SECRET = "app-secret-4d2a"
MAILBOX = "carla@contoso.com"
LA = ZoneInfo("America/Los_Angeles")
AMS = ZoneInfo("Europe/Amsterdam")
MAILBOX_SETTINGS = {
    "timeZone": "Pacific Standard Time",
    "workingHours": {
        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday"],
        "startTime": "08:30:00.0000000", "endTime": "16:00:00.0000000",
        "timeZone": {"name": "Pacific Standard Time"},
    },
}  # fmt: skip


@dataclass
class Service:
    daemon: DaemonRun
    graph: FakeGraph
    token: str
    link_id: int
    monday: date  # a Monday 7-13 days ahead (in Los Angeles)


def cli(
    daemon: DaemonRun, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    sub, *rest = args
    return subprocess.run(daemon.command(sub, *rest), capture_output=True, text=True,
                          timeout=120, input=stdin)  # fmt: skip


def local(day: date, hh: int, mm: int = 0, zone: ZoneInfo = LA) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)


def graph_time(moment: datetime) -> dict[str, str]:
    utc = moment.astimezone(ZoneInfo("UTC"))
    return {"dateTime": utc.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


@pytest.fixture(scope="module")
def service(
    asterisk: AsteriskSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("booking-graph")
    asterisk.cli("database deltree pbxcal")
    soon = datetime.now(LA).date() + timedelta(days=7)
    monday = soon + timedelta(days=(7 - soon.weekday()) % 7)
    with FakeGraph() as graph:
        graph.add_app("app-1", SECRET)
        graph.add_mailbox(MAILBOX, MAILBOX_SETTINGS)
        graph.put_event(MAILBOX, {
            "id": "m1", "subject": "Supplier call", "showAs": "busy",
            "start": graph_time(local(monday, 10)), "end": graph_time(local(monday, 11)),
        })  # fmt: skip
        extra = '\n[portal]\npublic_url = "https://pbx.example.com"\n'
        keys = new_key_file(work)
        daemon = DaemonRun(work, asterisk, [], interval=3600, key_file=keys,
                           pbx_extra='extensions = ["100-299"]\n', extra_config=extra)  # fmt: skip
        daemon.start()
        try:
            daemon.wait_ready(60)
            added = cli(
                daemon, "links", "add", "--provider", "graph", "--source", MAILBOX,
                "--tenant", TENANT, "--client-id", "app-1", "--client-secret-file", "-",
                "--authority-host", graph.authority_host, "--graph-url", graph.graph_url,
                "--ca-file", graph.ca_file, "--extension", "102", "--json", stdin=SECRET + "\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            link_id = int(json.loads(added.stdout)["added"])
            with Store.open(daemon.store) as store:
                wait_for(lambda: store.load_events(link_id)[1],
                         lambda s: s is not None and s.working_hours is not None,
                         timeout=60, what="the mailbox read")  # fmt: skip
            for args in (
                ["add", "carla", "--pbx", "main", "--extension", "102", "--name", "Carla",
                 "--email", MAILBOX, "--booking-link", str(link_id), "--conflict-link",
                 str(link_id), "--settings", '{"min_notice_minutes": 0, "horizon_days": 60}'],
                ["add", "dirk", "--pbx", "main", "--extension", "103", "--name", "Dirk",
                 "--booking-link", str(link_id), "--conflict-link", str(link_id), "--settings",
                 json.dumps({"min_notice_minutes": 0, "horizon_days": 60,
                             "timezone": "Europe/Amsterdam", "hours": {"fri": ["10:00-12:00"]}})],
            ):  # fmt: skip
                done = cli(daemon, "agents", *args)
                assert done.returncode == 0, done.stderr
            done = cli(daemon, "admin-token", "create", "--name", "ops")
            assert done.returncode == 0, done.stderr
            yield Service(daemon, graph, done.stdout.strip(), link_id, monday)
        finally:
            daemon.terminate()


def api(svc: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {svc.token}"}
    return httpx.request(method, f"http://{svc.daemon.listen}/api/v1{path}", headers=headers,
                         timeout=30, **kwargs)  # fmt: skip


def starts_by_day(answer: httpx.Response, zone: ZoneInfo) -> dict[date, list[str]]:
    assert answer.status_code == 200, answer.text
    days: dict[date, list[str]] = {}
    for slot in answer.json()["slots"]:
        start = datetime.fromisoformat(slot["start"]).astimezone(zone)
        days.setdefault(start.date(), []).append(f"{start:%H:%M}")
    return days


def test_outlook_working_hours_and_zone_are_the_agents_defaults(service: Service) -> None:
    monday = service.monday
    answer = api(service, "GET", "/agents/carla/availability", params={
        "from": monday.isoformat(), "to": (monday + timedelta(days=6)).isoformat(),
        "duration": "30"})  # fmt: skip
    assert answer.json()["timezone"] == "America/Los_Angeles"
    days = starts_by_day(answer, LA)
    day = ["08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "11:30", "12:00", "12:30",
           "14:00", "14:30", "15:00", "15:30"]  # the default lunch break stays  # fmt: skip
    expected = {monday + timedelta(days=n): day for n in range(4)}  # Monday to Thursday
    expected[monday] = [t for t in day if t not in ("10:00", "10:30")]  # the supplier call
    assert days == expected
    shown = api(service, "GET", "/agents/carla").json()["settings"]
    assert shown["timezone"] == "America/Los_Angeles"
    assert shown["hours"]["mon"] == ["08:30-16:00"] and shown["hours"]["fri"] == []


def test_an_agents_own_hours_and_zone_win_over_outlooks(service: Service) -> None:
    friday = service.monday + timedelta(days=4)
    answer = api(service, "GET", "/agents/dirk/availability", params={
        "from": service.monday.isoformat(), "to": (friday + timedelta(days=2)).isoformat(),
        "duration": "30"})  # fmt: skip
    assert answer.json()["timezone"] == "Europe/Amsterdam"
    assert starts_by_day(answer, AMS) == {friday: ["10:00", "10:30", "11:00", "11:30"]}

