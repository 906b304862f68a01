"""Benchmark: 10,000 simultaneous forwardings through AmiPbx vs the raw pipelined DBPut floor.

Starts its own sandboxed Asterisk (``pbxcal.testing.asterisk``; needs root), then:

* raw serial:     login on a plain asyncio socket, N DBPut one at a time (context only);
* raw pipelined:  login, write all N DBPut at once, read until N responses arrived: the
                  floor, the fastest Asterisk can take N forwardings on one connection;
* raw same:       the same with the 2N actions of a set with BLF (DBPut + Setvar
                  DEVICE_STATE per forwarding): Asterisk's own cost of all of it;
* routed:         ``AmiPbx.apply`` of N forwardings, until the *last DBPut is answered*:
                  from then on every call routes right (issue #8 item 4, goal <= 3x floor);
* lamps:          the same call, until it returned: the last BLF lamp is set too;
* clear routed / clear lamps: the same for clearing the N forwardings (DBDel);
* no-BLF set:     ``device_state = false``: N DBPut only;
* adapter read:   ``AmiPbx.read_applied`` with N forwardings stored.

Baseline (issue #8, main before routing-first): the last forwarding was routed 4.9x after
the raw floor, because every DBPut was paired with its Setvar on the wire. The machine
may be shared: every figure is the best of ``--repeat`` interleaved rounds.

    .venv/bin/python bench/bench_ami.py [-n 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace

from pbxcal.pbx.ami import AmiConfig, AmiPbx
from pbxcal.testing.asterisk import AsteriskSandbox, ensure_root

TARGETS = ["+31612345678", "333"]
VALUE = "&".join(TARGETS)


def extensions(n: int) -> list[str]:
    return [str(100000 + i) for i in range(n)]


async def raw_login(host: str, port: int, user: str, secret: str
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readline()  # banner
    writer.write(f"Action: Login\r\nUsername: {user}\r\nSecret: {secret}\r\n"
                 "Events: off\r\nActionID: login\r\n\r\n".encode())
    reply = await reader.readuntil(b"\r\n\r\n")
    if b"Success" not in reply:
        raise SystemExit(f"raw login failed: {reply!r}")
    return reader, writer


def setvar(i: int, ext: str) -> bytes:
    return (f"Action: Setvar\r\nActionID: {i}\r\nVariable: DEVICE_STATE(Custom:pbxcal{ext})"
            "\r\nValue: INUSE\r\n\r\n").encode()


def dbput(i: int, ext: str) -> bytes:
    return (f"Action: DBPut\r\nActionID: {i}\r\nFamily: pbxcal\r\nKey: fwd/{ext}\r\n"
            f"Val: {VALUE}\r\n\r\n").encode()


async def count_responses(reader: asyncio.StreamReader, n: int) -> None:
    seen = errors = 0
    buffer = b""
    while seen < n:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise SystemExit("raw: connection closed early")
        buffer += chunk
        *messages, buffer = buffer.split(b"\r\n\r\n")
        for message in messages:
            if message.startswith(b"Response:"):
                seen += 1
                errors += not message.startswith(b"Response: Success")
    if errors:
        raise SystemExit(f"raw: {errors} DBPut errors")


async def raw_pipelined(host: str, port: int, user: str, secret: str, n: int,
                        with_state: bool = False) -> float:
    reader, writer = await raw_login(host, port, user, secret)
    parts = []
    for i, ext in enumerate(extensions(n)):
        parts.append(dbput(2 * i, ext))
        if with_state:
            parts.append(setvar(2 * i + 1, ext))
    started = time.perf_counter()
    writer.write(b"".join(parts))
    await count_responses(reader, len(parts))
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


async def raw_serial(host: str, port: int, user: str, secret: str, n: int) -> float:
    reader, writer = await raw_login(host, port, user, secret)
    started = time.perf_counter()
    for i, ext in enumerate(extensions(n)):
        writer.write(dbput(i, ext))
        await count_responses(reader, 1)
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


async def adapter(config: AmiConfig, n: int) -> dict[str, float]:
    """Times of one set / read / clear round: routed (last DBPut/DBDel answered) and lamps
    (apply returned) separately."""
    last_routing = [0.0]

    def observe(action: str, result: str, seconds: float) -> None:
        if action in ("DBPut", "DBDel"):
            last_routing[0] = time.perf_counter()

    pbx = AmiPbx(config, on_action=observe)
    await pbx.start(retry=False)
    times: dict[str, float] = {}
    try:
        exts = extensions(n)
        started = time.perf_counter()
        result = await pbx.apply({ext: TARGETS for ext in exts})
        times["lamps"] = time.perf_counter() - started
        times["routed"] = last_routing[0] - started
        assert result.ok, list(result.refused.items())[:3]
        started = time.perf_counter()
        applied = await pbx.read_applied()
        times["adapter read"] = time.perf_counter() - started
        assert len(applied) == n, len(applied)
        started = time.perf_counter()
        result = await pbx.apply({ext: [] for ext in exts})
        times["clear lamps"] = time.perf_counter() - started
        times["clear routed"] = last_routing[0] - started
        assert result.ok
        assert await pbx.read_applied() == {}
    finally:
        await pbx.close()
    return times


async def run(sandbox: AsteriskSandbox, n: int, repeat: int) -> None:
    host, port = sandbox.ami_host, sandbox.ami_port
    user, secret = sandbox.ami_username, sandbox.ami_secret
    config = AmiConfig(name="bench", host=host, port=port, username=user, secret=secret,
                       action_timeout=30.0, ping_interval=60.0)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(value, best.get(name, value))

    serial_n = min(n, 2000)
    for _ in range(repeat):
        keep("raw serial", await raw_serial(host, port, user, secret, serial_n) * n / serial_n)
        keep("raw pipelined", await raw_pipelined(host, port, user, secret, n))
        keep("raw same", await raw_pipelined(host, port, user, secret, n, with_state=True))
        for name, seconds in (await adapter(config, n)).items():
            keep(name, seconds)
        no_blf = await adapter(replace(config, device_state=False), n)
        keep("no-BLF set", no_blf["lamps"])
        keep("no-BLF clear", no_blf["clear lamps"])
    raw = best["raw pipelined"]
    print(f"{n} forwardings, best of {repeat}, Asterisk {sandbox.name} on {host}:{port}")
    notes = {
        "raw serial": f"(measured on {serial_n}, scaled)" if serial_n != n else "",
        "raw pipelined": f"{n} DBPut: the floor",
        "raw same": f"{2 * n} actions: DBPut + Setvar DEVICE_STATE, paired",
        "routed": f"apply set: last of {n} DBPut answered (routing first)",
        "lamps": f"apply set: returned, last of {n} Setvar DEVICE_STATE answered",
        "adapter read": "1 DBGetTree",
        "clear routed": f"apply clear: last of {n} DBDel answered",
        "clear lamps": f"apply clear: returned, last of {n} Setvar answered",
        "no-BLF set": f"{n} DBPut (device_state = false)",
        "no-BLF clear": f"{n} DBDel (device_state = false)",
    }
    for name in notes:
        seconds = best[name]
        print(f"  {name:<14} {seconds:8.3f} s  {n / seconds:9.0f}/s  "
              f"{seconds / raw:5.2f}x raw pipelined  {notes[name]}")
    routed = max(best["routed"], best["clear routed"]) / raw
    verdict = "OK" if routed <= 3.0 else "OVER TARGET"
    print(f"last forwarding routed vs raw pipelined DBPut floor: {routed:.2f}x "
          f"(target <= 3x; baseline before routing-first: 4.9x): {verdict}")
    print(f"last lamp vs raw floor: {best['lamps'] / raw:.2f}x; vs raw with the same actions: "
          f"{best['lamps'] / best['raw same']:.2f}x (the adapter's own overhead)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with AsteriskSandbox(ensure_root(), name="pbxcal-bench") as sandbox:
        asyncio.run(run(sandbox, args.n, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
