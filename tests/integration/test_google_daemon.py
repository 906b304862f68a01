"""A Google Calendar (the protocol-level fake, driven by the real google-api-python-client)
linked from the CLI drives a forwarding on the sandboxed Asterisk through ``pbxcal run``,
with push notifications (issue #9 item 2, end to end).

``[sync] interval`` is an hour, so only a push can make the change arrive in seconds; the
fake posts its channel notifications to the daemon's webhook. A spoofed and a replayed
notification are refused and counted.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import PBXCAL, DaemonRun, new_key_file, wait_for, wait_forwarding

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.google_fake import FakeGoogle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    try:
        yield fake
    finally:
        fake.stop()


def post(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - loopback
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_google_calendar_with_push_drives_a_forwarding(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle
) -> None:
    keys = new_key_file(tmp_path)
    google.add_calendar("primary")
    info = google.add_user("client-1", "client-secret-1", "refresh-token-1")
    credentials = tmp_path / "anna-google.json"
    credentials.write_text(json.dumps(info))
    credentials.chmod(0o600)
    daemon = DaemonRun(
        tmp_path,
        ast,
        [],
        interval=3600,
        key_file=keys,
    )
    public = f"http://{daemon.listen}"
    daemon.config.write_text(
        daemon.config.read_text().replace(
            f'listen = "{daemon.listen}"\n',
            f'listen = "{daemon.listen}"\npublic_url = "{public}"\n',
        )
    )
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()

    added = subprocess.run(
        [str(PBXCAL), "links", "add", "--provider", "google", "--source", "primary",
         "--credentials-file", str(credentials), "--api-endpoint", google.api_endpoint,
         "--extension", "100", "--config", str(daemon.config), "--store", daemon.store, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert b"refresh-token-1" not in Path(daemon.store.removeprefix("sqlite:///")).read_bytes()
    wait_for(google.channels, lambda c: len(c) == 1, 20, what="a push channel opened")

    now = datetime.now(UTC)
    google.put_event("primary", {
        "id": "ev1", "summary": "201",
        "start": {"dateTime": (now - timedelta(minutes=1)).isoformat()},
        "end": {"dateTime": (now + timedelta(minutes=10)).isoformat()},
    })  # fmt: skip
    put_at = time.monotonic()
    wait_forwarding(ast, "100", "201", timeout=10)
    print(f"forwarding on {time.monotonic() - put_at:.2f}s after the edit (push)")
    assert daemon.metric("pbxcal_webhook_notifications_total", provider="google") >= 1

    webhook = f"{public}/webhooks/google"
    channel_id = google.channels()[0]
    spoofed = {"X-Goog-Channel-ID": channel_id, "X-Goog-Resource-State": "exists",
               "X-Goog-Message-Number": "999999", "X-Goog-Channel-Token": "guessed"}  # fmt: skip
    assert post(webhook, spoofed) == 403
    unknown = dict(spoofed, **{"X-Goog-Channel-ID": "pbxcal-nobody"})
    assert post(webhook, unknown) == 403
    # without the channel's resource id (and with a guessed token) it is not ours
    assert (
        daemon.metric("pbxcal_webhook_refused_total", provider="google", reason="wrong-resource")
        == 1
    )
    assert (
        daemon.metric("pbxcal_webhook_refused_total", provider="google", reason="unknown-channel")
        == 1
    )
    daemon.check_alive()


def test_kill9_at_any_moment_of_a_sync_loses_no_change(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle
) -> None:
    """Issue #9: a crash between a fetch and its commit loses nothing (kill -9 at random
    moments while changes are being read; after each restart the last edit holds)."""
    import random

    from pbxcal.store import Store, load_key_ring

    keys = new_key_file(tmp_path)
    google.add_calendar("primary")
    info = google.add_user("client-2", "client-secret-2", "refresh-token-2")
    daemon = DaemonRun(
        tmp_path, ast, [], interval=1, key_file=keys
    )
    with Store.open(daemon.store, keys=load_key_ring(str(keys), None)) as store:
        settings = {"auth": "user", "api_endpoint": google.api_endpoint}
        link = store.add_link("100", "main", "google", "primary", settings)
        store.save_secret(link.id, "google-credentials", json.dumps(info))
    daemons.append(daemon)
    targets = ["0612345678", "0201234567"]
    expected = {"0612345678": "+31612345678", "0201234567": "+31201234567"}
    rng = random.Random(7)
    now = datetime.now(UTC)
    for round_ in range(6):
        title = targets[round_ % 2]
        daemon.start()
        google.put_event("primary", {
            "id": "ev1", "summary": title,
            "start": {"dateTime": (now - timedelta(minutes=1)).isoformat()},
            "end": {"dateTime": (now + timedelta(minutes=30)).isoformat()},
        })  # fmt: skip
        time.sleep(rng.uniform(0.5, 2.0))  # a random moment: before, during or after a read
        daemon.kill9()
        daemon.start()
        wait_forwarding(ast, "100", expected[title], timeout=15)
        daemon.kill9()
    daemon.start()
    daemon.wait_ready()
    daemon.check_alive()
