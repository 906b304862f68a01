"""AmiPbx against a real Asterisk 22 (the sandbox from ``pbxcal.testing.asterisk``).

Logs in as the shipped least-privilege account (``contrib/asterisk/manager.d/
pbxcal.conf``: read = system, write = system,call) and checks what Asterisk really
holds through its own CLI, never through the adapter under test alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pbxcal.cli.pbx_commands import format_status_json, format_status_table, pbx_status
from pbxcal.errors import PbxAuthFailed
from pbxcal.pbx import ApplyResult
from pbxcal.pbx.ami import AmiConfig, AmiPbx

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def make_config(asterisk: Any, **overrides: Any) -> AmiConfig:
    fields: dict[str, Any] = dict(
        name="sandbox", host=asterisk.ami_host, port=asterisk.ami_port,
        username=asterisk.ami_username, secret=asterisk.ami_secret, action_timeout=5.0,
        ping_interval=1.0, ping_timeout=2.0, backoff_initial=0.2, backoff_max=2.0,
    )
    fields.update(overrides)
    return AmiConfig(**fields)


@contextlib.asynccontextmanager
async def connected(asterisk: Any, **overrides: Any) -> AsyncIterator[AmiPbx]:
    pbx = AmiPbx(make_config(asterisk, **overrides))
    await pbx.start()
    try:
        yield pbx
    finally:
        await pbx.close()


async def cli(asterisk: Any, command: str) -> str:
    return str(await asyncio.to_thread(asterisk.cli, command))


async def astdb(asterisk: Any) -> dict[str, str]:
    """``database show pbxcal`` as key -> value, read through Asterisk's own CLI."""
    out = await cli(asterisk, "database show pbxcal")
    rows = re.findall(r"^(/pbxcal/\S+)\s*:\s*(\S*)\s*$", out, re.MULTILINE)
    return dict(rows)


async def devstate(asterisk: Any, ext: str) -> str:
    out = await cli(asterisk, "devstate list")
    match = re.search(rf"Name: 'Custom:pbxcal{ext}'\s+State: '([A-Z_]+)'", out)
    return match.group(1) if match else "absent"


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.fixture(autouse=True)
def empty_family(asterisk: Any) -> None:
    """Tests share one Asterisk per module: each starts with no pbxcal keys."""
    asterisk.cli("database deltree pbxcal")


async def test_set_read_back_and_clear(asterisk: Any) -> None:
    async with connected(asterisk) as pbx:
        assert await pbx.apply({"201": ["333", "+31612345678"], "202": ["300"]}) == ApplyResult()
        assert await astdb(asterisk) == {"/pbxcal/fwd/201": "+31612345678&333",
                                         "/pbxcal/fwd/202": "300"}
        assert await pbx.read_applied() == {"201": ("+31612345678", "333"), "202": ("300",)}
        await pbx.apply({"201": []})
        assert await astdb(asterisk) == {"/pbxcal/fwd/202": "300"}
        assert await pbx.read_applied() == {"202": ("300",)}
        await pbx.apply({"202": []})
        assert await pbx.read_applied() == {}


async def test_apply_is_idempotent(asterisk: Any) -> None:
    async with connected(asterisk) as pbx:
        for _ in range(2):
            await pbx.apply({"201": ["333"]})
        assert await pbx.read_applied() == {"201": ("333",)}
        for _ in range(2):
            await pbx.apply({"201": []})
        await pbx.apply({"209": []})  # never set: clearing it is not an error
        assert await pbx.read_applied() == {}
        assert await astdb(asterisk) == {}


async def test_read_extensions_lists_the_pjsip_endpoints_that_are_extensions(
    asterisk: Any,
) -> None:
    async with connected(asterisk) as pbx:
        # The sandbox has endpoints 100, 201, 202, 300 and "pstn" (not an extension).
        assert await pbx.read_extensions() == frozenset({"100", "201", "202", "300"})


async def test_routing_is_answered_before_any_lamp(asterisk: Any) -> None:
    answers: list[str] = []
    pbx = AmiPbx(make_config(asterisk, window=16),
                 on_action=lambda action, result, seconds: answers.append(action))
    await pbx.start()
    try:
        result = await pbx.apply({str(5000 + n): ["300"] for n in range(100)})
        assert result.ok
        batch = [a for a in answers if a in ("DBPut", "Setvar")]
        assert batch == ["DBPut"] * 100 + ["Setvar"] * 100
        assert await devstate(asterisk, "5099") == "INUSE"
        assert (await pbx.apply({str(5000 + n): [] for n in range(100)})).ok
    finally:
        await pbx.close()


async def test_device_state_follows_the_forwarding(asterisk: Any) -> None:
    async with connected(asterisk) as pbx:
        await pbx.apply({"201": ["333"]})
        assert await devstate(asterisk, "201") == "INUSE"
        await pbx.apply({"201": []})
        assert await devstate(asterisk, "201") == "NOT_INUSE"


async def test_reconnects_by_itself_after_asterisk_restart(asterisk: Any) -> None:
    logins: list[float] = []
    losses: list[float] = []
    pbx = AmiPbx(make_config(asterisk))

    async def up() -> None:
        logins.append(time.monotonic())

    async def down() -> None:
        losses.append(time.monotonic())

    pbx.on_connected.append(up)
    pbx.on_disconnected.append(down)
    await pbx.start()
    try:
        await pbx.apply({"201": ["+31612345678", "333"]})
        await eventually(lambda: len(logins) == 1)
        # On the loop's own thread on purpose: an Asterisk started from a worker thread
        # is killed when that thread exits (seen with the sandbox). The loop stalls for
        # the restart; the adapter must notice the dead socket afterwards by itself.
        asterisk.restart()
        await eventually(lambda: len(losses) == 1 and len(logins) == 2, timeout=30)
        await pbx.wait_connected(10)
        assert await pbx.read_applied() == {"201": ("+31612345678", "333")}  # AstDB persists
        await pbx.apply({"202": ["300"]})
        assert (await astdb(asterisk))["/pbxcal/fwd/202"] == "300"
    finally:
        await pbx.close()


