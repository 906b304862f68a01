"""An on-premises Exchange mailbox (the EWS SOAP fake on loopback, driven by the real
exchangelib) linked from the CLI drives a forwarding on the sandboxed Asterisk through
``pbxcal run`` (issue #10, EWS with a service account impersonating the mailbox).

The password goes in on standard input and is stored encrypted; a wrong password is
refused when the link is added; a new appointment reaches Asterisk at the next poll.
With a one-hour poll interval, an edit reaches Asterisk within seconds through an EWS
streaming notification (the daemon's ``EwsPush``; the fake's GetStreamingEvents). An
OAuth link (client credentials from the fake's token endpoint over TLS) and an
autodiscover link (the EWS URL found through a loopback DNS server's SRV record, the fake
on 127.0.0.1:443 — see tests/unit/test_ews_autodiscover.py) are added from the CLI, a
wrong client secret or password refused there in one line, and drive forwardings too.
"""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import PBXCAL, DaemonRun, ics_time, new_key_file, wait_forwarding

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.ews_fake import FakeEws

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SERVICE = "svc-pbxcal"
PASSWORD = "ews-pw-41d8"
MAILBOX = "anna@example.org"


@pytest.fixture
def exchange() -> Iterator[FakeEws]:
    with FakeEws() as server:
        server.add_user(SERVICE, PASSWORD)
        server.add_mailbox(MAILBOX)
        server.allow_impersonation(SERVICE)
        yield server


def vcalendar(uid: str, title: str, start: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nPRODID:Microsoft Exchange Server 2010\r\n"
        f"VERSION:2.0\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nSUMMARY;LANGUAGE=en-US:{title}\r\n"
        f"DTSTART:{ics_time(start)}\r\nDTEND:{ics_time(end)}\r\nTRANSP:OPAQUE\r\n"
        f"DTSTAMP:{ics_time(start)}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def test_an_exchange_mailbox_drives_a_forwarding(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, exchange: FakeEws
) -> None:
    keys = new_key_file(tmp_path)
    daemon = DaemonRun(tmp_path, ast, [], key_file=keys)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()

    def add(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PBXCAL), "links", "add", "--provider", "ews", "--source", exchange.url,
             "--mailbox", MAILBOX, "--username", SERVICE, "--auth", "basic",
             "--impersonation", "--password-file", "-", "--extension", "100",
             "--config", str(daemon.config), "--store", daemon.store],
            input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    wrong = add("not-the-password")
    assert wrong.returncode == 2 and "not-the-password" not in wrong.stderr, wrong.stderr
    added = add(PASSWORD)
    assert added.returncode == 0, added.stderr
    assert PASSWORD.encode() not in Path(daemon.store.removeprefix("sqlite:///")).read_bytes()

    now = datetime.now(UTC)
    exchange.put_item(MAILBOX, "meeting-1", vcalendar(
        "meeting-1", "0612345678", now - timedelta(minutes=1), now + timedelta(minutes=20)
    ))  # fmt: skip
    put_at = time.monotonic()
    wait_forwarding(ast, "100", "+31612345678", timeout=15)
    print(f"forwarding on {time.monotonic() - put_at:.2f}s after the new item (poll every 1 s)")
    daemon.check_alive()


