"""A real browser for tests: Debian's chromium driven by Playwright's sync API.

What it does: ``Browser()`` launches ``/usr/bin/chromium`` headless through Playwright's
``executable_path`` (Playwright never downloads a browser here) with flags that keep it
quiet and offline (no sandbox, no GPU, no QUIC, no first-run, background networking,
component updates or sync), and makes contexts at the two sizes the portal is checked
at: ``PHONE`` (390 x 844, touch, mobile) and ``DESKTOP`` (1280 x 800).
``shoot(page, test, name, lang)`` saves the page at both widths as
``test-artifacts/screenshots/<test>-<name>-<lang>-<width>.png`` (full page, resized in
place so the page's state, a form with an error say, stays as it is) and checks that
nothing is wider than the screen (no sideways scrolling on a phone).

A missing chromium or Playwright is a ``BrowserMissing`` error that says how to fix it
(``scripts/setup`` installs both), never a skip.

Use it from synchronous tests only (Playwright's sync API refuses to run inside an
event loop): ``with Browser() as browser: page = browser.new_page(DESKTOP, "en")``.
Must not be imported by the daemon. Start at ``Browser``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Where screenshots go (relative to the working directory, the repository when pytest
#: runs there); ``$PBXCAL_TEST_ARTIFACTS`` moves it.
ARTIFACTS = Path(os.environ.get("PBXCAL_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"


@dataclass(frozen=True)
class Viewport:
    name: str
    width: int
    height: int
    mobile: bool


PHONE = Viewport("phone", 390, 844, mobile=True)
DESKTOP = Viewport("desktop", 1280, 800, mobile=False)
VIEWPORTS = (PHONE, DESKTOP)


class BrowserMissing(RuntimeError):
    """chromium or Playwright is not installed (the message says how to fix it)."""


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", part).strip("-") or "page"


class Browser:
    """One headless chromium for a test (or a module); see the module docstring."""

    def __init__(self, *, artifacts: Path = ARTIFACTS, timeout_ms: int = 20_000) -> None:
        self.artifacts = artifacts
        self.timeout_ms = timeout_ms
        self._playwright: Any = None
        self._browser: Any = None
        self.saved: list[Path] = []

    def start(self) -> Browser:
        if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
            raise BrowserMissing(
                f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; "
                "scripts/setup does it)"
            )
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            raise BrowserMissing(
                "playwright is not installed in this environment: run scripts/setup "
                "(pip install playwright; no browser download is needed)"
            ) from exc
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
            )
        except Exception:
            self._playwright.stop()
            self._playwright = None
            raise
        return self

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def new_context(self, viewport: Viewport = DESKTOP, lang: str = "en", **options: Any) -> Any:
        """A fresh context (own cookies) at ``viewport``, asking for ``lang`` pages
        (``Accept-Language`` follows the locale)."""
        if self._browser is None:
            raise RuntimeError("Browser.start() first")
        context = self._browser.new_context(
            viewport={"width": viewport.width, "height": viewport.height},
            is_mobile=viewport.mobile,
            has_touch=viewport.mobile,
            locale=lang,
            **options,
        )
        context.set_default_timeout(self.timeout_ms)
        return context

    def new_page(self, viewport: Viewport = DESKTOP, lang: str = "en", **options: Any) -> Any:
        """A page in a fresh context (see ``new_context``)."""
        return self.new_context(viewport, lang, **options).new_page()

    def shoot(self, page: Any, test: str, name: str, lang: str) -> list[Path]:
        """Screenshots of ``page`` as it is, at the phone and the desktop width.

        Raises ``AssertionError`` when the page is wider than the phone's screen.
        """
        self.artifacts.mkdir(parents=True, exist_ok=True)
        before = page.viewport_size
        paths = []
        try:
            for viewport in VIEWPORTS:
                page.set_viewport_size({"width": viewport.width, "height": viewport.height})
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, (
                    f"{name} ({lang}) is {overflow}px wider than a {viewport.width}px screen"
                )
                path = self.artifacts / (
                    f"{_safe(test)}-{_safe(name)}-{_safe(lang)}-{viewport.width}.png"
                )
                page.screenshot(path=str(path), full_page=True)
                paths.append(path)
        finally:
            if before:
                page.set_viewport_size(before)
        self.saved.extend(paths)
        return paths
