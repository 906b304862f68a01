"""contrib/asterisk/extensions_pbxcal.conf against a real Asterisk and real SIP phones.

pyVoIP phones register over UDP on 127.0.0.1 as 100 (the forwarded extension), 201 and
202 (targets), 300 (the caller) and pstn (stand-in for the trunk: every +E.164 number
lands there, and so does every other digit string that is not an internal extension,
as a real trunk route would). AstDB is written with the sandbox's CLI, as pbxcal would
over AMI.

"Did not ring" is shown without sleeping: the subroutine logs the complete dial string
("pbxcal: 100 forwarded, dialling ...") before its one Dial(), so once that line is in
Asterisk's log, or once the phone the call ended up at rings, nothing else can ring.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVoIP.VoIP import CallState, PhoneStatus, VoIPCall, VoIPPhone  # before pyVoIP.SIP (cycle)

from pyVoIP.SIP import SIPMessage, SIPMessageType  # isort: skip

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PHONES = ("100", "201", "202", "300", "pstn")


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


class TestPhone(VoIPPhone):  # type: ignore[misc]
    """A pyVoIP phone that records incoming calls and understands CANCEL."""

    __test__ = False

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.incoming: list[VoIPCall] = []
        self.cancelled: set[str] = set()
        super().__init__(*args, callCallback=self._ring, **kwargs)

    def _ring(self, call: VoIPCall) -> None:
        pass  # pyVoIP calls this 1 s late; calls are recorded from the INVITE itself

    def _create_Call(self, request: SIPMessage, sess_id: int) -> None:
        super()._create_Call(request, sess_id)
        self.incoming.append(self.calls[request.headers["Call-ID"]])

    def callback(self, request: SIPMessage) -> None:
        if request.type == SIPMessageType.MESSAGE and request.method == "CANCEL":
            call_id = request.headers["Call-ID"]
            self.cancelled.add(call_id)
            for call in self.incoming:
                if call.call_id == call_id and call.state == CallState.RINGING:
                    # pyVoIP never ends the INVITE transaction: answer it with 487.
                    reply = self.sip.gen_busy(call.request).replace(
                        "486 Busy Here", "487 Request Terminated"
                    )
                    self.sip.out.sendto(reply.encode("utf8"), (self.server, self.port))
                    call.state = CallState.ENDED
            return
        super().callback(request)

    def ringing(self) -> list[VoIPCall]:
        return [
            c
            for c in self.incoming
            if c.state == CallState.RINGING and c.call_id not in self.cancelled
        ]

    def reset(self) -> None:
        self.incoming.clear()
        self.cancelled.clear()


@pytest.fixture(scope="module")
def phones(asterisk: AsteriskSandbox) -> Iterator[dict[str, TestPhone]]:
    started: dict[str, TestPhone] = {}
    try:
        for index, name in enumerate(PHONES):
            low = 40000 + index * 200
            phone = TestPhone(
                name,
                asterisk.sip_host,
                asterisk.sip_port,
                name,
                asterisk.sip_secret,
                myIP="127.0.0.1",
                sipPort=free_port(socket.SOCK_DGRAM),
                rtpPortLow=low,
                rtpPortHigh=low + 199,
            )
            phone.start()
            started[name] = phone
        for name, phone in started.items():
            wait_for(
                f"phone {name} registered", lambda p=phone: p.get_status() == PhoneStatus.REGISTERED
            )
        contacts = asterisk.cli("pjsip show contacts")
        for name in PHONES:
            assert f"{name}/sip:" in contacts, f"{name} not registered in Asterisk:\n{contacts}"
        yield started
    finally:
        for phone in started.values():
            with contextlib.suppress(Exception):  # best-effort deregister
                phone.stop()


def active_channels(asterisk: AsteriskSandbox) -> int:
    out = asterisk.cli("core show channels count")
    for line in out.splitlines():
        if "active channel" in line:
            return int(line.split()[0])
    raise AssertionError(f"unexpected 'core show channels count' output: {out!r}")


@pytest.fixture
def pbx(asterisk: AsteriskSandbox, phones: dict[str, TestPhone]) -> Iterator[AsteriskSandbox]:
    """A clean PBX: no pbxcal keys, no channels, phones with no recorded calls."""
    asterisk.cli("database deltree pbxcal")
    for phone in phones.values():
        phone.reset()
    yield asterisk
    asterisk.cli("channel request hangup all")
    wait_for("all channels gone", lambda: active_channels(asterisk) == 0, timeout=15)
    asterisk.cli("database deltree pbxcal")


def set_forward(asterisk: AsteriskSandbox, ext: str, targets: str) -> None:
    out = asterisk.cli(f"database put pbxcal fwd/{ext} {targets}")
    assert "Updated database successfully" in out, out


class AsteriskLog:
    """Lines Asterisk logs from now on (its messages.log, verbose level 3)."""

    def __init__(self, asterisk: AsteriskSandbox) -> None:
        self.path = Path(asterisk.log_path)
        self.offset = self.path.stat().st_size

    def text(self) -> str:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors="replace")

    def dialled(self, ext: str) -> str:
        """Wait for the subroutine's dial string for ``ext`` and return it."""
        marker = f"app_verbose.c: pbxcal: {ext} forwarded, dialling "
        wait_for(f"{ext} forwarded", lambda: marker in self.text())
        return self.text().split(marker, 1)[1].split("\n", 1)[0].strip()


