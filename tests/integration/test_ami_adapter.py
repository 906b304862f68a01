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
from pbxcal.errors import PbxAuthFailed, UnsafeValue
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
        await pbx.apply({"201": ["333", "+31612345678"], "202": ["300"]})
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
    started = time.monotonic()
    with pytest.raises(PbxAuthFailed, match="refused"):
        await pbx.start(retry=True)
    assert time.monotonic() - started < 5.0
    await asyncio.sleep(3.0)
    assert pbx.login_attempts == 1
    log = asterisk.log_path.read_text(errors="replace")
    assert len(pattern.findall(log)) - failures_before == 1
    assert not pbx.connected
    await pbx.close()


@pytest.mark.parametrize(
    "changes",
    [
        {"201": ["201\r\nAction: Originate"]},
        {"201": ["201&"]},
        {"201": ["abc"]},
        {"201\r\nAction: Originate": ["333"]},
        {"202": ["333"], "201": ["333\r\n\r\nAction: DBDelTree\r\nFamily: pbxcal"]},
    ],
)
async def test_hostile_values_are_refused_and_nothing_is_sent(
    asterisk: Any, changes: dict[str, list[str]]
) -> None:
    async with connected(asterisk) as pbx:
        await pbx.apply({"200": ["300"]})
        before = await astdb(asterisk)
        with pytest.raises(UnsafeValue):
            await pbx.apply(changes)
        assert await astdb(asterisk) == before
        assert "202" not in str(await pbx.read_applied())
        await pbx.apply({"200": []})


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
