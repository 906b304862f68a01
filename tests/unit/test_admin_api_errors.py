"""The admin API's last lines of defence, on a real socket (aiohttp's TestServer): a
store that fails is a JSON 503, an unexpected exception a JSON 500 without its text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxcal.admin.tokens import create_admin_token
from pbxcal.config import Config, PbxConfig
from pbxcal.errors import StoreError
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.store import Store
from pbxcal.web import WebContext
from pbxcal.web.api import add_routes
from pbxcal.web.i18n import Templates


@pytest.fixture
async def api(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Store, str]]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    config = Config(pbxes={"main": PbxConfig("main")})
    _, token = create_admin_token(store, "ops", None, ["main"])
    ctx = WebContext(
        config=config, store=store, keys=None, sync=None, clock=SystemClock(),
        metrics=Metrics(), templates=Templates(("en",)),
    )  # fmt: skip
    app = web.Application()
    add_routes(app, ctx)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store, token
    finally:
        await client.close()
        store.close()


async def test_store_failure_is_a_json_503(
    api: tuple[TestClient[web.Request, web.Application], Store, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, store, token = api

    def broken(*_: object, **__: object) -> None:
        raise StoreError("cannot read store /x: disk I/O error")

    monkeypatch.setattr(store, "list_invitations", broken)
    answer = await client.get("/api/v1/invitations", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 503
    assert await answer.json() == {
        "error": "store-unavailable", "detail": "the store cannot be used right now",
    }  # fmt: skip


async def test_unexpected_error_is_a_json_500_without_its_text(
    api: tuple[TestClient[web.Request, web.Application], Store, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, store, token = api

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "list_links", broken)
    answer = await client.get("/api/v1/links", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 500
    body = await answer.json()
    assert body["error"] == "internal" and "secret" not in body["detail"]
