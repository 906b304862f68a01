"""The iCalendar sources: files by (mtime, size, inode), URLs with conditional requests.

The HTTP tests run a real aiohttp server on loopback and the real httpx client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from pbxcal.calendars import Fetched, NotModified
from pbxcal.calendars.ics import IcsFileSource, IcsHttpSource, source_for
from pbxcal.errors import CalendarError, CalendarUnavailable

BODY = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nEND:VCALENDAR\r\n"


async def test_file_source_reads_then_reports_unchanged_then_rereads(tmp_path: Path) -> None:
    path = tmp_path / "cal.ics"
    path.write_bytes(BODY)
    source = IcsFileSource(path, max_bytes=10_000)
    first = await source.fetch(None)
    assert isinstance(first, Fetched) and first.body == BODY
    assert isinstance(await source.fetch(first.validators), NotModified)
    path.write_bytes(BODY + b"\r\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    again = await source.fetch(first.validators)
    assert isinstance(again, Fetched) and again.body == BODY + b"\r\n"


async def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CalendarUnavailable, match="file not found"):
        await IcsFileSource(tmp_path / "missing.ics", 10_000).fetch(None)
    big = tmp_path / "big.ics"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(CalendarError, match="larger than 1000 bytes"):
        await IcsFileSource(big, 1000).fetch(None)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def calendar(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=BODY, headers={"ETag": '"v1"',
                                                "Last-Modified": "Sat, 21 Nov 2026 10:00:00 GMT"})

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 50_000)

    app = web.Application()
    app.router.add_get("/cal.ics", calendar)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/huge.ics", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_http_source_uses_etag_for_conditional_requests(
    server: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = server
    async with httpx.AsyncClient() as client:
        source = IcsHttpSource(f"{base}/cal.ics", client, 10_000)
        first = await source.fetch(None)
        assert isinstance(first, Fetched) and first.body == BODY
        assert first.validators.etag == '"v1"'
        assert isinstance(await source.fetch(first.validators), NotModified)
    assert "If-None-Match" not in seen[0]
    assert seen[1]["If-None-Match"] == '"v1"'
    assert seen[1]["If-Modified-Since"] == "Sat, 21 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("code", "error"), [(500, CalendarUnavailable), (503, CalendarUnavailable),
                        (429, CalendarUnavailable), (404, CalendarError), (401, CalendarError)]
)
async def test_http_status_codes_map_to_pbxcal_errors(
    server: tuple[str, list[dict[str, str]]], code: int, error: type[Exception]
) -> None:
    base, _ = server
    async with httpx.AsyncClient() as client:
        with pytest.raises(error, match=f"HTTP {code}"):
            await IcsHttpSource(f"{base}/status/{code}?token=SECRET", client, 10_000).fetch(None)


async def test_http_errors_never_show_the_private_query(
    server: tuple[str, list[dict[str, str]]],
) -> None:
    base, _ = server
    async with httpx.AsyncClient() as client:
        with pytest.raises(CalendarError) as caught:
            await IcsHttpSource(f"{base}/status/403?token=SECRET", client, 10_000).fetch(None)
    assert "SECRET" not in str(caught.value)


async def test_http_oversized_and_unreachable(server: tuple[str, list[dict[str, str]]]) -> None:
    base, _ = server
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(CalendarError, match="larger than"):
            await IcsHttpSource(f"{base}/huge.ics", client, 10_000).fetch(None)
        with pytest.raises(CalendarUnavailable):
            await IcsHttpSource("http://127.0.0.1:9/cal.ics", client, 10_000).fetch(None)


async def test_source_for_picks_the_adapter(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        webcal = source_for("webcal://cal.example/a.ics", client, 100)
        assert isinstance(webcal, IcsHttpSource) and webcal.url == "https://cal.example/a.ics"
        assert isinstance(source_for(f"file://{tmp_path}/a.ics", client, 100), IcsFileSource)
        plain = source_for(str(tmp_path / "a.ics"), client, 100)
        assert isinstance(plain, IcsFileSource) and plain.path == tmp_path / "a.ics"
