"""An agent's "now" follows the phone: real SIP phones (pyVoIP) on the sandboxed Asterisk,
read by a real ``pbxcal run`` over AMI (``AmiPbx.read_extension_states``).

Agent ``anna`` is extension 100 (no calendar: only the phone counts). Phone 300 calls
100: while 100 rings, ``GET /api/v1/agents/anna/now`` says ``ringing``; once 100
answers, ``on-call`` (phone ``in-use``); after the hang-up, ``free`` (phone ``idle``)
again. Each state is awaited (the device state changes asynchronously), never slept on.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_for
from pyVoIP.VoIP import CallState, PhoneStatus  # before pyVoIP.SIP (cycle)
from test_dialplan_sip import TestPhone

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def phones(asterisk: AsteriskSandbox) -> Iterator[dict[str, TestPhone]]:
    started: dict[str, TestPhone] = {}
    try:
        for index, name in enumerate(("100", "300")):
            low = 44000 + index * 200
            phone = TestPhone(name, asterisk.sip_host, asterisk.sip_port, name,
                              asterisk.sip_secret, myIP="127.0.0.1",
                              sipPort=free_port(socket.SOCK_DGRAM),
                              rtpPortLow=low, rtpPortHigh=low + 199)  # fmt: skip
            phone.start()
            started[name] = phone
        for name, phone in started.items():
            wait_for(phone.get_status, lambda s: s == PhoneStatus.REGISTERED, 15,
                     what=f"phone {name} registered")  # fmt: skip
        yield started
    finally:
        for phone in started.values():
            with contextlib.suppress(Exception):
                phone.stop()
        asterisk.cli("channel request hangup all")


def test_an_agent_on_a_real_sip_call_shows_as_on_a_call(
    asterisk: AsteriskSandbox,
    phones: dict[str, TestPhone],
    daemons: list[DaemonRun],
    tmp_path: Path,
) -> None:
    daemon = DaemonRun(tmp_path, asterisk, [], interval=3600, key_file=new_key_file(tmp_path),
                       pbx_extra='extensions = ["100-399"]\n')  # fmt: skip
    added = subprocess.run(
        daemon.command("agents", "add", "anna", "--pbx", "main", "--extension", "100",
                       "--name", "Anna"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready(60)
    made = subprocess.run(daemon.command("admin-token", "create", "--name", "ops"),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}

    def now() -> dict[str, object]:
        answer = httpx.get(f"http://{daemon.listen}/api/v1/agents/anna/now", headers=headers,
                           timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body

    wait_for(now, lambda s: s["state"] == "free" and s["phone"] == "idle", 15,
             what="anna free, her phone idle")  # fmt: skip
    call = phones["300"].call("100")
    wait_for(lambda: phones["100"].ringing(), bool, 15, what="100 ringing")
    wait_for(now, lambda s: s["state"] == "ringing", 15, what="anna's phone ringing")
    incoming = phones["100"].ringing()[0]
    incoming.answer()
    wait_for(lambda: call.state, lambda s: s == CallState.ANSWERED, 15, what="call answered")
    state, _ = wait_for(now, lambda s: s["state"] == "on-call", 15, what="anna on a call")
    assert state["phone"] == "in-use" and state["meeting_until"] is None
    call.hangup()
    wait_for(lambda: incoming.state, lambda s: s == CallState.ENDED, 15, what="hung up")
    wait_for(now, lambda s: s["state"] == "free" and s["phone"] == "idle", 15,
             what="anna free again")  # fmt: skip
