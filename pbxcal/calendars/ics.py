"""iCalendar sources: a local file, or an http(s)/webcal URL.

``IcsFileSource`` notices changes by the file's (mtime, size, inode) and reads it in a
thread. ``IcsHttpSource`` sends ``If-None-Match`` / ``If-Modified-Since`` (httpx), reads
at most ``max_bytes``, and maps httpx's errors to ``CalendarUnavailable`` (network,
timeouts, 5xx, 429) or ``CalendarError`` (4xx, oversized bodies, unusable URLs) in
``_get``. ``source_for(source, ...)`` picks the adapter for a link's ``source`` string.

Messages name a URL only in its redacted form (private calendar URLs carry their secret
in the query or user info) and never quote a body.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from pbxcal.calendars import CalendarSource, Fetched, NotModified, Validators
from pbxcal.core.redact import redact_url
from pbxcal.errors import CalendarError, CalendarUnavailable

USER_AGENT = "pbxcal (calendar-driven call forwarding)"


class IcsFileSource:
    """A calendar in a local file."""

    provider = "ics-file"

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    async def fetch(self, previous: Validators | None) -> Fetched | NotModified:
        return await asyncio.to_thread(self._fetch, previous)

    def _fetch(self, previous: Validators | None) -> Fetched | NotModified:
        try:
            stat = self.path.stat()
            version = f"{stat.st_mtime_ns}-{stat.st_size}-{stat.st_ino}"
            if previous is not None and previous.etag == version:
                return NotModified()
            if stat.st_size > self.max_bytes:
                raise CalendarError(f"{self.path}: larger than {self.max_bytes} bytes")
            body = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise CalendarUnavailable(f"{self.path}: file not found") from exc
        except OSError as exc:
            raise CalendarUnavailable(f"{self.path}: cannot read: {exc.strerror}") from exc
        return Fetched(body, Validators(etag=version))


class IcsHttpSource:
    """A calendar published at an http(s) or webcal URL."""

    provider = "ics-http"

    def __init__(self, url: str, client: httpx.AsyncClient, max_bytes: int) -> None:
        scheme = urlsplit(url).scheme
        self.url = {"webcal": "https", "webcals": "https"}.get(scheme, scheme) + url[len(scheme) :]
        self.client = client
        self.max_bytes = max_bytes

    async def fetch(self, previous: Validators | None) -> Fetched | NotModified:
        headers = {"User-Agent": USER_AGENT, "Accept": "text/calendar, */*;q=0.5"}
        if previous is not None and previous.etag:
            headers["If-None-Match"] = previous.etag
        if previous is not None and previous.last_modified:
            headers["If-Modified-Since"] = previous.last_modified
        return await self._get(headers)

    async def _get(self, headers: dict[str, str]) -> Fetched | NotModified:
        where = redact_url(self.url)
        try:
            async with self.client.stream("GET", self.url, headers=headers) as response:
                if response.status_code == 304:
                    return NotModified()
                if response.status_code == 429 or response.status_code >= 500:
                    raise CalendarUnavailable(f"{where}: HTTP {response.status_code}")
                if response.status_code != 200:
                    raise CalendarError(f"{where}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise CalendarError(f"{where}: larger than {self.max_bytes} bytes")
                validators = Validators(
                    etag=response.headers.get("ETag"),
                    last_modified=response.headers.get("Last-Modified"),
                )
                return Fetched(bytes(body), validators)
        except httpx.TimeoutException as exc:
            raise CalendarUnavailable(f"{where}: timed out") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            raise CalendarError(f"{where}: not a usable URL") from exc
        except httpx.HTTPError as exc:
            raise CalendarUnavailable(f"{where}: {_network_problem(exc)}") from exc


def source_for(source: str, client: httpx.AsyncClient, max_bytes: int) -> CalendarSource:
    """The adapter for a link's ``source``: a path, ``file://``, http(s) or webcal URL."""
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https", "webcal", "webcals"):
        return IcsHttpSource(source, client, max_bytes)
    if scheme == "file":
        return IcsFileSource(Path(urlsplit(source).path), max_bytes)
    return IcsFileSource(Path(os.path.expanduser(source)), max_bytes)


def _network_problem(exc: httpx.HTTPError) -> str:
    """What went wrong, without the URL httpx may put in its message."""
    cause = exc.__cause__ or exc.__context__
    reason = getattr(cause, "strerror", None) or getattr(exc, "strerror", None)
    return f"{type(exc).__name__}" + (f" ({reason})" if reason else "")