def answer_and_finish(caller_call: VoIPCall, callee_call: VoIPCall) -> None:
    callee_call.answer()
    wait_for("caller sees the answer", lambda: caller_call.state == CallState.ANSWERED)
    caller_call.hangup()
    wait_for("callee gets BYE", lambda: callee_call.state == CallState.ENDED)


def request_user(call: VoIPCall) -> str:
    heading = call.request.heading.decode()  # "INVITE sip:+316...@127.0.0.1:5060 SIP/2.0"
    return heading.split()[1].removeprefix("sip:").split("@", 1)[0]


def test_forwarding_rings_all_targets_in_parallel(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "201&+31612345678")
    call = phones["300"].call("100")

    wait_for(
        "201 and pstn ringing at once",
        lambda: bool(phones["201"].ringing()) and bool(phones["pstn"].ringing()),
    )
    assert call.state == CallState.DIALING, "caller must still be ringing"
    assert request_user(phones["pstn"].ringing()[0]) == "+31612345678"
    assert not phones["100"].incoming, "a forwarded extension's own phone must not ring"

    pstn_call = phones["pstn"].ringing()[0]
    answer_and_finish(call, phones["201"].ringing()[0])
    wait_for("pstn stops ringing", lambda: pstn_call.call_id in phones["pstn"].cancelled)


