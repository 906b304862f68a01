"""AmiPbx against a tiny fake AMI server on loopback: protocol edge cases.

The fake speaks just enough AMI (banner, Login, Ping, DBPut, DBDel, DBGetTree, Setvar,
PJSIPShowEndpoints, ExtensionStateList, Logoff, FullyBooted) to drive the adapter through
auth failures, half-open connections, dropped connections, slow and missing answers,
refusals of single actions. The real proof is ``tests/integration/test_ami_adapter.py``
against Asterisk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from pbxcal.errors import PbxAuthFailed, PbxUnavailable
from pbxcal.pbx import ApplyResult, Pbx
from pbxcal.pbx.ami import AmiConfig, AmiPbx
from pbxcal.pbx.ami.session import AmiSession, Step

pytestmark = pytest.mark.timeout(30)


@dataclass
class FakeAmi:
    """A loopback AMI server. Flags change its behaviour for the next messages."""

    secret: str = "s3cret"
    db: dict[str, str] = field(default_factory=dict)
    devstates: dict[str, str] = field(default_factory=dict)
    raw: bytearray = field(default_factory=bytearray)
    actions: list[dict[str, str]] = field(default_factory=list)
    logins: int = 0
    #: Stop answering anything (TCP stays up): a half-open peer.
    silent: bool = False
    #: Do not answer these actions at all.
    swallow: set[str] = field(default_factory=set)
    #: Hold answers until this many actions are waiting (proves pipelining).
    batch: int = 1
    #: Close the connection after this many DBPuts on it (mid-batch loss).
    drop_after_puts: int | None = None
    #: Answer Setvar with an error.
    setvar_error: bool = False
    send_booted: bool = True
    #: Write every answer a few bytes at a time (messages split across reads).
    trickle: bool = False
    #: Answer Login with this error (whatever the secret).
    login_error: str | None = None
    #: Answer DBPut of these keys (``fwd/201``) with an error.
    put_errors: set[str] = field(default_factory=set)
    #: PJSIP endpoints and hinted extensions this "Asterisk" has.
    endpoints: tuple[str, ...] = ("100", "201", "pstn")
    hints: tuple[tuple[str, str], ...] = (("202", "default"), ("pbxcal201", "pbxcal-hints"))
    port: int = 0
    server: asyncio.base_events.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        held: list[bytes] = []
        puts = 0
        try:
            while True:
                chunk = await reader.readuntil(b"\r\n\r\n")
                self.raw += chunk
                headers: dict[str, str] = {}
                for line in chunk.decode().strip().split("\r\n"):
                    key, _, value = line.partition(": ")
                    headers[key.lower()] = value
                self.actions.append(headers)
                if self.silent:
                    continue
                name = headers.get("action", "").lower()
                if name in self.swallow:
                    continue
                reply, close = self._answer(name, headers)
                if name == "dbput":
                    puts += 1
                    if self.drop_after_puts is not None and puts >= self.drop_after_puts:
                        writer.transport.abort()
                        return
                held.append(reply)
                if len(held) >= self.batch or name in ("login", "ping", "logoff"):
                    out = b"".join(held)
                    held.clear()
                    if self.trickle:
                        for i in range(0, len(out), 7):
                            writer.write(out[i : i + 7])
                            await writer.drain()
                    else:
                        writer.write(out)
                if close:
                    await writer.drain()
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def _answer(self, name: str, h: dict[str, str]) -> tuple[bytes, bool]:
        aid = h.get("actionid", "")

        def msg(*lines: str) -> bytes:
            return ("\r\n".join([*lines, f"ActionID: {aid}"]) + "\r\n\r\n").encode()

        if name == "login":
            self.logins += 1
            if self.login_error is not None:
                return msg("Response: Error", f"Message: {self.login_error}"), True
            if h.get("secret") != self.secret:
                return msg("Response: Error", "Message: Authentication failed"), True
            out = msg("Response: Success", "Message: Authentication accepted")
            if self.send_booted:
                out += b"Event: FullyBooted\r\nPrivilege: system,all\r\n\r\n"
            return out, False
        if name == "ping":
            return msg("Response: Success", "Ping: Pong", "Timestamp: 1.0"), False
        if name == "logoff":
            return msg("Response: Goodbye", "Message: Thanks for all the fish."), True
        key = f"/{h.get('family')}/{h.get('key')}"
        if name == "dbput":
            if h.get("key") in self.put_errors:
                return msg("Response: Error", "Message: Failed to update entry"), False
            self.db[key] = h.get("val", "")
            return msg("Response: Success", "Message: Updated database successfully"), False
        if name == "dbdel":
            if self.db.pop(key, None) is None:
                return msg("Response: Error", "Message: Database entry not found"), False
            return msg("Response: Success", "Message: Key deleted successfully"), False
        if name == "setvar":
            if self.setvar_error:
                return msg("Response: Error", "Message: Variable not set"), False
            var = h.get("variable", "")
            self.devstates[var] = h.get("value", "")
            return msg("Response: Success", "Message: Variable Set"), False
        if name == "dbgettree":
            family = f"/{h.get('family')}/"
            rows = [(k, v) for k, v in sorted(self.db.items()) if k.startswith(family)]
            out = msg("Response: Success", "EventList: start", "Message: Result will follow")
            for k, v in rows:
                out += msg("Event: DBGetTreeResponse", f"Key: {k}", f"Val: {v}")
            out += msg("Event: DBGetTreeComplete", "EventList: Complete",
                       f"ListItems: {len(rows)}")
            return out, False
        if name == "pjsipshowendpoints":
            out = msg("Response: Success", "EventList: start", "Message: A listing follows")
            for ep in self.endpoints:
                out += msg("Event: EndpointList", "ObjectType: endpoint", f"ObjectName: {ep}",
                           "Contacts: ")
            out += msg("Event: EndpointListComplete", "EventList: Complete",
                       f"ListItems: {len(self.endpoints)}")
            return out, False
        if name == "extensionstatelist":
            out = msg("Response: Success", "EventList: start", "Message: Statuses follow")
            for exten, context in self.hints:
                out += msg("Event: ExtensionStatus", f"Exten: {exten}", f"Context: {context}",
                           "Status: 0")
            out += msg("Event: ExtensionStateListComplete", "EventList: Complete",
                       f"ListItems: {len(self.hints)}")
            return out, False
        return msg("Response: Error", "Message: Invalid/unknown command"), False

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.get("action", "").lower() == action.lower())


@pytest.fixture
async def fake() -> AsyncIterator[FakeAmi]:
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()


def config(fake: FakeAmi, **kw: object) -> AmiConfig:
    base: dict[str, object] = dict(
        name="fake", host="127.0.0.1", port=fake.port, username="pbxcal", secret="s3cret",
        action_timeout=1.0, ping_interval=0.3, ping_timeout=0.3, backoff_initial=0.05,
        backoff_max=0.5, boot_timeout=0.5,
    )
    base.update(kw)
    return AmiConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def started(cfg: AmiConfig, **kw: object) -> AsyncIterator[AmiPbx]:
    pbx = AmiPbx(cfg, **kw)  # type: ignore[arg-type]
    try:
        await pbx.start()
        yield pbx
    finally:
        await pbx.close()


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_implements_the_port_and_round_trips(fake: FakeAmi) -> None:
    async with started(config(fake)) as pbx:
        port: Pbx = pbx
        assert pbx.connected
        result = await port.apply({"201": ["333", "+31612345678"], "202": ["444"]})
        assert result == ApplyResult() and result.ok
        assert fake.db == {"/pbxcal/fwd/201": "+31612345678&333", "/pbxcal/fwd/202": "444"}
        assert fake.devstates["DEVICE_STATE(Custom:pbxcal201)"] == "INUSE"
        assert await port.read_applied() == {"201": ("+31612345678", "333"), "202": ("444",)}
        await port.apply({"201": []})
        assert fake.devstates["DEVICE_STATE(Custom:pbxcal201)"] == "NOT_INUSE"
        assert await port.read_applied() == {"202": ("444",)}


async def test_routing_goes_first_then_the_lamps(fake: FakeAmi) -> None:
    async with started(config(fake, window=8)) as pbx:
        await pbx.apply({str(200 + n): ["333"] if n % 2 else [] for n in range(40)})
    kinds = [a["action"] for a in fake.actions if a["action"] in ("DBPut", "DBDel", "Setvar")]
    assert len(kinds) == 80
    assert set(kinds[:40]) == {"DBPut", "DBDel"} and set(kinds[40:]) == {"Setvar"}


async def test_read_extensions_lists_endpoints_and_hints_that_are_extensions(
    fake: FakeAmi,
) -> None:
    async with started(config(fake)) as pbx:
        port: Pbx = pbx
        assert await port.read_extensions() == frozenset({"100", "201", "202"})
        fake.endpoints, fake.hints = (), ()
        assert await port.read_extensions() == frozenset()


async def test_clearing_an_absent_forwarding_is_not_an_error(fake: FakeAmi) -> None:
    async with started(config(fake)) as pbx:
        await pbx.apply({"209": []})
        await pbx.apply({"209": []})
        assert fake.count("DBDel") == 2


async def test_events_off_except_system_and_login_waits_for_answer(fake: FakeAmi) -> None:
    async with started(config(fake)):
        login = fake.actions[0]
        assert login["action"] == "Login" and login["events"] == "system"


async def test_unsafe_value_refuses_its_extension_only(fake: FakeAmi) -> None:
    async with started(config(fake)) as pbx:
        hostile: list[dict[str, list[str]]] = [
            {"201": ["333"], "202": ["201\r\nAction: Originate"]},
            {"201": ["333"], "201\r\nAction: Originate": ["333"]},
            {"201": ["333"], "203": ["201&"]},
            {"201": ["333"], "٢٠٤": ["333"]},
            {"201": ["333"], "205": ["abc"]},
        ]
        for batch in hostile:
            fake.db.clear()
            result = await pbx.apply(batch)
            bad = next(ext for ext in batch if ext != "201")
            assert list(result.refused) == [bad]
            assert "\n" not in result.refused[bad]
            assert fake.db == {"/pbxcal/fwd/201": "333"}  # the good one is applied
        assert b"Originate" not in fake.raw
        assert all(a.get("key") == "fwd/201" for a in fake.actions if a["action"] == "DBPut")


async def test_a_pbx_refusal_refuses_that_extension_and_skips_its_lamp(fake: FakeAmi) -> None:
    seen: list[tuple[str, str]] = []
    fake.put_errors = {"fwd/202"}
    async with started(config(fake), on_action=lambda a, r, s: seen.append((a, r))) as pbx:
        result = await pbx.apply({"201": ["333"], "202": ["333"], "203": []})
        assert list(result.refused) == ["202"]
        assert "DBPut Family=pbxcal Key=fwd/202 refused: Failed to update entry" in (
            result.refused["202"])
        assert fake.db == {"/pbxcal/fwd/201": "333"}
        assert set(fake.devstates) == {"DEVICE_STATE(Custom:pbxcal201)",
                                       "DEVICE_STATE(Custom:pbxcal203)"}
        assert ("DBPut", "error") in seen and pbx.connected


async def test_malformed_stored_values_are_ignored(fake: FakeAmi) -> None:
    fake.db.update({"/pbxcal/fwd/201": "333", "/pbxcal/fwd/202": "evil value",
                    "/pbxcal/fwd/2x": "333", "/pbxcal/other": "1", "/pbxcal/fwd/203": ""})
    async with started(config(fake)) as pbx:
        assert await pbx.read_applied() == {"201": ("333",)}


async def test_wrong_secret_fails_and_does_not_retry(fake: FakeAmi) -> None:
    pbx = AmiPbx(config(fake, secret="wrong"))
    with pytest.raises(PbxAuthFailed, match="refused") as info:
        await pbx.start()
    assert "wrong" not in str(info.value)
    assert fake.logins == 1
    assert not pbx.connected
    # Nothing is scheduled that could log in again: no task but this test's own.
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await pbx.close()


async def test_wrong_secret_in_the_background_knocks_at_the_cap(
    fake: FakeAmi, caplog: pytest.LogCaptureFixture
) -> None:
    """After a loss, a now-wrong secret is retried every backoff_max, not fast_retry."""
    pbx = AmiPbx(config(fake, backoff_max=30.0, fast_retry=0.01))
    await pbx.start()
    try:
        fake.secret = "rotated"
        for writer in fake.writers:
            writer.transport.abort()
        await wait_for(lambda: fake.logins == 2)  # the immediate reconnect, refused
        # Logged right before the supervisor sleeps that long.
        await wait_for(lambda: "retrying in" in caplog.text)
        delay = float(caplog.text.split("retrying in ")[1].split("s")[0])
        assert delay >= 0.8 * 30.0
        assert "rotated" not in caplog.text and "s3cret" not in caplog.text
    finally:
        await pbx.close()


async def test_secret_with_a_line_break_is_never_sent_nor_shown(fake: FakeAmi) -> None:
    pbx = AmiPbx(config(fake, secret="hunter2\r\nAction: Originate"))
    with pytest.raises(PbxAuthFailed) as info:
        await pbx.start()
    assert "hunter2" not in str(info.value) and "Originate" not in str(info.value)
    assert b"hunter2" not in fake.raw and fake.logins == 0
    await pbx.close()


def test_secret_never_in_repr(fake: FakeAmi) -> None:
    cfg = config(fake, secret="hunter2")
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in repr(AmiPbx(cfg))


async def test_unreachable_raises_then_connects_in_background() -> None:
    probe = FakeAmi()
    await probe.start()
    port = probe.port
    await probe.stop()  # nothing listens there now
    # A slow backoff that would take a minute: a refused port is retried fast instead.
    pbx = AmiPbx(config(probe, backoff_initial=30.0, backoff_max=60.0, fast_retry=0.05))
    up = asyncio.Event()

    async def on_connected() -> None:
        up.set()

    pbx.on_connected.append(on_connected)
    with pytest.raises(PbxUnavailable):
        await pbx.start(retry=True)
    assert not pbx.connected
    await wait_for(lambda: pbx.login_attempts >= 3)  # retrying, fast, while refused
    server = FakeAmi()
    await server.start(port)
    try:
        await asyncio.wait_for(up.wait(), 5)
        assert (await pbx.apply({"201": ["333"]})).ok
        assert server.db == {"/pbxcal/fwd/201": "333"}
    finally:
        await pbx.close()
        await server.stop()


async def test_reconnects_at_once_after_a_loss(fake: FakeAmi) -> None:
    pbx = AmiPbx(config(fake, backoff_initial=30.0, backoff_max=60.0))
    ups: list[int] = []
    again = asyncio.Event()

    async def on_connected() -> None:
        ups.append(1)
        if len(ups) == 2:
            again.set()

    pbx.on_connected.append(on_connected)
    await pbx.start()
    try:
        await wait_for(lambda: len(ups) == 1)
        for writer in fake.writers:
            writer.transport.abort()
        await asyncio.wait_for(again.wait(), 5)
    finally:
        await pbx.close()


async def test_start_without_retry_does_not_reconnect() -> None:
    probe = FakeAmi()
    await probe.start()
    await probe.stop()
    pbx = AmiPbx(config(probe))
    with pytest.raises(PbxUnavailable):
        await pbx.start(retry=False)
    with pytest.raises(PbxUnavailable, match="not connected"):
        await pbx.apply({"201": ["333"]})
    with pytest.raises(PbxUnavailable):
        await pbx.wait_connected(0.3)
    await pbx.close()


async def test_half_open_connection_is_detected_and_replaced(fake: FakeAmi) -> None:
    events: list[str] = []

    async def up() -> None:
        events.append("up")

    async def down() -> None:
        events.append("down")

    pbx = AmiPbx(config(fake))
    pbx.on_connected.append(up)
    pbx.on_disconnected.append(down)
    await pbx.start()
    try:
        await wait_for(lambda: events == ["up"])
        fake.silent = True  # the peer vanished without FIN/RST
        await wait_for(lambda: not pbx.connected, timeout=3)
        assert fake.count("Ping") >= 1
        fake.silent = False
        await pbx.wait_connected(5)
        await wait_for(lambda: events == ["up", "down", "up"])
        await pbx.apply({"201": ["333"]})
        assert fake.logins == 2
    finally:
        await pbx.close()


async def test_unanswered_action_times_out(fake: FakeAmi) -> None:
    seen: list[tuple[str, str]] = []
    cfg = config(fake, action_timeout=0.3, ping_interval=30)
    async with started(cfg, on_action=lambda a, r, s: seen.append((a, r))) as pbx:
        fake.swallow = {"dbput"}
        with pytest.raises(PbxUnavailable, match="DBPut timed out"):
            await pbx.apply({"201": ["333"]})
        assert ("DBPut", "timeout") in seen
        fake.swallow = set()
        await pbx.apply({"202": ["333"]})  # window slots were given back
        assert fake.db["/pbxcal/fwd/202"] == "333"


async def test_connection_lost_mid_batch_fails_fast_and_nothing_is_resent(
    fake: FakeAmi,
) -> None:
    async with started(config(fake, ping_interval=30)) as pbx:
        fake.drop_after_puts = 50
        with pytest.raises(PbxUnavailable):
            await pbx.apply({str(200 + n): ["333"] for n in range(200)})
        fake.drop_after_puts = None
        await pbx.wait_connected(5)
        puts = fake.count("DBPut")
        assert 50 <= puts <= 200 + 1
        # A full round trip on the new session: anything re-sent at reconnect would have
        # been written (and answered) before its answer.
        await pbx.read_applied()
        assert fake.count("DBPut") == puts


async def test_actions_are_pipelined(fake: FakeAmi) -> None:
    fake.batch = 100  # answers only once 100 actions are waiting: serial would time out
    async with started(config(fake, ping_interval=30)) as pbx:
        await pbx.apply({str(1000 + n): ["333"] for n in range(100)})  # 200 actions
        assert len(fake.db) == 100


async def test_window_bounds_actions_in_flight(fake: FakeAmi) -> None:
    fake.batch = 20  # more than the window: the adapter must stall, then time out
    cfg = config(fake, window=10, action_timeout=0.3, ping_interval=30)
    async with started(cfg) as pbx:
        with pytest.raises(PbxUnavailable, match="timed out"):
            await pbx.apply({str(1000 + n): ["333"] for n in range(50)})
        assert 10 <= fake.count("DBPut") + fake.count("Setvar") <= 11


async def test_refused_lamp_refuses_its_extensions_and_is_reported(fake: FakeAmi) -> None:
    seen: list[tuple[str, str]] = []
    async with started(config(fake), on_action=lambda a, r, s: seen.append((a, r))) as pbx:
        fake.setvar_error = True
        result = await pbx.apply({"201": ["333"], "202": ["333"]})
        assert set(result.refused) == {"201", "202"}
        assert "Setvar Variable=DEVICE_STATE(Custom:pbxcal201) refused: Variable not set" in (
            result.refused["201"])
        assert ("Setvar", "error") in seen and ("DBPut", "success") in seen
        assert fake.db["/pbxcal/fwd/202"] == "333"  # the routing went through
        assert pbx.connected


async def test_missing_fully_booted_is_waited_for_then_ignored(fake: FakeAmi) -> None:
    fake.send_booted = False
    async with started(config(fake, boot_timeout=0.2)) as pbx:
        assert pbx.connected


async def test_close_is_idempotent_and_stops_reconnecting(fake: FakeAmi) -> None:
    pbx = AmiPbx(config(fake))
    await pbx.start()
    await pbx.close()
    await pbx.close()
    assert not pbx.connected
    assert fake.count("Logoff") == 1
    # close() awaited the supervisor: nothing is left that could log in again.
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_pbx_status_helpers(fake: FakeAmi) -> None:
    from pbxcal.cli.pbx_commands import format_status_json, format_status_table, pbx_status

    fake.db.update({"/pbxcal/fwd/1000": "300", "/pbxcal/fwd/201": "333&+31612345678"})
    async with started(config(fake)) as pbx:
        status = await pbx_status(pbx)
    assert list(status) == ["201", "1000"]
    assert status["201"] == ["+31612345678", "333"]
    table = format_status_table(status, "fake")
    assert table.splitlines()[0].split() == ["EXTENSION", "DEVICE", "TARGETS"]
    assert "201        Custom:pbxcal201   +31612345678, 333" in table
    assert table.endswith("2 forwardings active on fake\n")
    assert format_status_json(status, "fake") == (
        '{"pbx": "fake", "forwardings": {"201": ["+31612345678", "333"], "1000": ["300"]}}\n'
    )
    assert format_status_table({}) == "no forwardings active\n"


async def test_login_refused_while_shutting_down_is_unavailable_and_retried(
    fake: FakeAmi,
) -> None:
    fake.login_error = "Asterisk is shutting down"
    pbx = AmiPbx(config(fake))
    with pytest.raises(PbxUnavailable, match="shutting down"):
        await pbx.start(retry=True)
    fake.login_error = None
    try:
        await pbx.wait_connected(5)
    finally:
        await pbx.close()


async def test_answers_split_across_reads_and_concurrent_batches(fake: FakeAmi) -> None:
    fake.trickle = True
    async with started(config(fake, window=8)) as pbx:
        await asyncio.gather(
            pbx.apply({str(100 + n): ["333"] for n in range(40)}),
            pbx.apply({str(500 + n): ["+31612345678"] for n in range(40)}),
            pbx.read_applied(),
        )
        applied = await pbx.read_applied()
        assert len(applied) == 80 and applied["500"] == ("+31612345678",)


async def test_session_batch_settles_an_unencodable_step_unsent(fake: FakeAmi) -> None:
    """Defence in depth below the adapter's validation: the codec refuses, per step."""
    session = await AmiSession.connect("127.0.0.1", fake.port)
    try:
        await session.login("pbxcal", "s3cret")
        steps = [Step("DBPut", (("Family", "pbxcal"), ("Key", f"fwd/{n}"), ("Val", val)), tag=n)
                 for n, val in (("201", "333"), ("202", "3\r\nAction: Originate"), ("203", "4"))]
        batch = session.start_batch(steps, window=1)
        async with asyncio.timeout(5):
            await batch.done
        assert batch.problems[0] is None and batch.problems[2] is None
        assert batch.problems[1] is not None and "line break" in batch.problems[1]
        assert "Originate" not in batch.problems[1] and b"Originate" not in fake.raw
        assert fake.db == {"/pbxcal/fwd/201": "333", "/pbxcal/fwd/203": "4"}
    finally:
        await session.logoff(1.0)


async def test_a_peer_that_is_not_asterisk_is_unavailable(fake: FakeAmi) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pbx = AmiPbx(config(fake, port=port))
        with pytest.raises(PbxUnavailable, match="banner"):
            await pbx.start(retry=False)
        await pbx.close()
    finally:
        server.close()
        await server.wait_closed()
