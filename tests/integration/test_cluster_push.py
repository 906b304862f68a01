"""Two real ``pbxcal run`` processes on one PostgreSQL behind one "load balancer", with
Google push (the protocol-level fake) and one sandboxed Asterisk (issue #13: provider
webhooks are handled wherever they land).

Both processes get the same ``public_url``: a tiny HTTP forwarder in this module that
hands every notification to one of the two webhooks at random and records which. So a
channel opened by one process is notified, about half the time, at the other one, which
must check it against the store and read the link itself. ``[sync] interval`` is an hour:
only a push makes an edit arrive in seconds. What Asterisk holds is read through its own
CLI; what the store holds through ``Store``.
"""

from __future__ import annotations

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

import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for, wait_forwarding
from postgres import PostgresUnavailable, running_postgres

from pbxcal.cluster.connection import cluster_conninfo
from pbxcal.cluster.ownership import rendezvous_owner
from pbxcal.cluster.status import read_status
from pbxcal.store import Store, load_key_ring
from pbxcal.store.push_channels import PushChannelRecord
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.google_fake import FakeGoogle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: the sandbox's endpoints: one Google calendar (link) each
EXTENSIONS = ("100", "201", "202", "300")
CLUSTER = "\n[cluster]\nttl = 4\nmargin = 1\nsettle = 1\n"


