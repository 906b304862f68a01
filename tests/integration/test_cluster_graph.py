"""Three real ``pbxcal run`` processes on one PostgreSQL share app-only Microsoft 365 links
(the protocol-level Graph fake with change notifications) and one sandboxed Asterisk
(issue #13: provider webhooks are handled wherever they land; a dead owner's
subscriptions are taken over, not made again).

Every process gets the same ``public_url``: ``Balancer``, a tiny HTTP load balancer in
this module that hands each request (Graph's validation handshake included, whose body it
passes back) to one of the live processes at random, or to one chosen process while
``pinned``. ``[sync] interval`` is an hour, so only a notification (or a takeover's first
read) brings an edit in seconds. What Asterisk holds is read through its own CLI, what
Graph holds through the fake, what the store holds through ``Store``; every wait polls a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from cluster_postgres import *  # noqa: F403 - fixtures (cluster_url)
from daemon_helpers import DaemonRun, new_key_file, wait_forwarding
from daemon_helpers import wait_for as poll_until

from pbxcal.calendars.providers import SECRET_GRAPH_CLIENT
from pbxcal.cluster.connection import cluster_conninfo
from pbxcal.cluster.ownership import rendezvous_owner
from pbxcal.cluster.status import read_status
from pbxcal.service.push_keeper import ChannelChanges, StoredPushKeeper
from pbxcal.store import Store, load_key_ring
from pbxcal.store.push_channels import PushChannelRecord
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.graph_fake import TENANT, FakeGraph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = "app-secret-9c1e"
#: the sandbox's endpoints: one mailbox (link) each
EXTENSIONS = ("100", "201", "202", "300")
CLUSTER = "\n[cluster]\nttl = 4\nmargin = 1\nsettle = 1\n"


def mailbox(ext: str) -> str:
    return f"user{ext}@contoso.com"


class Balancer:
    """A load balancer: each POST goes to a random live backend (seeded), or to the
    ``pinned`` one; the backend's status, content type and body are passed back."""

    def __init__(self, seed: int) -> None:
        self.backends: list[str] = []
        self.pinned: str | None = None
        #: (backend, the body's JSON) of every notification passed on (not handshakes)
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, kind, body = balancer.forward(
                    self.path, dict(self.headers.items()), self.rfile.read(length)
                )
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Balancer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self._lock:
            backend = self.pinned or self._rng.choice(self.backends)
            if "validationToken=" not in path:
                self.notifications.append((backend, json.loads(body)))
        sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(
            f"http://{backend}{path}", data=body, headers=sent, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
                return int(reply.status), reply.headers.get_content_type(), reply.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), "text/plain", b""
        except OSError:
            return 502, "text/plain", b""


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        fake.add_app("app-1", SECRET)
        for ext in EXTENSIONS:
            fake.add_mailbox(mailbox(ext))
        yield fake


@pytest.fixture
def balancer() -> Iterator[Balancer]:
    running = Balancer(seed=13).start()
    try:
        yield running
    finally:
        running.stop()


def number(round_: int, index: int) -> str:
    """A Dutch mobile number for this round and link, as typed in a title."""
    return f"06{round_ + 1}{index + 1}345678"


def e164(local: str) -> str:
    return "+31" + local[1:]


