"""WebServer: routes grouped by listen address, the probes and metrics as before.

Real sockets on loopback: with ``[admin] listen`` and ``[portal] listen`` apart, the
metrics, probes (and admin API) answer only on the admin address and the portal pages
and webhooks only on the portal's; with one address everything is one site; a taken
port is a one-line config error naming the option.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pbxcal.config import Config
from pbxcal.config.loader import parse_config
from pbxcal.errors import ConfigError
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.ports import free_port
from pbxcal.web.server import WebServer, listeners


def config(tmp_path: Path, extra: str) -> Config:
    secret = tmp_path / "ami.secret"
    secret.write_text("x")
    secret.chmod(0o600)
    text = f'{extra}\n[pbx.main]\nsecret_file = "{secret}"\n'
    return parse_config(tomllib.loads(text), "test.toml")


async def webhook(_: web.Request) -> web.Response:
    return web.Response(status=202, text="hooked")


async def status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False) as reply:
        return reply.status


async def test_admin_and_portal_listen_apart(tmp_path: Path) -> None:
    http, admin, portal = free_port(), free_port(), free_port()
    cfg = config(
        tmp_path,
        f'[http]\nlisten = "127.0.0.1:{http}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[portal]\npublic_url = "https://pbx.example"\nlisten = "127.0.0.1:{portal}"\n',
    )
    keys = KeyRing([new_key()])
    store = Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}", keys)
    ready = (False, {"pbx": {"main": False}})
    server = WebServer(
        cfg, store, keys, Metrics(), None, {"/webhooks/google": webhook},
        lambda: (True, {}), lambda: ready,
    )  # fmt: skip
    await server.start()
    try:
        async with aiohttp.ClientSession() as client:
            inside, outside = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{portal}"
            assert await status(client, f"{inside}/metrics") == 200
            assert await status(client, f"{inside}/healthz") == 200
            async with client.get(f"{inside}/readyz") as reply:
                assert reply.status == 503
                assert await reply.json() == {"ok": False, "pbx": {"main": False}}
            assert await status(client, f"{inside}/link") == 404
            assert await status(client, f"{outside}/metrics") == 404
            assert await status(client, f"{outside}/readyz") == 404
            assert await status(client, f"{outside}/api/v1/links") == 404
            assert await status(client, f"{outside}/link") == 403  # a page (no session)
            async with client.post(f"{outside}/webhooks/google") as reply:
                assert reply.status == 202
            async with client.post(f"{inside}/webhooks/google") as reply:
                assert reply.status in (404, 405)
            with pytest.raises(aiohttp.ClientConnectionError):
                await status(client, f"http://127.0.0.1:{http}/metrics")
    finally:
        await server.stop()
        store.close()


def test_one_address_is_one_site(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, '[http]\nlisten = "127.0.0.1:9000"\n[portal]\npublic_url = "https://p.example"\n'
    )
    [only] = listeners(cfg)
    assert only.internal and only.public and only.address == "127.0.0.1:9000"
    plain = config(tmp_path, '[http]\nlisten = "127.0.0.1:9000"\n')
    [only] = listeners(plain)
    assert only.internal and only.public


async def test_a_taken_port_names_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(
            tmp_path,
            f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[portal]\npublic_url = "https://p.example"\nlisten = "127.0.0.1:{port}"\n',
        )
        keys = KeyRing([new_key()])
        store = Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}", keys)
        server = WebServer(
            cfg, store, keys, Metrics(), None, {}, lambda: (True, {}), lambda: (True, {}),
        )  # fmt: skip
        with pytest.raises(ConfigError, match=r"\[portal\] listen: cannot listen on"):
            await server.start()
        store.close()


def test_the_portal_needs_a_key_ring(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[portal]\npublic_url = "https://p.example"\n')
    store = Store.open(f"sqlite:///{tmp_path / 's.sqlite3'}")
    with pytest.raises(ConfigError, match=r"\[portal\] needs \[secrets\]"):
        WebServer(cfg, store, None, Metrics(), None, {}, lambda: (True, {}), lambda: (True, {}))
    store.close()
