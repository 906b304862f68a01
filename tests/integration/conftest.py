"""Fixtures that run a real Asterisk 22 (Debian sid chroot) on loopback.

``asterisk_root`` builds or reuses the cached root (``$PBXCAL_CACHE_DIR`` or
``~/.cache/pbxcal``); ``asterisk`` is one started ``AsteriskSandbox`` per test module.
A missing prerequisite (root, debootstrap, mirror) fails with the fix in the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.testing.asterisk import AsteriskSandbox, SandboxError, ensure_root


@pytest.fixture(scope="session")
def asterisk_root() -> Path:
    try:
        return ensure_root()
    except SandboxError as exc:
        pytest.fail(f"Asterisk sandbox unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def asterisk(asterisk_root: Path, request: pytest.FixtureRequest) -> Iterator[AsteriskSandbox]:
    name = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")[:30]
    sandbox = AsteriskSandbox(asterisk_root, name)
    try:
        sandbox.start()
    except SandboxError as exc:
        sandbox.close()
        pytest.fail(f"Asterisk sandbox did not start: {exc}", pytrace=False)
    try:
        yield sandbox
    finally:
        sandbox.close()
