"""A Microsoft 365 mailbox (the protocol-level Graph fake on TLS loopback, driven by the
real MSAL and pbxcal's Graph client) linked from the CLI with an app registration drives
a forwarding on the sandboxed Asterisk through ``pbxcal run`` (issue #10, app-only).

The client secret goes in on standard input and is stored encrypted; a wrong secret is
refused when the link is added; an edit in the mailbox reaches Asterisk at the next poll.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import PBXCAL, DaemonRun, new_key_file, wait_for, wait_forwarding

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.graph_fake import TENANT, FakeGraph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "app-secret-9c1e"
MAILBOX = "anna@contoso.com"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        fake.add_app("app-1", SECRET)
        fake.add_mailbox(MAILBOX)
        yield fake


def event(title: str, start: datetime, end: datetime) -> dict[str, object]:
    return {
        "id": "ev1", "subject": title, "showAs": "busy",
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
    }  # fmt: skip


def test_a_microsoft_365_mailbox_drives_a_forwarding(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, graph: FakeGraph
) -> None:
    keys = new_key_file(tmp_path)
    daemon = DaemonRun(tmp_path, ast, [], key_file=keys)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()

    def add(secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PBXCAL), "links", "add", "--provider", "graph", "--source", MAILBOX,
             "--tenant", TENANT, "--client-id", "app-1", "--client-secret-file", "-",
             "--authority-host", graph.authority_host, "--graph-url", graph.graph_url,
             "--ca-file", graph.ca_file, "--extension", "100", "--json",
             "--config", str(daemon.config), "--store", daemon.store],
            input=secret + "\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    wrong = add("not-the-secret")
    assert wrong.returncode == 2 and "not-the-secret" not in wrong.stderr, wrong.stderr
    added = add(SECRET)
    assert added.returncode == 0, added.stderr
    assert SECRET.encode() not in Path(daemon.store.removeprefix("sqlite:///")).read_bytes()

    now = datetime.now(UTC)
    graph.put_event(MAILBOX, event("0612345678", now - timedelta(minutes=1),
                                   now + timedelta(minutes=20)))  # fmt: skip
    put_at = time.monotonic()
    wait_forwarding(ast, "100", "+31612345678", timeout=15)
    print(f"forwarding on {time.monotonic() - put_at:.2f}s after the edit (poll every 1 s)")
    graph.cancel_event(MAILBOX, "ev1")
    wait_forwarding(ast, "100", None, timeout=10)
    link = json.loads(added.stdout)["added"]
    shown = subprocess.run(
        [str(PBXCAL), "links", "show", str(link), "--json", "--config", str(daemon.config),
         "--store", daemon.store], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(shown.stdout)["status"] == "connected"
    daemon.check_alive()


def test_graph_change_notifications_bring_an_edit_at_once(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, graph: FakeGraph
) -> None:
    """With ``[http] public_url`` a Microsoft 365 link gets a subscription (Graph's
    validation handshake answered by the daemon); with a one-hour poll only a
    notification can bring the edit in seconds; a forged one is refused and counted; a
    removed subscription is made again."""
    import urllib.request

    daemon = DaemonRun(tmp_path, ast, [], interval=3600, key_file=new_key_file(tmp_path))
    public = f"http://{daemon.listen}"
    listen = f'listen = "{daemon.listen}"\n'
    daemon.config.write_text(
        daemon.config.read_text().replace(listen, f'{listen}public_url = "{public}"\n')
    )
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    added = subprocess.run(
        [str(PBXCAL), "links", "add", "--provider", "graph", "--source", MAILBOX,
         "--tenant", TENANT, "--client-id", "app-1", "--client-secret-file", "-",
         "--authority-host", graph.authority_host, "--graph-url", graph.graph_url,
         "--ca-file", graph.ca_file, "--extension", "100",
         "--config", str(daemon.config), "--store", daemon.store],
        input=SECRET + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    wait_for(graph.subscription_ids, lambda ids: len(ids) == 1, 20, what="a subscription")
    # the daemon knows it once Graph's answer arrived (a notification before that would
    # be refused as unknown and left to polling)
    wait_for(daemon.log, lambda log: "Graph change notifications on" in log, 10, what="on")

    now = datetime.now(UTC)
    graph.put_event(MAILBOX, event("0612345678", now - timedelta(minutes=1),
                                   now + timedelta(minutes=20)))  # fmt: skip
    put_at = time.monotonic()
    wait_forwarding(ast, "100", "+31612345678", timeout=10)
    print(f"forwarding on {time.monotonic() - put_at:.2f}s after the edit (notification)")

    forged = json.dumps({"value": [{"subscriptionId": graph.subscription_ids()[0],
                                    "clientState": "guessed", "changeType": "updated"}]})
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{public}/webhooks/graph", data=forged.encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - loopback
        assert reply.status == 202  # answered at once, whatever it was
    assert daemon.metric(
        "pbxcal_webhook_refused_total", provider="graph", reason="wrong clientState"
    ) == 1

    first = graph.subscription_ids()[0]
    graph.send_lifecycle(first, "subscriptionRemoved")  # Graph dropped it: make a new one
    wait_for(
        graph.subscription_ids, lambda ids: len(ids) == 1 and ids[0] != first, 20,
        what="a new subscription after subscriptionRemoved",
    )  # fmt: skip
    daemon.check_alive()
