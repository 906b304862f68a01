"""One AMI connection: login, FullyBooted, keepalive, single actions, pipelined batches.

``AmiSession`` is an ``asyncio.Protocol`` over one TCP connection to Asterisk. It frames
bytes with ``pbxcal.pbx.ami.codec``, routes each answer to whoever waits for it by
``ActionID``, and offers:

* ``request(step)`` / ``request_list(step)``: one action, its ``Response`` (and, for
  list actions like ``DBGetTree``, the events up to ``EventList: Complete``);
* ``start_batch(steps, window)``: many actions pipelined, at most ``window`` unanswered
  at a time, written in chunks straight from the protocol callback as answers come in
  (no task switch per action, one ``write`` per chunk); answers are matched by the
  index in their ActionID. 10,000 forwardings must go at about Asterisk's own speed;
* ``login``, ``wait_booted`` (Asterisk answers AMI before all modules are loaded; its
  ``FullyBooted`` event says when it is ready) and ``keepalive`` (``Ping`` every
  interval; no answer within the timeout closes the session: a half-open peer).

A session is used once: when it ends (socket closed, ``Shutdown`` event, failed ping,
``close()``) every waiter fails with ``SessionClosed`` and *nothing is ever re-sent*: a
forwarding written minutes late after a reconnect could be wrong, and the adapter
re-applies the desired state itself. The adapter makes a new session to reconnect.

Must not: time out single actions by itself (callers wrap ``asyncio.timeout``; the
adapter maps every exception to pbxcal's error tree in one place), retry, reconnect,
log or ``repr`` a secret (the Login step is built here and never logged). Start reading
at ``AmiSession.start_batch`` and ``Batch``, then ``AmiSession._dispatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pbxcal.errors import UnsafeValue
from pbxcal.pbx.ami.codec import Message, MessageParser, ProtocolError, encode_action

__all__ = [
    "ActionObserver",
    "AmiSession",
    "Batch",
    "LoginRefused",
    "SessionClosed",
    "Step",
    "refusal",
]

#: ``observe(action, result, seconds)``; result is ``success``, ``error``, ``timeout``
#: or ``disconnected``. Feeds ``pbxcal_ami_actions_total`` and friends.
ActionObserver = Callable[[str, str, float], None]

_T = TypeVar("_T")
_ID_PREFIX = "pbxcal."
_BATCH_PREFIX = "pbxcal.b"


class SessionClosed(Exception):
    """The session ended while something waited on it (internal; mapped by the adapter)."""


class LoginRefused(Exception):
    """Asterisk answered ``Login`` with an error. ``auth`` is False for "try again later"
    answers such as "Asterisk is shutting down"."""

    def __init__(self, message: str, *, auth: bool) -> None:
        super().__init__(message)
        self.auth = auth


@dataclass(frozen=True, slots=True)
class Step:
    """One action to send, and which ``Error`` answers still mean "done" for it."""

    action: str
    fields: tuple[tuple[str, str], ...] = ()
    #: Lower-case fragments of an ``Error`` message that count as success (idempotency).
    tolerate: tuple[str, ...] = ()
    #: Free for the caller: which extension this step is for, for example.
    tag: str = ""

    def describe(self) -> str:
        """``DBPut Family=pbxcal Key=fwd/201``: the action and the headers that name what
        it touches (never ``Secret`` or a value)."""
        shown = [f"{k}={v}" for k, v in self.fields if k in ("Family", "Key", "Variable")]
        return " ".join([self.action, *shown])


def refusal(step: Step, reply: Message) -> str | None:
    """``None`` if ``reply`` means done for ``step``, else a one-line reason."""
    if reply.response == "Success":
        return None
    text = reply.message or reply.response or "no answer"
    if any(fragment in text.lower() for fragment in step.tolerate):
        return None
    return f"AMI {step.describe()} refused: {text}"


@dataclass(slots=True)
class _Call:
    """One single action waiting for its answer (and its list events)."""

    future: asyncio.Future[tuple[Message, list[Message]]]
    as_list: bool
    response: Message | None = None
    events: list[Message] = field(default_factory=list)


class Batch:
    """Actions pipelined on one session: at most ``window`` unanswered at any time.

    Encoded chunk by chunk as the window moves (encoding overlaps Asterisk's work);
    a step whose values cannot be encoded safely is settled as refused without being
    sent. ``problems[i]`` is ``None`` when step ``i`` succeeded, else its reason.
    ``done`` resolves when every step is settled, or fails when the session ends.
    """

    def __init__(self, key: str, steps: Sequence[Step], window: int,
                 transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 observe: ActionObserver | None) -> None:
        self.key = key
        self.steps = steps
        self.window = max(1, window)
        self.transport = transport
        self.observe = observe
        self._prefix = f"{_BATCH_PREFIX}{key}."
        self.sent_at: list[float] = []
        self.answered = bytearray(len(steps))
        self.problems: list[str | None] = [None] * len(steps)
        self.count = 0
        #: Monotonic time of the last answer (for "when was the last one applied").
        self.last_answer = 0.0
        self.done: asyncio.Future[None] = loop.create_future()
        if not steps:
            self.done.set_result(None)

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def oldest_unanswered(self) -> int:
        """Index of the first step still waiting (AMI answers one session in order)."""
        index = self.answered.find(0)
        return index if index >= 0 else len(self.steps)

    def pump(self) -> None:
        """Top the window up, in chunks of at least half a window."""
        total = len(self.steps)
        while self.sent < total and not self.done.done():
            in_flight = self.sent - self.count
            if in_flight > self.window // 2:
                return
            end = min(total, self.sent + self.window - in_flight)
            chunk: list[bytes] = []
            now = time.monotonic()
            for index in range(self.sent, end):
                step = self.steps[index]
                self.sent_at.append(now)
                try:
                    chunk.append(encode_action(step.action, f"{self._prefix}{index}",
                                               step.fields))
                except UnsafeValue as exc:  # settled unsent; the loop tops up again
                    self._settle(index, str(exc), observe=False)
            if chunk:
                self.transport.write(b"".join(chunk))

    def reply(self, index: int, message: Message) -> None:
        if not 0 <= index < self.sent or self.answered[index] or self.done.done():
            return  # not ours, a duplicate, or too late
        step = self.steps[index]
        self._settle(index, refusal(step, message), observe=True)
        if not self.done.done():
            self.pump()

    def _settle(self, index: int, problem: str | None, *, observe: bool) -> None:
        self.answered[index] = 1
        self.count += 1
        self.problems[index] = problem
        self.last_answer = time.monotonic()
        if observe and self.observe is not None:
            self.observe(self.steps[index].action, "success" if problem is None else "error",
                         self.last_answer - self.sent_at[index])
        if self.count == len(self.steps) and not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: the waiter re-raises its own copy


class AmiSession(asyncio.Protocol):
    """One AMI connection. See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 observe: ActionObserver | None = None) -> None:
        self.loop = loop
        self.observe = observe
        self.parser = MessageParser()
        self.transport: asyncio.Transport | None = None
        #: Resolves (with the reason, or ``None`` for a clean close) when the session ends.
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.booted = asyncio.Event()
        self._calls: dict[str, _Call] = {}
        self._batches: dict[str, Batch] = {}
        self._counter = 0
        self._keepalive: asyncio.Task[None] | None = None

    # -- opening -----------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int,
                      observe: ActionObserver | None = None) -> AmiSession:
        """TCP-connect and wait for the AMI banner (callers bound it with a timeout)."""
        loop = asyncio.get_running_loop()
        _, session = await loop.create_connection(lambda: cls(loop, observe), host, port)
        try:
            await session._until_closed(session.greeted)
        except BaseException as exc:
            session.close(exc if isinstance(exc, Exception) else None)
            raise
        return session

    async def login(self, username: str, secret: str, events: str = "system") -> None:
        """Log in; ``LoginRefused`` when Asterisk says no. ``events``: the event classes
        to receive (``system`` carries ``FullyBooted`` and ``Shutdown``)."""
        step = Step("Login", (("Username", username), ("Secret", secret), ("Events", events)))
        reply, _ = await self._until_closed(self._send(step, as_list=False))
        if reply.response != "Success":
            why = reply.message or "no reason given"
            raise LoginRefused(why, auth="authentication" in why.lower())

    async def wait_booted(self) -> None:
        """Until Asterisk said ``FullyBooted`` (sent right after login once it is up)."""
        await self._until_closed(asyncio.ensure_future(self.booted.wait()))

    def start_keepalive(self, interval: float, timeout: float) -> None:
        """``Ping`` every ``interval`` s; an answer later than ``timeout`` s ends the session."""
        if self._keepalive is None:
            self._keepalive = self.loop.create_task(self._ping_loop(interval, timeout))

    async def _ping_loop(self, interval: float, limit: float) -> None:
        while not self.closed.done():
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                async with asyncio.timeout(limit):
                    await self.request(Step("Ping"))
            except TimeoutError:
                self._observe("Ping", "timeout", started)
                self.close(SessionClosed(f"keepalive Ping unanswered for {limit:g}s"))
                return
            except SessionClosed:
                self._observe("Ping", "disconnected", started)
                return
            self._observe("Ping", "success", started)

    # -- sending -----------------------------------------------------------------------

    async def request(self, step: Step) -> Message:
        """Send one action; its ``Response``. ``SessionClosed`` if the session ends first."""
        reply, _ = await self._until_closed(self._send(step, as_list=False))
        return reply

    async def request_list(self, step: Step) -> tuple[Message, list[Message]]:
        """Send one list action; its ``Response`` and the events of the list."""
        return await self._until_closed(self._send(step, as_list=True))

    def _send(self, step: Step, *, as_list: bool) -> asyncio.Future[tuple[Message, list[Message]]]:
        transport = self._require_open()
        self._counter += 1
        action_id = f"{_ID_PREFIX}{self._counter}"
        payload = encode_action(step.action, action_id, step.fields)  # UnsafeValue: unsent
        call = _Call(self.loop.create_future(), as_list)
        self._calls[action_id] = call
        call.future.add_done_callback(lambda _f: self._calls.pop(action_id, None))
        transport.write(payload)
        return call.future

    async def _until_closed(self, future: asyncio.Future[_T]) -> _T:
        """Await ``future``; ``SessionClosed`` as soon as the session ends instead."""
        if self.closed.done():
            future.cancel()
            raise SessionClosed(f"connection closed: {self.closed.result()!r}")
        try:
            await asyncio.wait((future, self.closed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            future.cancel()
            raise
        if future.done():
            return future.result()
        future.cancel()
        raise SessionClosed(f"connection closed: {self.closed.result()!r}")

    def start_batch(self, steps: Sequence[Step], window: int) -> Batch:
        """Register a batch and write its first window of actions."""
        transport = self._require_open()
        self._counter += 1
        batch = Batch(str(self._counter), steps, window, transport, self.loop, self.observe)
        self._batches[batch.key] = batch
        batch.pump()
        return batch

    def finish_batch(self, batch: Batch) -> None:
        self._batches.pop(batch.key, None)

    def _require_open(self) -> asyncio.Transport:
        if self.closed.done() or self.transport is None:
            raise SessionClosed("connection is closed")
        return self.transport

    # -- closing -----------------------------------------------------------------------

    def close(self, reason: BaseException | None = None) -> None:
        """Drop the connection now and fail everything in flight. Idempotent.

        ``abort``, not ``close``: a half-open peer never drains the write buffer.
        """
        if self.closed.done():
            return
        self.closed.set_result(reason)
        lost = SessionClosed(f"connection lost: {reason!r}")
        for batch in list(self._batches.values()):
            batch.fail(lost)
        self._batches.clear()
        for call in list(self._calls.values()):
            if not call.future.done():
                call.future.set_exception(lost)
                call.future.exception()
        self._calls.clear()
        if not self.greeted.done():
            self.greeted.set_exception(lost)
            self.greeted.exception()
        if self.transport is not None:
            self.transport.abort()
        keepalive = self._keepalive
        if keepalive is not None and keepalive is not asyncio.current_task():
            keepalive.cancel()

    async def logoff(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded by design
        """Say goodbye (best effort, at most ``timeout`` s), then close."""
        with contextlib.suppress(TimeoutError, SessionClosed, OSError):
            async with asyncio.timeout(timeout):
                await self.request(Step("Logoff"))
        self.close(None)
        if self._keepalive is not None:
            await asyncio.gather(self._keepalive, return_exceptions=True)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except ProtocolError as exc:
            self.close(exc)
            return
        if self.parser.version is not None and not self.greeted.done():
            self.greeted.set_result(None)
        for message in messages:
            self._dispatch(message)

    def eof_received(self) -> bool:
        self.close(SessionClosed("Asterisk closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(exc if exc is not None else SessionClosed("Asterisk closed the connection"))

    def _dispatch(self, message: Message) -> None:
        action_id = message.action_id
        if action_id.startswith(_BATCH_PREFIX):
            key, _, index = action_id[len(_BATCH_PREFIX) :].partition(".")
            batch = self._batches.get(key)
            if batch is not None and message.response and index.isdigit():
                batch.reply(int(index), message)
            return
        call = self._calls.get(action_id) if action_id else None
        if call is not None and not call.future.done():
            self._answer(call, message)
            return
        event = message.event
        if event == "FullyBooted":
            self.booted.set()
        elif event == "Shutdown":
            self.close(SessionClosed("Asterisk shut down"))

    @staticmethod
    def _answer(call: _Call, message: Message) -> None:
        if call.response is None:
            if not message.response:
                return  # an event before the response: not for us
            call.response = message
            if not call.as_list or message.response != "Success" or "EventList" not in message:
                call.future.set_result((message, []))
            return
        if message.get("EventList").lower() == "complete":
            call.future.set_result((call.response, call.events))
        else:
            call.events.append(message)

    def _observe(self, action: str, result: str, started: float) -> None:
        if self.observe is not None:
            self.observe(action, result, time.monotonic() - started)