async def test_frozen_asterisk_is_detected_by_keepalive(asterisk: Any) -> None:
    """SIGSTOP keeps the TCP connection up but nothing answers: a half-open peer."""
    pid = asterisk._proc.pid  # chroot execs asterisk: this is Asterisk's own pid
    async with connected(asterisk, ping_interval=0.5, ping_timeout=1.0) as pbx:
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            await eventually(lambda: not pbx.connected, timeout=10)
            assert time.monotonic() - started < 4.0
        finally:
            os.kill(pid, signal.SIGCONT)
        await pbx.wait_connected(15)
        await pbx.apply({"201": ["333"]})
        assert await pbx.read_applied() == {"201": ("333",)}


async def test_wrong_secret_is_auth_failed_without_retry_storm(asterisk: Any) -> None:
    pattern = re.compile(r"failed to authenticate as 'pbxcal'")
    failures_before = len(pattern.findall(asterisk.log_path.read_text(errors="replace")))
    pbx = AmiPbx(make_config(asterisk, secret="not-the-secret", backoff_initial=0.05))
    with pytest.raises(PbxAuthFailed, match="refused"):
        await pbx.start(retry=True)
    # Nothing is scheduled that could try again (no task but this test's own).
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert pbx.login_attempts == 1
    log = asterisk.log_path.read_text(errors="replace")
    assert len(pattern.findall(log)) - failures_before == 1
    assert not pbx.connected
    await pbx.close()


@pytest.mark.parametrize(
    ("changes", "bad"),
    [
        ({"202": ["201\r\nAction: Originate"]}, "202"),
        ({"202": ["201&"]}, "202"),
        ({"202": ["abc"]}, "202"),
        ({"202": ["+0612345678"]}, "202"),
        ({"201\r\nAction: Originate": ["333"]}, "201\r\nAction: Originate"),
        ({"٢٠٢": ["333"]}, "٢٠٢"),
        ({"202": ["333\r\n\r\nAction: DBDelTree\r\nFamily: pbxcal"]}, "202"),
    ],
)
async def test_a_hostile_value_refuses_its_extension_and_the_rest_is_applied(
    asterisk: Any, changes: dict[str, list[str]], bad: str
) -> None:
    async with connected(asterisk) as pbx:
        await pbx.apply({"200": ["300"]})
        result = await pbx.apply({"201": ["333"], **changes})
        assert list(result.refused) == [bad]
        assert await astdb(asterisk) == {"/pbxcal/fwd/200": "300", "/pbxcal/fwd/201": "333"}
        assert await pbx.read_applied() == {"200": ("300",), "201": ("333",)}
        await pbx.apply({"200": [], "201": []})


async def first_accept(host: str, port: int, timeout: float) -> float:
    """Monotonic time at which ``host:port`` first accepts a TCP connection (10 ms probe)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            at = time.monotonic()
            writer.close()
            return at


async def test_reconnected_within_2s_of_asterisk_accepting_again(asterisk: Any) -> None:
    """Issue #7: with the default settings pbxcal was back up to 30 s after Asterisk."""
    config = AmiConfig(name="sandbox", host=asterisk.ami_host, port=asterisk.ami_port,
                       username=asterisk.ami_username, secret=asterisk.ami_secret)
    pbx = AmiPbx(config)  # default backoff and retry settings: what operators get
    up, down = asyncio.Event(), asyncio.Event()

    async def on_up() -> None:
        up.set()

    async def on_down() -> None:
        down.set()

    pbx.on_connected.append(on_up)
    pbx.on_disconnected.append(on_down)
    await pbx.start()
    try:
        await asyncio.wait_for(up.wait(), 10)
        up.clear()
        asterisk.stop()  # on the loop's thread: the sandbox must start/stop from here
        await asyncio.wait_for(down.wait(), 10)
        # The outage itself: long enough for an exponential backoff to have grown to
        # several seconds between attempts (0.5 s doubling: the 5th wait is 4-8 s).
        await asyncio.sleep(6.0)
        asterisk.start(wait=False)
        accepted = await first_accept(asterisk.ami_host, asterisk.ami_port, 60)
        await asyncio.wait_for(up.wait(), 30)
        took = time.monotonic() - accepted
        await asyncio.to_thread(asterisk.wait_ready)
        print(f"reconnected {took:.3f}s after Asterisk's AMI port accepted again")
        assert took < 2.0
        assert (await pbx.apply({"201": ["300"]})).ok
    finally:
        await pbx.close()
        if not asterisk.running:
            asterisk.start()


async def test_pbx_status_command(asterisk: Any) -> None:
    async with connected(asterisk) as pbx:
        await pbx.apply({"201": ["333", "+31612345678"], "1000": ["300"]})
        status = await pbx_status(pbx)
        assert status == {"201": ["+31612345678", "333"], "1000": ["300"]}
        table = format_status_table(status, "sandbox")
        assert "Custom:pbxcal201" in table and "2 forwardings active on sandbox" in table
        assert format_status_json(status, "sandbox").startswith('{"pbx": "sandbox"')
        await pbx.apply({"201": [], "1000": []})
        assert format_status_table(await pbx_status(pbx)) == "no forwardings active\n"