class Forwarder:
    """A load balancer for webhooks: each POST goes to a random backend (seeded)."""

    def __init__(self, seed: int) -> None:
        self.backends: list[str] = []
        self.hits: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        forwarder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = forwarder.forward(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            backend = self._rng.choice(self.backends)
            self.hits[backend] += 1
        return post(f"http://{backend}{path}", headers, body)


def post(url: str, headers: dict[str, str], body: bytes = b"") -> int:
    sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 502


def number(round_: int, index: int) -> str:
    """A Dutch mobile number for this round and link, as typed in a title."""
    return f"06{round_ + 1}{index + 1}345678"


def e164(local: str) -> str:
    return "+31" + local[1:]


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    try:
        (tmp_path / "pg").mkdir()
        pg = running_postgres(tmp_path / "pg")
        url = pg.__enter__()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield url
    finally:
        pg.__exit__(None, None, None)


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    balancer = Forwarder(seed=13).start()
    try:
        yield balancer
    finally:
        balancer.stop()


def start_group(
    tmp_path: Path, ast: AsteriskSandbox, daemons: list[DaemonRun], google: FakeGoogle,
    url: str, balancer: Forwarder,
) -> tuple[list[DaemonRun], dict[str, int], Path]:
    """Two processes, one Google link per extension; returns the runs, the link ids by
    extension and the key file."""
    keys = new_key_file(tmp_path)
    for i in (1, 2):
        (tmp_path / f"p{i}").mkdir()
    info = google.add_user("client-c", "client-secret-c", "refresh-token-c")
    runs = [
        DaemonRun(
            tmp_path / f"p{i}", ast, [], store=url, interval=3600, key_file=keys,
            extra_config=CLUSTER, http_extra=f'public_url = "{balancer.url}"',
        )
        for i in (1, 2)
    ]
    links: dict[str, int] = {}
    with Store.open(url, keys=load_key_ring(str(keys), None)) as store:
        for ext in EXTENSIONS:
            google.add_calendar(f"cal-{ext}")
            settings = {"auth": "user", "api_endpoint": google.api_endpoint}
            link = store.add_link(ext, "main", "google", f"cal-{ext}", settings)
            store.save_secret(link.id, "google-credentials", json.dumps(info))
            links[ext] = link.id
    balancer.backends = [run.listen for run in runs]
    for run in runs:
        daemons.append(run)
        run.start()
        run.wait_ready()
    return runs, links, keys


def stored_channels(url: str) -> list[PushChannelRecord]:
    with Store.open(url) as store:
        return store.push_channels("google")


def settled_channels(url: str, google: FakeGoogle, members: int) -> bool:
    """One live channel per link at Google, one row each, every row tended by the link's
    rendezvous owner among ``members`` live members."""
    live = [m.member_id for m in read_status(cluster_conninfo(url)).members if m.live]
    if len(live) != members:
        return False
    rows = stored_channels(url)
    return (
        len(rows) == len(EXTENSIONS)
        and sorted(r.channel_id for r in rows) == google.channels()
        and len({r.link_id for r in rows}) == len(EXTENSIONS)
        and all(r.owner == rendezvous_owner(str(r.link_id), live) for r in rows)
        and all(r.resource_id for r in rows)
    )


def edit_all(google: FakeGoogle, round_: int, now: datetime) -> None:
    for index, ext in enumerate(EXTENSIONS):
        google.put_event(f"cal-{ext}", {
            "id": f"ev-{ext}", "summary": number(round_, index),
            "start": {"dateTime": (now - timedelta(minutes=1)).isoformat()},
            "end": {"dateTime": (now + timedelta(minutes=30)).isoformat()},
        })  # fmt: skip


def wait_round(ast: AsteriskSandbox, round_: int) -> None:
    for index, ext in enumerate(EXTENSIONS):
        wait_forwarding(ast, ext, e164(number(round_, index)), timeout=20)


def test_notifications_reaching_either_process_lose_and_double_nothing(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle,
    postgres_url: str, forwarder: Forwarder,
) -> None:
    runs, links, keys = start_group(tmp_path, ast, daemons, google, postgres_url, forwarder)
    wait_for(lambda: settled_channels(postgres_url, google, 2), bool, 30, 0.2,
             "a channel per link, tended by its rendezvous owner")  # fmt: skip

    now = datetime.now(UTC)
    for round_ in range(4):  # an edit of every calendar per round, both webhooks busy
        edit_all(google, round_, now)
        wait_round(ast, round_)
    for run in runs:  # each webhook handled notifications of channels it did not open
        assert run.metric("pbxcal_webhook_notifications_total", provider="google") >= 1
        run.check_alive()
    assert min(forwarder.hits.values()) >= 1 and len(forwarder.hits) == 2

    with Store.open(postgres_url, keys=load_key_ring(str(keys), None)) as store:
        for index, ext in enumerate(EXTENSIONS):  # one event per calendar: nothing doubled
            events, _ = store.load_events(links[ext])
            assert [e.uid for e in events] == [f"ev-{ext}"], ext
            assert f"SUMMARY:{number(3, index)}" in events[0].ical, ext
    for index, ext in enumerate(EXTENSIONS):  # and nothing lost: the last edit holds
        wait_forwarding(ast, ext, e164(number(3, index)), timeout=5)

    # a forged notification is refused by both processes: a real channel id with a
    # guessed token, and a channel nobody opened
    channel = stored_channels(postgres_url)[0]
    forged = {"X-Goog-Channel-ID": channel.channel_id, "X-Goog-Resource-ID": channel.resource_id,
              "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "999999",
              "X-Goog-Channel-Token": "guessed"}  # fmt: skip
    unknown = dict(forged, **{"X-Goog-Channel-ID": "pbxcal-nobody"})
    for run in runs:
        assert post(f"http://{run.listen}/webhooks/google", forged) == 403
        assert post(f"http://{run.listen}/webhooks/google", unknown) == 403
        assert run.metric("pbxcal_webhook_refused_total", provider="google",
                          reason="bad-token") == 1  # fmt: skip
        assert run.metric("pbxcal_webhook_refused_total", provider="google",
                          reason="unknown-channel") == 1  # fmt: skip

    # a genuine notification replayed to each process is refused by both: the message
    # number was taken in the store by whichever process got it first
    last = google.deliveries[-1]
    for run in runs:
        before = run.metric("pbxcal_webhook_refused_total", provider="google", reason="replayed")
        assert post(f"http://{run.listen}/webhooks/google", last.headers) == 200
        after = run.metric("pbxcal_webhook_refused_total", provider="google", reason="replayed")
        assert after == before + 1


def test_the_links_next_owner_takes_the_channels_over(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle,
    postgres_url: str, forwarder: Forwarder,
) -> None:
    runs, _, _ = start_group(tmp_path, ast, daemons, google, postgres_url, forwarder)
    wait_for(lambda: settled_channels(postgres_url, google, 2), bool, 30, 0.2,
             "a channel per link, tended by its rendezvous owner")  # fmt: skip
    status = read_status(cluster_conninfo(postgres_url))
    owners = Counter(r.owner for r in stored_channels(postgres_url))
    victim_id = owners.most_common(1)[0][0]
    victim_pid = next(m.pid for m in status.members if m.member_id == victim_id)
    victim = next(r for r in runs if r.proc is not None and r.proc.pid == victim_pid)
    survivor = next(r for r in runs if r is not victim)
    before = set(google.channels())

    victim.kill9()
    forwarder.backends = [survivor.listen]  # the balancer's health check drops it
    wait_for(lambda: settled_channels(postgres_url, google, 1), bool, 40, 0.2,
             "the survivor tends every channel")  # fmt: skip
    taken = {r.channel_id for r in stored_channels(postgres_url)}
    assert len(before - taken) == owners[victim_id]  # the dead owner's were replaced
    assert not (before - taken) & set(google.channels())  # and stopped at Google

    edit_all(google, 0, datetime.now(UTC))
    wait_round(ast, 0)
    survivor.check_alive()