def test_extension_shaped_target_that_is_no_extension_never_reaches_the_trunk(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    """Issue #7 item 2: "118218" (premium rate in France) looks like an extension."""
    # The trap is real: dialled like any number, 118218 leaves through the trunk.
    direct = phones["300"].call("118218")
    wait_for("118218 at the PSTN", lambda: any(
        request_user(c) == "118218" for c in phones["pstn"].ringing()))
    answer_and_finish(direct, phones["pstn"].ringing()[0])
    phones["pstn"].reset()

    set_forward(pbx, "100", "118218&201&+31612345678")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    wait_for(
        "201 and pstn ringing at once",
        lambda: bool(phones["201"].ringing()) and bool(phones["pstn"].ringing()),
    )
    # Extensions in the internal-only context, E.164 in the outbound one, one Dial().
    assert log.dialled("100") == (
        "Local/118218@pbxcal-test-internal/n&Local/201@pbxcal-test-internal/n"
        "&Local/+31612345678@pbxcal-test-phones/n")
    # Dial() requests every channel before any rings: the 118218 leg was refused.
    assert [request_user(c) for c in phones["pstn"].incoming] == ["+31612345678"]
    answer_and_finish(call, phones["201"].ringing()[0])
    assert [request_user(c) for c in phones["pstn"].incoming] == ["+31612345678"]


def test_first_answer_wins_the_other_stops_ringing(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "201&202")
    call = phones["300"].call("100")
    wait_for(
        "201 and 202 ringing",
        lambda: bool(phones["201"].ringing()) and bool(phones["202"].ringing()),
    )
    loser = phones["201"].ringing()[0]
    winner = phones["202"].ringing()[0]
    winner.answer()
    wait_for("caller connected", lambda: call.state == CallState.ANSWERED)
    wait_for("201 stops ringing", lambda: loser.call_id in phones["201"].cancelled)
    call.hangup()
    wait_for("202 gets BYE", lambda: winner.state == CallState.ENDED)


def test_without_forwarding_the_extension_rings_itself(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "201")
    assert "Database entry removed" in pbx.cli("database del pbxcal fwd/100")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    wait_for("100 ringing", lambda: bool(phones["100"].ringing()))
    # 100's own Dial runs only after the subroutine returned without forwarding.
    assert "forwarded, dialling" not in log.text()
    assert not phones["201"].incoming, "201 must not ring once the forwarding is gone"
    answer_and_finish(call, phones["100"].ringing()[0])


def test_mutual_forwarding_does_not_loop(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "201")
    set_forward(pbx, "201", "100")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    # A loop would forward again and again and 201's own phone would never be dialled.
    wait_for("201 ringing", lambda: bool(phones["201"].ringing()))
    assert log.dialled("100") == "Local/201@pbxcal-test-internal/n"
    assert "pbxcal: 201 forwarded" not in log.text()  # 100 is in the chain: skipped
    # Caller leg, Local;1 + Local;2 towards 201, the PJSIP leg to 201: four.
    assert active_channels(pbx) <= 4
    assert not phones["100"].incoming, "100 is forwarded away; the loop must not ring it"
    assert len(phones["201"].incoming) == 1
    answer_and_finish(call, phones["201"].ringing()[0])


def test_forwarding_follows_a_chain(pbx: AsteriskSandbox, phones: dict[str, TestPhone]) -> None:
    set_forward(pbx, "100", "201")
    set_forward(pbx, "201", "202")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    wait_for("202 ringing", lambda: bool(phones["202"].ringing()))
    assert log.dialled("100") == "Local/201@pbxcal-test-internal/n"
    assert log.dialled("201") == "Local/202@pbxcal-test-internal/n"
    assert not phones["201"].incoming and not phones["100"].incoming
    answer_and_finish(call, phones["202"].ringing()[0])


def test_target_equal_to_caller_is_skipped(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "300&201")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    wait_for("201 ringing", lambda: bool(phones["201"].ringing()))
    assert log.dialled("100") == "Local/201@pbxcal-test-internal/n"  # 300 is not in it
    assert not phones["300"].incoming, "the caller must not be called back"
    assert not phones["100"].incoming
    answer_and_finish(call, phones["201"].ringing()[0])


def test_only_target_is_the_caller_rings_the_extension(
    pbx: AsteriskSandbox, phones: dict[str, TestPhone]
) -> None:
    set_forward(pbx, "100", "300")
    call = phones["300"].call("100")
    wait_for("100 ringing", lambda: bool(phones["100"].ringing()))
    assert not phones["300"].incoming
    answer_and_finish(call, phones["100"].ringing()[0])


def test_malformed_value_is_ignored(pbx: AsteriskSandbox, phones: dict[str, TestPhone]) -> None:
    set_forward(pbx, "100", "201&PJSIP/202")
    log = AsteriskLog(pbx)
    call = phones["300"].call("100")
    wait_for("100 ringing", lambda: bool(phones["100"].ringing()))
    # Logged before the subroutine returned and 100's own Dial ran.
    assert "malformed pbxcal/fwd/100" in log.text()
    assert "forwarded, dialling" not in log.text()
    assert not phones["201"].incoming and not phones["202"].incoming
    answer_and_finish(call, phones["100"].ringing()[0])


# --------------------------------------------------------------------------- AMI user


class RawAmi:
    """Just enough AMI to check the shipped pbxcal account's privileges."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.sock.recv(1024)  # "Asterisk Call Manager/..." banner
        self.counter = 0

    def _message(self) -> dict[str, str]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "AMI connection closed"
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = [line.split(": ", 1) for line in raw.decode().split("\r\n") if ": " in line]
        return {key: value for key, value in lines}

    def action(self, name: str, **fields: str) -> tuple[dict[str, str], list[dict[str, str]]]:
        self.counter += 1
        action_id = f"t{self.counter}"
        text = f"Action: {name}\r\nActionID: {action_id}\r\n"
        text += "".join(f"{key}: {value}\r\n" for key, value in fields.items())
        self.sock.sendall((text + "\r\n").encode())
        events: list[dict[str, str]] = []
        response: dict[str, str] | None = None
        while True:
            message = self._message()
            if message.get("ActionID") != action_id:
                continue
            if "Response" in message:
                response = message
                if message["Response"] != "Success" or "EventList" not in message:
                    return response, events
            else:
                events.append(message)
                if message.get("EventList") == "Complete":
                    assert response is not None
                    return response, events

    def close(self) -> None:
        self.sock.close()


def test_shipped_ami_user_has_exactly_the_privileges_pbxcal_needs(
    asterisk: AsteriskSandbox,
) -> None:
    ami = RawAmi(asterisk.ami_host, asterisk.ami_port)
    try:
        ok, _ = ami.action("Login", Username=asterisk.ami_username, Secret=asterisk.ami_secret)
        assert ok["Response"] == "Success", ok
        assert ami.action("Ping")[0]["Response"] == "Success"
        put = ami.action("DBPut", Family="pbxcal", Key="fwd/555", Val="201&+31612345678")
        assert put[0]["Response"] == "Success", put
        got, events = ami.action("DBGet", Family="pbxcal", Key="fwd/555")
        assert got["Response"] == "Success", got
        assert events[0]["Val"] == "201&+31612345678"
        tree, events = ami.action("DBGetTree", Family="pbxcal")
        assert tree["Response"] == "Success", tree
        assert any(e.get("Key") == "/pbxcal/fwd/555" for e in events), events
        state = ami.action("Setvar", Variable="DEVICE_STATE(Custom:pbxcal555)", Value="INUSE")
        assert state[0]["Response"] == "Success", state
        assert ami.action("DBDel", Family="pbxcal", Key="fwd/555")[0]["Response"] == "Success"
        for refused in (
            ami.action("Command", Command="core show version"),
            ami.action("Originate", Channel="Local/100@pbxcal-test-phones", Application="Wait"),
            ami.action("UpdateConfig", SrcFilename="manager.conf", DstFilename="x.conf"),
        ):
            assert refused[0]["Response"] == "Error", refused
            assert "Permission denied" in refused[0].get("Message", ""), refused
    finally:
        ami.close()
    # The BLF hint from extensions_pbxcal.conf follows the custom device state.
    assert "INUSE" in asterisk.cli("devstate list").split("Custom:pbxcal555", 1)[1].split("\n")[0]
    admin = RawAmi(asterisk.ami_host, asterisk.ami_port)
    try:
        admin.action("Login", Username=asterisk.admin_username, Secret=asterisk.admin_secret)
        hint, _ = admin.action("ExtensionState", Exten="pbxcal555", Context=asterisk.phones_context)
        assert hint["Response"] == "Success" and hint["Status"] == "1", hint  # 1 = InUse
    finally:
        admin.close()


def test_sandboxes_coexist_and_astdb_survives_restart(asterisk_root: Path) -> None:
    with AsteriskSandbox(asterisk_root, "restart-check", endpoints=("100",)) as other:
        other.cli("database put pbxcal fwd/100 +31612345678")
        ports = (other.ami_port, other.sip_port)
        other.restart()
        assert (other.ami_port, other.sip_port) == ports
        assert "+31612345678" in other.cli("database get pbxcal fwd/100")
        assert other.boot_seconds is not None and other.boot_seconds < 30
        instance = other.instance_dir
    assert not instance.exists()