def test_a_streaming_notification_drives_the_forwarding_without_polling(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, exchange: FakeEws
) -> None:
    keys = new_key_file(tmp_path)
    daemon = DaemonRun(tmp_path, ast, [], key_file=keys, interval=3600)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    added = subprocess.run(
        [str(PBXCAL), "links", "add", "--provider", "ews", "--source", exchange.url,
         "--mailbox", MAILBOX, "--username", SERVICE, "--auth", "basic",
         "--impersonation", "--password-file", "-", "--extension", "100",
         "--config", str(daemon.config), "--store", daemon.store],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    exchange.wait_for_stream(1, timeout=30)  # the daemon read the link once and subscribed
    assert "streaming" in exchange.subscriptions().values()

    now = datetime.now(UTC)
    exchange.put_item(MAILBOX, "meeting-2", vcalendar(
        "meeting-2", "0612345678", now - timedelta(minutes=1), now + timedelta(minutes=20)
    ))  # fmt: skip
    put_at = time.monotonic()
    wait_forwarding(ast, "100", "+31612345678", timeout=10)
    took = time.monotonic() - put_at
    print(f"forwarding on {took:.2f}s after the edit, through a streaming notification")
    assert daemon.metric("pbxcal_webhook_notifications_total", provider="ews") >= 1
    exchange.delete_item(MAILBOX, "meeting-2")
    wait_forwarding(ast, "100", None, timeout=10)
    daemon.check_alive()


def _add(daemon: DaemonRun, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PBXCAL), "links", "add", "--provider", "ews", *args,
         "--config", str(daemon.config), "--store", daemon.store],
        input=secret + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_an_oauth_link_from_the_cli_drives_a_forwarding_through_push(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    with FakeEws(tls=True) as server:
        server.add_app("contoso.example", "app-7", "client-secret-9")
        server.add_mailbox(MAILBOX)
        server.allow_impersonation("app-7")
        daemon = DaemonRun(tmp_path, ast, [], key_file=new_key_file(tmp_path), interval=3600)
        daemons.append(daemon)
        daemon.start()
        daemon.wait_ready()
        args = ["--source", server.url, "--mailbox", MAILBOX, "--auth", "oauth",
                "--tenant", "contoso.example", "--client-id", "app-7", "--impersonation",
                "--authority-host", server.origin, "--ca-bundle", server.ca_file,
                "--client-secret-file", "-", "--extension", "100"]  # fmt: skip
        wrong = _add(daemon, "not-the-secret", *args)
        assert wrong.returncode == 2, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1 and "invalid_client" in wrong.stderr
        assert "not-the-secret" not in wrong.stderr
        added = _add(daemon, "client-secret-9", *args)
        assert added.returncode == 0, added.stderr
        server.wait_for_stream(1, timeout=30)
        now = datetime.now(UTC)
        server.put_item(MAILBOX, "oauth-1", vcalendar(
            "oauth-1", "0612345678", now - timedelta(minutes=1), now + timedelta(minutes=20)
        ))  # fmt: skip
        wait_forwarding(ast, "100", "+31612345678", timeout=10)
        assert {r.user for r in server.requests} == {"app-7"}
        daemon.check_alive()


def test_an_autodiscover_link_from_the_cli_drives_a_forwarding(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path
) -> None:
    from pbxcal.testing.ews_fake.dns import FakeDns

    deadline = time.monotonic() + 60
    while True:  # exchangelib follows SRV targets on port 443 only
        try:
            server = FakeEws(tls=True, port=443, hostnames=("localhost",)).start()
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                pytest.fail(f"127.0.0.1:443 is not free for the autodiscover fake: {exc}")
        time.sleep(0.2)  # another test run holds the port: wait for it, not for our work
    try:
        with FakeDns() as dns:
            dns.add("_autodiscover._tcp.example.org", "SRV", "0 0 443 localhost.")
            dns.add("localhost", "A", "127.0.0.1")
            server.add_user(MAILBOX, PASSWORD)
            server.autodiscover_url = "https://localhost/EWS/Exchange.asmx"
            daemon = DaemonRun(tmp_path, ast, [], key_file=new_key_file(tmp_path), interval=3600)
            daemons.append(daemon)
            daemon.start()
            daemon.wait_ready()
            args = ["--autodiscover", "--mailbox", MAILBOX, "--username", MAILBOX,
                    "--auth", "basic", "--ca-bundle", server.ca_file,
                    "--dns-server", dns.address, "--password-file", "-",
                    "--extension", "100"]  # fmt: skip
            wrong = _add(daemon, "not-the-password", *args)
            assert wrong.returncode == 2, wrong.stderr
            assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
            added = _add(daemon, PASSWORD, *args)
            assert added.returncode == 0, added.stderr
            assert [link["source"] for link in daemon.links()] == [MAILBOX]
            server.wait_for_stream(1, timeout=30)  # the daemon discovered, read, subscribed
            now = datetime.now(UTC)
            server.put_item(MAILBOX, "ad-1", vcalendar(
                "ad-1", "0612345678", now - timedelta(minutes=1), now + timedelta(minutes=20)
            ))  # fmt: skip
            wait_forwarding(ast, "100", "+31612345678", timeout=10)
            daemon.check_alive()
    finally:
        server.stop()
