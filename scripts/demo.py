"""pbxcal demo: a live forwarding switching on and off against a sandboxed Asterisk, the
customer portal, and a guest booking a meeting.

Run it with ``scripts/demo`` (which prepares the virtual environment first). It:
1. builds or reuses the Debian sid root with Asterisk and starts a sandbox on loopback;
2. writes a calendar for extension 100 whose appointments start ``--lead`` seconds from
   now: "201" for 40 s, "06-12345678" overlapping it (both ring in parallel), plus a
   "Lunch" and a premium-rate number that pbxcal refuses;
3. starts a CalDAV server (Radicale, on loopback) with a calendar for extension 101 and
   links it with ``pbxcal links add --provider caldav`` (the password goes in on standard
   input and is stored encrypted with a key from ``pbxcal keys generate``), and an SMTP
   server (aiosmtpd, on loopback) that ``[smtp]`` sends invitations to;
4. runs ``pbxcal run`` with SQLite and both calendars, adds an appointment "202" to the
   CalDAV calendar while it runs, and prints what Asterisk holds (AstDB
   ``pbxcal/fwd/<ext>`` and the BLF device state) every time it changes;
5. plays a customer of the portal: the admin makes an invitation for extension 102
   (``pbxcal invitations create``), the customer opens it, fills in the CalDAV form
   (the same Radicale, over https with a throwaway CA) and reads the status page; an
   admin-API token then lists every link (``GET /api/v1/links``);
6. books a meeting: the admin makes extension 101 an agent (``pbxcal agents add`` with
   the CalDAV link as conflict and booking calendar), a guest opens ``/book/<agent>``
   as a browser would (the guest cookie and the form's CSRF token from the page), picks
   the first free time and books it; the demo prints the confirmation page, the event
   read back from Radicale, and the iTIP invitation (``METHOD:REQUEST``) the SMTP server
   received.

``tests/integration/test_demo.py`` runs this script with the shortest ``--lead`` and
checks its output for every step. Start reading at ``main``; step 6 is ``demo_booking.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import httpx
from demo_booking import DavAccount, Inbox, booking_step, page_text, smtp_server

from pbxcal.testing.asterisk import DEFAULT_ENDPOINTS, AsteriskSandbox, SandboxError, ensure_root
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.testing.tls import make_tls

REPO = Path(__file__).resolve().parents[1]
PBXCAL = Path(sys.executable).parent / "pbxcal"
#: The shortest --lead: pbxcal should be running and the portal step done before the
#: first appointment starts (about 6 s on an idle machine, 15 s and more on a busy one;
#: when it takes longer the watch starts late and shows the state it finds then).
MIN_LEAD = 15


def ics_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def calendar(start: datetime) -> str:
    def event(uid: str, title: str, begin: timedelta, end: timedelta) -> str:
        return (
            f"BEGIN:VEVENT\r\nUID:{uid}@demo.pbxcal\r\nDTSTAMP:{ics_time(start)}\r\n"
            f"DTSTART:{ics_time(start + begin)}\r\nDTEND:{ics_time(start + end)}\r\n"
            f"SUMMARY:{title}\r\nEND:VEVENT\r\n"
        )

    s = timedelta(seconds=1)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//demo//EN\r\n"
        + event("colleague", "201", 0 * s, 40 * s)
        + event("mobile", "06-12345678", 20 * s, 60 * s)
        + event("lunch", "Lunch", 0 * s, 60 * s)
        + event("premium", "0900 1234567", 10 * s, 30 * s)
        + "END:VCALENDAR\r\n"
    )


def wait_ready(listen: str, daemon: subprocess.Popen[bytes]) -> None:
    """Until ``/readyz`` answers 200 (READY), or the daemon exits."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError("pbxcal run exited before it was ready")
        try:
            if httpx.get(f"http://{listen}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a probe: there is no event to wait on from outside
    raise RuntimeError("pbxcal run was not ready within 60 s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def forwarding(ast: AsteriskSandbox, ext: str = "100") -> str:
    value = ast.cli(f"database get pbxcal fwd/{ext}").strip()
    state = ast.cli("devstate list").splitlines()
    blf = next((line.split("'")[3] for line in state if f"Custom:pbxcal{ext}'" in line), "?")
    target = value.removeprefix("Value: ") if value.startswith("Value:") else "(none)"
    return f"pbxcal/fwd/{ext} = {target:<22} BLF Custom:pbxcal{ext} = {blf}"


def caldav_event(uid: str, title: str, begin: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//demo//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}@demo.pbxcal\r\nDTSTAMP:{ics_time(begin)}\r\nDTSTART:{ics_time(begin)}\r\n"
        f"DTEND:{ics_time(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def portal_customer(base: str, invitation: str, calendar_url: str, password: str) -> str:
    """What a customer does in the browser, as plain HTTP: open the invitation, fill in
    the CalDAV form, read the status page. Returns the status page as text."""
    with httpx.Client(base_url=base, follow_redirects=True, timeout=30) as browser:
        browser.get(invitation).raise_for_status()
        form = browser.get("/link/caldav")
        form.raise_for_status()
        match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        if match is None:
            raise RuntimeError("the CalDAV form carries no CSRF token")
        done = browser.post("/link/caldav", data={
            "csrf_token": unescape(match.group(1)), "url": calendar_url, "username": "carol",
            "password": password, "calendar": "",
        })  # fmt: skip
        if done.status_code != 200 or not str(done.url).endswith("/status"):
            found = re.search(r'role="alert"[^>]*>(.*?)<', done.text, re.S)
            why = found.group(1) if found else done.status_code
            raise RuntimeError(f"the portal refused: {why}")
        page = done.text
    return page_text(page, skip="Unlink")


def main() -> int:
    began = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lead", type=int, default=25,
                        help="seconds until the first appointment starts (default 25, "
                             f"at least {MIN_LEAD})")  # fmt: skip
    args = parser.parse_args()
    if not MIN_LEAD <= args.lead <= 600:
        parser.error(f"--lead must be {MIN_LEAD} to 600 seconds")
    try:
        root = ensure_root()
    except SandboxError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    inbox = Inbox()
    with tempfile.TemporaryDirectory(prefix="pbxcal-demo-") as tmp, \
            AsteriskSandbox(root, "pbxcal-demo",
                            endpoints=(*DEFAULT_ENDPOINTS, "101", "102", "203")) as ast, \
            smtp_server(inbox, free_port()) as smtp:
        work = Path(tmp)
        logging.getLogger("radicale").setLevel(logging.WARNING)  # its start-up chatter
        password = os.urandom(12).hex()
        carol_password = os.urandom(12).hex()
        # The portal takes https calendar addresses only: Radicale serves TLS with a
        # throwaway CA that pbxcal's processes trust (SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
        ca_file, cert_file, key_file = make_tls(work / "tls")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert_file, key_file)
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(ca_file)
        dav = RadicaleServer(work / "radicale", {"bob": password, "carol": carol_password},
                             tls=tls, ca_file=str(ca_file)).start()  # fmt: skip
        bob_calendar = dav.make_calendar("bob", "work")
        carol_calendar = dav.make_calendar("carol", "home")
        keys = work / "keys"
        subprocess.run([str(PBXCAL), "keys", "generate", str(keys)], check=True,
                       capture_output=True)  # fmt: skip
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=args.lead)
        (work / "anna.ics").write_text(calendar(start))
        secret = work / "ami.secret"
        secret.write_text(ast.ami_secret)
        secret.chmod(0o600)
        listen = f"127.0.0.1:{free_port()}"
        (work / "pbxcal.toml").write_text(
            f'[pbxcal]\nregion = "NL"\n\n[http]\nlisten = "{listen}"\n\n'
            f'[sync]\ninterval = 2\n\n[secrets]\nkey_file = "{keys}"\n\n'
            f'[portal]\npublic_url = "http://{listen}"\nallow_networks = ["127.0.0.0/8"]\n\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nfrom = "pbxcal@demo.example"\n\n'
            f'[pbx.main]\nhost = "{ast.ami_host}"\nport = {ast.ami_port}\n'
            f'username = "{ast.ami_username}"\nsecret_file = "{secret}"\n\n'
            f'[[link]]\nextension = "100"\nsource = "{work / "anna.ics"}"\n'
        )
        print(f"Asterisk up on 127.0.0.1 (AMI {ast.ami_port}, SIP {ast.sip_port}).")
        print(f"Calendar {work / 'anna.ics'} for extension 100 (times UTC):")
        print(f"  {start:%H:%M:%S}-{start + timedelta(seconds=40):%H:%M:%S}  '201'")
        print(f"  {start + timedelta(seconds=20):%H:%M:%S}-"
              f"{start + timedelta(seconds=60):%H:%M:%S}  '06-12345678' -> +31612345678")
        print("  plus 'Lunch' (not a number) and '0900 1234567' (premium rate: blocked)")
        store = f"sqlite:///{work / 'pbxcal.sqlite3'}"
        added = subprocess.run(
            [str(PBXCAL), "links", "add", "--provider", "caldav", "--source", bob_calendar,
             "--username", "bob", "--password-file", "-", "--extension", "101",
             "--config", str(work / "pbxcal.toml"), "--store", store],
            input=password + "\n", capture_output=True, text=True, check=False,
        )  # fmt: skip
        if added.returncode != 0:
            print(f"demo: linking the CalDAV calendar failed: {added.stderr}", file=sys.stderr)
            return 1
        bob_link = re.search(r"link (\d+) added", added.stdout)
        if bob_link is None:
            print(f"demo: links add answered {added.stdout!r}", file=sys.stderr)
            return 1
        print(f"CalDAV calendar {bob_calendar} (Radicale), extension 101: "
              f"{added.stdout.strip()}")  # fmt: skip
        print(f"  an appointment '202' will be added to it at "
              f"{start + timedelta(seconds=10):%H:%M:%S}, for 30 s")  # fmt: skip
        begin = start + timedelta(seconds=15)
        dav.put("carol", "home", "call.ics",
                caldav_event("carol", "203", begin, begin + timedelta(seconds=30)))
        dav.put("carol", "home", "lunch.ics",
                caldav_event("carol-lunch", "Lunch", begin, begin + timedelta(minutes=60)))
        print(f"Carol's calendar {carol_calendar} (for extension 102, linked through the "
              f"portal once pbxcal runs): '203' at {begin:%H:%M:%S} for 30 s, and 'Lunch'\n")
        plan = subprocess.run(
            [str(PBXCAL), "plan", "--ics", str(work / "anna.ics"), "--extension", "100",
             "--from", start.isoformat(), "--to", (start + timedelta(minutes=5)).isoformat(),
             "--json"], capture_output=True, text=True, check=True)
        print("pbxcal plan says:", json.dumps(json.loads(plan.stdout), indent=None), "\n")
        log = (work / "pbxcal.log").open("w")
        daemon = subprocess.Popen(
            [str(PBXCAL), "run", "--config", str(work / "pbxcal.toml"), "--store", store],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )
        print(f"pbxcal run started (pid {daemon.pid}); metrics on http://{listen}/metrics")
        config_args = ["--config", str(work / "pbxcal.toml"), "--store", store]
        try:
            wait_ready(listen, daemon)
            made = subprocess.run(
                [str(PBXCAL), "invitations", "create", "--pbx", "main", "--extension", "102",
                 "--json", *config_args], capture_output=True, text=True, check=True)
            invitation = json.loads(made.stdout)["url"]
            print(f"\nThe admin invites the customer of extension 102:\n  {invitation}")
            print("The customer opens it, chooses 'iCloud or another CalDAV calendar', types "
                  "the address, user and app password, and sees:")
            print(portal_customer(f"http://{listen}", invitation, carol_calendar,
                                  carol_password))  # fmt: skip
            token = subprocess.run(
                [str(PBXCAL), "admin-token", "create", "--name", "demo", *config_args],
                capture_output=True, text=True, check=True).stdout.strip()
            listed = httpx.get(f"http://{listen}/api/v1/links", timeout=10,
                               headers={"Authorization": f"Bearer {token}"}).json()
            print("The admin API (GET /api/v1/links) now lists:")
            for item in listed.get("links", []):
                print(f"    link {item.get('id')}: extension {item.get('extension')} "
                      f"({item.get('provider')}) {item.get('status')}")
        except (subprocess.CalledProcessError, RuntimeError, httpx.HTTPError, KeyError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            print(f"demo: the portal step failed: {detail}", file=sys.stderr)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
            return 1
        print("\nWatching Asterisk (what a call to 100, 101 or 102 would ring):\n")
        late = (datetime.now(UTC) - start).total_seconds()
        if late > 0:
            print(f"  (this began {late:.1f} s after the first appointment: the machine was "
                  f"slower than --lead {args.lead}; earlier changes are not shown)")  # fmt: skip
        last: dict[str, str] = {}
        end = start + timedelta(seconds=66)
        put = False
        try:
            while datetime.now(UTC) < end:
                if not put and datetime.now(UTC) >= start + timedelta(seconds=8):
                    begin = start + timedelta(seconds=10)
                    meeting = caldav_event("bob", "202", begin, begin + timedelta(seconds=30))
                    dav.put("bob", "work", "meeting.ics", meeting)
                    put = True
                if daemon.poll() is not None:
                    print("demo: pbxcal run exited early; its log:\n"
                          + (work / "pbxcal.log").read_text(), file=sys.stderr)
                    return 1
                for ext in ("100", "101", "102"):
                    now_state = forwarding(ast, ext)
                    if now_state != last.get(ext):
                        offset = (datetime.now(UTC) - start).total_seconds()
                        print(f"  {datetime.now(UTC):%H:%M:%S.%f}"[:-3]
                              + f" (t{offset:+6.1f}s)  {now_state}")
                        last[ext] = now_state
                time.sleep(0.2)
            try:
                bob = DavAccount(bob_calendar, "bob", password, ca_file)
                booking_step(PBXCAL, config_args, f"http://{listen}", bob_link.group(1), inbox,
                             smtp.port, bob)  # fmt: skip
            except (subprocess.CalledProcessError, RuntimeError, httpx.HTTPError) as exc:
                detail = getattr(exc, "stderr", "") or exc
                print(f"demo: the booking step failed: {detail}", file=sys.stderr)
                return 1
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as reply:
                lines = reply.read().decode().splitlines()
            print("\nA few metrics:")
            for line in lines:
                if line.startswith(("pbxcal_forwarding_changes_total",
                                    "pbxcal_rejected_events_total", "pbxcal_ami_connected",
                                    "pbxcal_boundary_lag_seconds_count",
                                    "pbxcal_boundary_lag_seconds_sum")):
                    print("  " + line)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
            log.close()
            dav.stop()
        print(f"\nDone in {time.monotonic() - began:.0f} s. pbxcal's log was "
              f"{work / 'pbxcal.log'} (removed with the demo);")  # fmt: skip
        print("try `pbxcal plan --help`, and see README.md for running it as a service.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
