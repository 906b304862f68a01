"""A Microsoft 365 mailbox (the protocol-level Graph fake on TLS loopback, driven by the
real MSAL and pbxcal's Graph client) linked from the CLI drives a forwarding on the
sandboxed Asterisk through ``pbxcal run`` (issue #10): with an app registration
(app-only), and with a user's own grant (delegated, ``links authorize microsoft``).

The client secret goes in on standard input and is stored encrypted; a wrong secret is
refused when the link is added; an edit in the mailbox reaches Asterisk at the next poll.
A delegated grant's refresh token rotates on every refresh (as Entra ID's may): the
daemon stores the new one, so the link still works after a restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    PBXCAL,
    DaemonRun,
    forwarding,
    new_key_file,
    wait_for,
    wait_forwarding,
)

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


PUBLIC_CLIENT = "cli-app-1"


def sign_in(graph: FakeGraph, output: Path) -> None:
    """``pbxcal links authorize microsoft``, the test being the user's browser."""
    proc = subprocess.Popen(
        [str(PBXCAL), "links", "authorize", "microsoft", "--client-id", PUBLIC_CLIENT,
         "--tenant", TENANT, "--output", str(output), "--timeout", "30",
         "--authority-host", graph.authority_host, "--ca-file", graph.ca_file],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    url = next(line.strip() for line in proc.stderr if line.strip().startswith("https://"))
    assert graph.sign_in(url, MAILBOX) == 200
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err


def refresh_token(cache_text: str) -> str:
    [token] = [e["secret"] for e in json.loads(cache_text)["RefreshToken"].values()]
    return str(token)


def stored_refresh_token(daemon: DaemonRun, keys: Path, link_id: int) -> str | None:
    """The refresh token in the link's stored (encrypted) token cache."""
    from pbxcal.store import Store, load_key_ring

    with Store.open(daemon.store, keys=load_key_ring(str(keys), None)) as store:
        value = store.load_secret(link_id, "graph-token-cache")
    return None if value is None else refresh_token(value.decode())


def test_a_delegated_grant_keeps_working_across_rotation_and_restart(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, graph: FakeGraph
) -> None:
    graph.add_public_client(PUBLIC_CLIENT)
    keys = new_key_file(tmp_path)
    daemon = DaemonRun(tmp_path, ast, [], key_file=keys)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    grant = tmp_path / "anna.grant.json"
    sign_in(graph, grant)
    first_token = refresh_token(json.loads(grant.read_text())["token_cache"])
    added = subprocess.run(
        [*daemon.command("links", "add", "--provider", "graph", "--grant-file", str(grant),
                         "--graph-url", graph.graph_url, "--ca-file", graph.ca_file,
                         "--extension", "100", "--json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    link = int(json.loads(added.stdout)["added"])
    assert first_token.encode() not in Path(daemon.store.removeprefix("sqlite:///")).read_bytes()

    now = datetime.now(UTC)
    graph.put_event(MAILBOX, event("0612345678", now - timedelta(minutes=1),
                                   now + timedelta(minutes=20)))  # fmt: skip
    wait_forwarding(ast, "100", "+31612345678", timeout=15)

    # Every access token is refused from now on: the daemon must refresh, and the fake
    # hands out a new refresh token and forgets the old one.
    graph.expire_access_tokens()
    graph.edit_event(MAILBOX, "ev1", subject="0201234567")
    wait_forwarding(ast, "100", "+31201234567", timeout=15)
    assert not graph.refresh_token_works(PUBLIC_CLIENT, first_token)  # rotation mattered
    rotated, _ = wait_for(
        lambda: stored_refresh_token(daemon, keys, link),
        lambda token: token is not None and token != first_token,
        10, what="the rotated refresh token in the store",
    )  # fmt: skip
    assert rotated is not None and graph.refresh_token_works(PUBLIC_CLIENT, rotated)

    # A new process knows only what was stored; its access token is refused too, so
    # only the stored (rotated) refresh token can bring the next edit in.
    assert daemon.terminate() == 0
    graph.expire_access_tokens()
    graph.edit_event(MAILBOX, "ev1", subject="0301234567")
    daemon.start()
    daemon.wait_ready()
    wait_forwarding(ast, "100", "+31301234567", timeout=15)
    assert [row["status"] for row in daemon.links()] == ["connected"]

    # The user withdrew consent: the link asks to be linked again, and its last known
    # events keep driving the extension.
    graph.revoke_refresh_tokens()
    graph.expire_access_tokens()
    wait_for(daemon.links, lambda rows: rows[0]["status"] == "needs_relink", 15,
             what="needs_relink")  # fmt: skip
    assert forwarding(ast, "100") == "+31301234567"
    daemon.check_alive()
