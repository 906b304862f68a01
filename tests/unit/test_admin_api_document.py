"""The checked-in OpenAPI document (``pbxcal/web/openapi.json``) and the admin API's
routes agree: every documented operation is served and every served route is
documented, with the same methods; every error answer is the documented ``Error``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aiohttp import web

from pbxcal.config import Config
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.store import Store
from pbxcal.web import WebContext
from pbxcal.web.api import OPENAPI_FILE, PREFIX, add_routes, openapi_document
from pbxcal.web.i18n import Templates

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def served_operations(tmp_path: Path) -> set[tuple[str, str]]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        ctx = WebContext(
            config=Config(), store=store, keys=None, sync=None, clock=SystemClock(),
            metrics=Metrics(), templates=Templates(("en",)),
        )  # fmt: skip
        app = web.Application()
        add_routes(app, ctx)
        found = set()
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter")
            if path and path.startswith(PREFIX) and route.method != "HEAD":
                found.add((route.method.lower(), path))
        return found
    finally:
        store.close()


def documented_operations() -> set[tuple[str, str]]:
    document = openapi_document()
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_routes_and_document_agree(tmp_path: Path) -> None:
    served = served_operations(tmp_path)
    documented = documented_operations()
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert len(served) == 18


def test_document_is_openapi_3_1_with_bearer_security_and_json_errors() -> None:
    document = json.loads(Path(OPENAPI_FILE).read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
    }  # fmt: skip
    assert document["security"] == [{"bearer": []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            if path != f"{PREFIX}/openapi.json":
                assert "401" in operation["responses"], (method, path)
            for status, answer in operation["responses"].items():
                schema = answer["content"]["application/json"]["schema"]
                if status.startswith(("4", "5")):
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
            assert re.fullmatch(r"[a-z][A-Za-z]+", operation["operationId"])


def test_openapi_file_is_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"web/openapi.json"' in pyproject
