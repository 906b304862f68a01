"""The portal/admin store tests (``tests/unit/test_admin_store.py``) again, on a real
PostgreSQL: above all the atomic single use of invitations and OAuth flows, where 20
threads on 20 pooled connections race for one row under READ COMMITTED.

Same arrangement as ``test_secrets_postgres.py``: one server for the module (Debian's
binaries via ``postgres.running_postgres``), a fresh database per test through the
overridden ``store_url`` fixture. A missing server package fails with the hint, never skips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from postgres import database_fixture, server_fixture  # noqa: E402
from test_admin_store import *  # noqa: E402, F403 - the shared tests and fixtures

pytestmark = pytest.mark.integration

postgres_server = server_fixture()
store_url = database_fixture("admin_test")  # overrides the SQLite one