def edit_all(graph: FakeGraph, round_: int) -> None:
    now = datetime.now(UTC)
    for index, ext in enumerate(EXTENSIONS):
        graph.put_event(mailbox(ext), {
            "id": f"ev-{ext}", "subject": number(round_, index), "showAs": "busy",
            "start": {"dateTime": (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                      "timeZone": "UTC"},
            "end": {"dateTime": (now + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "timeZone": "UTC"},
        })  # fmt: skip


def wait_round(ast: AsteriskSandbox, round_: int) -> None:
    for index, ext in enumerate(EXTENSIONS):
        wait_forwarding(ast, ext, e164(number(round_, index)), timeout=20)


def stored(url: str) -> list[PushChannelRecord]:
    with Store.open(url) as store:
        return store.push_channels("graph")


def live_members(url: str) -> list[str]:
    return [m.member_id for m in read_status(cluster_conninfo(url)).members if m.live]


def member_of(url: str, run: DaemonRun) -> str:
    assert run.proc is not None
    status = read_status(cluster_conninfo(url))
    return next(m.member_id for m in status.members if m.pid == run.proc.pid and m.live)


def settled(url: str, graph: FakeGraph, links: dict[str, int], members: int) -> bool:
    """One subscription per mailbox at Graph, one row each, every row tended by its
    link's rendezvous owner among ``members`` live members."""
    live = live_members(url)
    if len(live) != members:
        return False
    rows = stored(url)
    at_graph = graph.subscriptions()
    return (
        len(rows) == len(EXTENSIONS)
        and {r.channel_id for r in rows} == set(at_graph)
        and sorted(at_graph.values()) == sorted(mailbox(ext) for ext in EXTENSIONS)
        and sorted(r.link_id for r in rows) == sorted(links.values())
        and all(r.owner == rendezvous_owner(str(r.link_id), live) for r in rows)
        and all(r.resource_id and r.expires_at is not None for r in rows)
    )


def calls(graph: FakeGraph, kind: str, since: int = 0) -> Counter[str]:
    """Subscription calls of ``kind`` by subscription id (``create``: by mailbox)."""
    log = graph.subscription_log[since:]
    return Counter(mbox if kind == "create" else sid for what, sid, mbox in log if what == kind)


def start_group(
    tmp_path: Path, ast: AsteriskSandbox, daemons: list[DaemonRun], graph: FakeGraph,
    url: str, balancer: Balancer,
) -> tuple[list[DaemonRun], dict[str, int], Path]:
    """Three processes sharing one app-only Graph link per extension: the first alone
    until it subscribed every mailbox, then two more. Returns runs, link ids, key file."""
    keys = new_key_file(tmp_path)
    runs = []
    for i in (1, 2, 3):
        (tmp_path / f"p{i}").mkdir()
        runs.append(DaemonRun(
            tmp_path / f"p{i}", ast, [], store=url, interval=3600, key_file=keys,
            extra_config=CLUSTER, http_extra=f'public_url = "{balancer.url}"',
        ))  # fmt: skip
    links: dict[str, int] = {}
    settings = {"tenant": TENANT, "client_id": "app-1", "authority_host": graph.authority_host,
                "graph_url": graph.graph_url, "ca_file": graph.ca_file}  # fmt: skip
    with Store.open(url, keys=load_key_ring(str(keys), None)) as store:
        for ext in EXTENSIONS:
            link = store.add_link(ext, "main", "graph", mailbox(ext), settings)
            store.save_secret(link.id, SECRET_GRAPH_CLIENT, SECRET)
            links[ext] = link.id
    first = runs[0]
    balancer.backends = [first.listen]
    daemons.append(first)
    first.start()
    first.wait_ready()
    poll_until(lambda: settled(url, graph, links, 1), bool, 40, 0.2,
             "the first process subscribed every mailbox")  # fmt: skip
    for run in runs[1:]:
        daemons.append(run)
        run.start()
    for run in runs[1:]:
        run.wait_ready()
    balancer.backends = [run.listen for run in runs]
    poll_until(lambda: settled(url, graph, links, 3), bool, 40, 0.2,
             "every subscription tended by its link's owner among three")  # fmt: skip
    return runs, links, keys


def test_graph_subscriptions_are_made_once_handled_anywhere_and_taken_over(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, graph: FakeGraph,
    cluster_url: str, balancer: Balancer,
) -> None:
    url = cluster_url
    runs, links, keys = start_group(tmp_path, ast, daemons, graph, url, balancer)
    # made once per mailbox, by the first owner; the joiners took theirs over by renewal
    assert calls(graph, "create") == Counter(mailbox(ext) for ext in EXTENSIONS)
    assert not calls(graph, "delete")
    ids = set(graph.subscriptions())

    for round_ in range(3):  # every mailbox edited per round; notifications land anywhere
        edit_all(graph, round_)
        wait_round(ast, round_)
    owners = {r.channel_id: r.owner for r in stored(url)}
    members = {run.listen: member_of(url, run) for run in runs}
    landed = [
        (backend, str(item["subscriptionId"]))
        for backend, body in balancer.notifications
        for item in body["value"]
    ]
    elsewhere = [(b, s) for b, s in landed if owners[s] != members[b]]
    assert elsewhere, "no notification reached a process that does not tend its subscription"
    for run in runs:  # each accepted exactly what reached it, refused nothing
        reached = sum(1 for backend, _ in landed if backend == run.listen)
        assert reached >= 1
        assert run.metric("pbxcal_webhook_notifications_total", provider="graph") == reached
        assert run.metric("pbxcal_webhook_refused_total", provider="graph",
                          reason="wrong clientState") == 0  # fmt: skip
        assert run.metric("pbxcal_webhook_refused_total", provider="graph",
                          reason="unknown subscription") == 0  # fmt: skip
        run.check_alive()
    with Store.open(url, keys=load_key_ring(str(keys), None)) as store:
        for index, ext in enumerate(EXTENSIONS):  # one event per mailbox: nothing doubled
            events, _ = store.load_events(links[ext])
            assert [e.uid for e in events] == [f"ev-{ext}"], ext
            assert f"SUMMARY:{number(2, index)}" in events[0].ical, ext

    # a lifecycle event reaching a process that does not tend the subscription is passed
    # on through the store (the row marked due); that write's NOTIFY has the owner renew
    # it within seconds, not at its next own look (BACKSTOP_SECONDS away)
    sid, owner = sorted(owners.items())[0]
    other = next(run for run in runs if members[run.listen] != owner)
    mark = len(graph.subscription_log)
    balancer.pinned = other.listen
    graph.send_lifecycle(sid, "reauthorizationRequired")
    poll_until(lambda: calls(graph, "renew", mark)[sid], lambda n: n >= 1, 10, 0.1,
               "the owner renews after a lifecycle event that reached another process")
    balancer.pinned = None
    assert balancer.notifications[-1][0] == other.listen
    assert not calls(graph, "create", mark)
    assert {r.channel_id: r.owner for r in stored(url)}[sid] == owner

    # kill -9 of the process tending most subscriptions: the survivors take them over
    # (the same subscriptions, renewed under their new owner; none made or deleted)
    tended = Counter(owners.values())
    victim_id = tended.most_common(1)[0][0]
    victim = next(run for run in runs if members[run.listen] == victim_id)
    survivors = [run for run in runs if run is not victim]
    victims_subscriptions = {sid for sid, owner in owners.items() if owner == victim_id}
    log_at_kill = len(graph.subscription_log)
    victim.kill9()
    balancer.backends = [run.listen for run in survivors]  # its health check drops it
    poll_until(lambda: settled(url, graph, links, 2), bool, 40, 0.2,
             "the survivors tend every subscription")  # fmt: skip
    assert set(graph.subscriptions()) == ids  # the same subscriptions: none made again
    assert not calls(graph, "create", log_at_kill)
    assert not calls(graph, "delete", log_at_kill)
    assert victims_subscriptions <= set(calls(graph, "renew", log_at_kill))
    new_owners = {r.channel_id: r.owner for r in stored(url)}
    survivor_ids = {member_of(url, run) for run in survivors}
    assert {new_owners[s] for s in victims_subscriptions} <= survivor_ids

    # an edit after the takeover reaches Asterisk (through a notification: the poll is
    # an hour away), handled by whichever survivor it reaches
    notified = len(balancer.notifications)
    edit_all(graph, 3)
    wait_round(ast, 3)
    assert len(balancer.notifications) >= notified + len(EXTENSIONS)
    for run in survivors:
        run.check_alive()


class Heard:
    """What ``ChannelChanges`` tells a Graph keeper."""

    provider = "graph"

    def __init__(self) -> None:
        self.links: asyncio.Queue[int] = asyncio.Queue()
        self.resyncs = 0

    def channels_changed(self, link_id: int) -> None:
        self.links.put_nowait(link_id)

    def resync(self) -> None:
        self.resyncs += 1


async def test_every_write_of_a_channel_row_is_heard_by_the_listening_keepers(
    cluster_url: str,
) -> None:
    """Save, expire and delete of a row each NOTIFY ``pbxcal_push`` at commit; the
    listener hands the link to the keeper of that provider (not Google's rows to Graph's
    keeper), and asks for a full re-read once LISTEN is in place."""
    heard = Heard()
    changes = ChannelChanges(cluster_conninfo(cluster_url), [cast(StoredPushKeeper, heard)])
    listening = asyncio.create_task(changes.run())
    with Store.open(cluster_url) as store:
        try:
            await asyncio.wait_for(changes.listening.wait(), 10)
            assert heard.resyncs == 1
            a = store.add_link("100", "main", "graph", mailbox("100"), {}).id
            b = store.add_link("201", "main", "graph", mailbox("201"), {}).id
            record = PushChannelRecord("graph", "sub-a", a, b"d" * 32, "users/a/events",
                                       datetime.now(UTC) + timedelta(days=2), "member-1")
            google = PushChannelRecord("google", "ch-b", b, b"d" * 32, "", None, "member-1")
            writes = [
                lambda: store.save_push_channel(google),  # not Graph's: not heard
                lambda: store.save_push_channel(record),
                lambda: store.expire_push_channel("graph", "sub-a"),
                lambda: store.delete_push_channel("graph", "sub-a"),
                lambda: store.delete_push_channel("graph", "sub-a"),  # no row: no notice
                lambda: store.save_push_channel(
                    PushChannelRecord("graph", "sub-b", b, b"d" * 32, "", None, "m")
                ),
            ]
            for write in writes:
                await asyncio.to_thread(write)
            got = [await asyncio.wait_for(heard.links.get(), 10) for _ in range(4)]
            assert got == [a, a, a, b] and heard.links.empty()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
