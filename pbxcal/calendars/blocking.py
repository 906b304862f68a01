"""A bounded pool for blocking provider libraries (google-api-python-client, caldav,
exchangelib), with a timeout on every call.

``BlockingCalls.run(function, *args, timeout=...)`` runs ``function`` in one of at most
``workers`` threads and raises ``CalendarUnavailable`` when it has not answered within
``timeout`` seconds, so a provider that hangs never delays a boundary, the event loop or
another link for longer than that. A call that hangs keeps its thread until the library
gives up (set the library's own socket timeouts too); the bound on workers keeps a
hanging provider from taking every thread of the process.

Must not do: run anything on the event loop, or swallow the function's own exceptions
(the adapter maps those). Start reading at ``BlockingCalls.run``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pbxcal.errors import CalendarUnavailable

T = TypeVar("T")

#: Threads for all blocking provider calls of one process.
DEFAULT_WORKERS = 8


class BlockingCalls:
    """A bounded thread pool with a timeout per call. See the module docstring."""

    def __init__(self, workers: int = DEFAULT_WORKERS, name: str = "pbxcal-provider") -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(
        self, function: Callable[..., T], *args: Any, timeout: float, what: str = "call"  # noqa: ASYNC109 - the API
    ) -> T:
        """``function(*args)`` in a worker thread; ``CalendarUnavailable`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(function, *args))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise CalendarUnavailable(f"{what}: no answer within {timeout:g}s") from exc

    def close(self) -> None:
        """Stop taking calls; calls still running finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
