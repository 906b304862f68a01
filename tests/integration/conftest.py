"""Fixtures that run a real Asterisk 22 (Debian sid chroot) on loopback.

``asterisk_root`` builds or reuses the cached root (``$PBXCAL_CACHE_DIR`` or
``~/.cache/pbxcal``); ``asterisk`` is one started ``AsteriskSandbox`` per test module.
A missing prerequisite (root, debootstrap, mirror) fails with the fix in the message.
``ast`` is that Asterisk, running and with an empty ``pbxcal`` family, for one test;
``daemons`` stops every ``pbxcal run`` a test started, whatever happened.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonRun

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


@pytest.fixture
def ast(asterisk: AsteriskSandbox) -> Iterator[AsteriskSandbox]:
    """The module's Asterisk, running and with an empty ``pbxcal`` family."""
    if not asterisk.running:
        asterisk.start()
    asterisk.cli("database deltree pbxcal")
    yield asterisk
    if not asterisk.running:
        asterisk.start()


@pytest.fixture
def daemons() -> Iterator[list[DaemonRun]]:
    """Every daemon a test starts is stopped afterwards, whatever happened."""
    started: list[DaemonRun] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Attach the tail of the Asterisk log to a failing test's report."""
    outcome: object = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, AsteriskSandbox) and value.log_path.exists():
            tail = value.log_path.read_text(errors="replace").splitlines()[-80:]
            report.sections.append(("Asterisk log (last 80 lines)", "\n".join(tail)))
            return
