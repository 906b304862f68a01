"""``AmiPbx``: the ``Pbx`` port over the Asterisk Manager Interface (panoramisk).

What it does: keeps one logged-in AMI session to one Asterisk, reads the forwardings
back with ``DBGetTree`` on family ``pbxcal``, and applies changes with ``DBPut`` /
``DBDel`` plus ``Setvar DEVICE_STATE(Custom:pbxcal<ext>)`` (INUSE / NOT_INUSE), many
actions pipelined on the connection inside a bounded window. Its own ``Ping`` keepalive
detects half-open connections; it reconnects with capped exponential backoff and
jitter and calls ``on_connected`` after every login so the reconciler can re-apply.

panoramisk carries the connection, login, events, ``Ping`` and list answers
(``DBGetTree``). Bulk ``apply`` batches take a lean path on the same connection
(``_Batch`` / ``_Protocol``): panoramisk's own per-action cost (~100 µs of Python, one
syscall per action) would be several times Asterisk's, and 10,000 forwardings must
apply at about the speed Asterisk itself can take them.

What it must not do: send a value it has not validated (``pbxcal.pbx.values`` checks a
whole batch before the first byte is written); let a panoramisk, socket or asyncio
exception escape (``_map_error`` is the one place they become ``PbxError``); rely on
panoramisk's own ping, reconnect or re-sending of queued actions (all switched off in
``_Session``: a forwarding re-sent minutes late after a reconnect could be wrong, and
the reconciler re-applies the desired state itself); log or ``repr`` the secret.

AMI privileges needed (``manager.conf``): ``write = system,call`` (DBPut/DBDel/DBGetTree
need ``system``, Setvar needs ``call``) and ``read = system`` (only for the
``FullyBooted`` / ``Shutdown`` events; without it login still works, a little slower).

Start reading at ``AmiPbx.apply``, then ``AmiPbx._pipeline`` and ``_Batch``, then
``AmiPbx._supervise`` (the connection lifecycle).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from pbxcal.errors import (
    PbxActionFailed,
    PbxAuthFailed,
    PbxcalError,
    PbxError,
    PbxUnavailable,
    UnsafeValue,
)
from pbxcal.pbx import ForwardingState
from pbxcal.pbx.values import (
    DEFAULT_EXTENSION_PATTERN,
    FAMILY,
    STATE_ACTIVE,
    STATE_INACTIVE,
    device_name,
    ext_from_key,
    fwd_key,
    join_targets,
    split_value,
    validate_forwarding,
)

log = logging.getLogger(__name__)

#: ``on_action(action, result, seconds)``; result is one of ``success``, ``error``,
#: ``timeout``, ``disconnected``. Feeds ``pbxcal_ami_actions_total`` and friends.
ActionObserver = Callable[[str, str, float], None]
#: An async callable run after every (re)login or after a lost connection.
ConnectionCallback = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class AmiConfig:
    """How to reach one Asterisk over AMI. Times in seconds."""

    name: str
    host: str
    port: int
    username: str
    secret: str = field(repr=False)
    action_timeout: float = 5.0
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    extension_pattern: str = DEFAULT_EXTENSION_PATTERN
    #: Most actions in flight at once on the connection.
    window: int = 256
    #: How long to wait after login for ``FullyBooted`` before going ahead anyway.
    boot_timeout: float = 5.0
    #: Keep ``Custom:pbxcal<ext>`` in step for BLF keys (one more action per change).
    device_state: bool = True

    @property
    def where(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"


class _Lost(Exception):
    """The session ended while an action was in flight (internal; mapped at the boundary)."""


class _Everything:
    """A container that holds every name: panoramisk then queues no action for re-sending."""

    def __contains__(self, item: object) -> bool:
        return True


@dataclass(slots=True)
class _Step:
    """One action of a batch and what counts as success for it."""

    action: dict[str, str]
    #: Lower-case fragments of an ``Error`` message that still mean "done" (idempotency).
    tolerate: tuple[str, ...] = ()


_EOM = b"\r\n\r\n"
#: ActionIDs of pipelined batch actions start with this; panoramisk's own look different.
_BATCH_TAG = b"pbxcal."
_BATCH_ID = b"\r\nActionID: " + _BATCH_TAG


class _Batch:
    """Actions pipelined on one session: at most ``window`` unanswered at any time.

    Encoded once up front; written in chunks from the protocol callback as answers
    come in (no task switch, one ``write`` per chunk); answers are matched by index in
    the ActionID. ``done`` resolves when every action is answered, or fails when the
    connection goes.
    """

    def __init__(self, key: str, steps: Sequence[_Step], window: int,
                 transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 observe: ActionObserver | None) -> None:
        self.key = key
        self.steps = steps
        self.window = max(1, window)
        self.transport = transport
        self.observe = observe
        prefix = f"{_BATCH_TAG.decode()}{key}."
        self.payloads = [
            "".join([f"Action: {step.action['Action']}\r\nActionID: {prefix}{i}\r\n",
                     *(f"{k}: {v}\r\n" for k, v in step.action.items() if k != "Action"),
                     "\r\n"]).encode()
            for i, step in enumerate(steps)
        ]
        self.sent_at: list[float] = []
        self.answered = bytearray(len(steps))
        self.count = 0
        self.failures: list[str] = []
        self.done: asyncio.Future[None] = loop.create_future()

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def oldest_unanswered(self) -> int:
        """Index of the first action still waiting (answers come in order)."""
        index = self.answered.find(0)
        return index if index >= 0 else len(self.steps)

    def pump(self) -> None:
        """Top the window up, in chunks of at least half a window."""
        in_flight = self.sent - self.count
        if in_flight > self.window // 2 or self.sent >= len(self.payloads):
            return
        end = min(len(self.payloads), self.sent + self.window - in_flight)
        chunk = self.payloads[self.sent : end]
        self.sent_at.extend([time.monotonic()] * len(chunk))
        self.transport.write(b"".join(chunk))

    def reply(self, index: int, response: bytes, message: bytes) -> None:
        if not 0 <= index < self.sent or self.answered[index] or self.done.done():
            return  # not ours, a duplicate, or too late
        self.answered[index] = 1
        self.count += 1
        step = self.steps[index]
        ok = response == b"Success"
        if not ok:
            problem = _refusal(step, response.decode(errors="replace"),
                               message.decode(errors="replace"))
            if problem is not None:
                self.failures.append(problem)
            ok = problem is None
        if self.observe is not None:
            self.observe(step.action["Action"], "success" if ok else "error",
                         time.monotonic() - self.sent_at[index])
        if self.count == len(self.steps):
            self.done.set_result(None)
        else:
            self.pump()

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: the waiter re-raises its own copy


def _refusal(step: _Step, response: str, message: str) -> str | None:
    """``None`` if an ``Error`` answer still means done for ``step``, else the problem."""
    if any(fragment in message.lower() for fragment in step.tolerate):
        return None
    action = step.action
    what = " ".join(f"{k}={action[k]}" for k in ("Family", "Key", "Variable") if k in action)
    return f"AMI {action['Action']} {what} refused: {message or response}"


class _Protocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's AMI protocol, plus a lean path for the answers to ``_Batch`` actions.

    panoramisk spends ~100 µs of Python per action (uuid ActionIDs, case-insensitive
    dicts, one ``send()`` syscall per action), several times what Asterisk needs for a
    DBPut. Answers whose ActionID carries ``_BATCH_TAG`` are parsed here in a few
    microseconds; everything else (login, lists, events, Ping) goes to panoramisk.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pending_bytes = b""
        self.batches: dict[bytes, _Batch] = {}

    def data_received(self, data: bytes) -> None:
        if getattr(self, "version", None) is None and data.startswith(b"Asterisk Call Manager/"):
            banner, _, data = data.partition(b"\r\n")
            self.version = banner.partition(b"/")[2].decode(errors="replace").strip()
        *messages, self.pending_bytes = (self.pending_bytes + data).split(_EOM)
        encoding = getattr(self, "encoding", "utf8")
        for raw in messages:
            if self.batches and _BATCH_ID in raw and self._batch_reply(raw):
                continue
            message = Message.from_line(raw.decode(encoding, "ignore").strip())
            if message is not None:
                self.handle_message(message)

    def _batch_reply(self, raw: bytes) -> bool:
        """Hand a batch answer to its ``_Batch``; ``False`` if it is not one."""
        response = action_id = message = b""
        for line in raw.split(b"\r\n"):
            name, _, value = line.partition(b": ")
            if name == b"Response":
                response = value
            elif name == b"ActionID":
                action_id = value
            elif name == b"Message":
                message = value
        if not response or not action_id.startswith(_BATCH_TAG):
            return False
        key, _, index = action_id[len(_BATCH_TAG) :].rpartition(b".")
        batch = self.batches.get(key)
        if batch is not None and index.isdigit():
            batch.reply(int(index), response.strip(), message.strip())
        return True  # ours, even if its batch already gave up on it


class _Session(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """One AMI connection, with panoramisk's own ping, reconnect and re-send switched off.

    panoramisk 1.4 has no switch for those: ``Manager.connection_lost`` always schedules
    a reconnect, ``ping`` always runs, and ``AMIProtocol.close`` queues unanswered
    actions to re-send after the next ``FullyBooted`` while leaving their futures
    pending forever. So this subclass overrides ``connection_lost`` and ``ping``, makes
    every action "forgettable", and fails its own in-flight futures when the
    connection ends. One ``_Session`` is never reconnected; ``AmiPbx`` makes a new one.
    """

    def __init__(self, config: AmiConfig, loop: asyncio.AbstractEventLoop) -> None:
        # No username in panoramisk's config: it would log in by itself, and the
        # secret would sit in a dict that panoramisk logs on some errors.
        super().__init__(
            host=config.host,
            port=config.port,
            loop=loop,
            events="system",
            forgetable_actions=_Everything(),
            log=log,
        )
        self.callbacks.clear()
        self.patterns.clear()
        self.pending: set[asyncio.Future[Any]] = set()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.booted = asyncio.Event()
        self.register_event("FullyBooted", lambda _m, _e: self.booted.set())
        self.keepalive: asyncio.Task[None] | None = None
        self.batch_counter = 0

    async def open(self) -> None:
        """TCP-connect and hand the protocol to panoramisk (no login yet)."""
        transport, protocol = await self.loop.create_connection(
            _Protocol, self.config["host"], self.config["port"]
        )
        done: asyncio.Future[tuple[Any, Any]] = self.loop.create_future()
        done.set_result((transport, protocol))
        self.connection_made(done)

    def ping(self) -> None:
        """panoramisk's own keepalive: disabled, ``AmiPbx._keepalive`` does it with a timeout."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """Called by panoramisk when the socket closes or Asterisk says ``Shutdown``."""
        self.end(exc if isinstance(exc, BaseException) else _Lost("Asterisk shut down"))

    def end(self, reason: BaseException | None) -> None:
        """Close the socket now and fail everything still in flight. Idempotent."""
        self._connected = False
        pinger: asyncio.TimerHandle | None = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None
        protocol = self.protocol
        for batch in list(getattr(protocol, "batches", {}).values()):
            batch.fail(_Lost(f"connection lost: {reason!r}"))
        if protocol is not None and not getattr(protocol, "closed", True):
            protocol.close()  # drops panoramisk's response table; nothing is re-queued
            protocol.transport.abort()  # not close(): a half-open peer never drains
        self.awaiting_actions.clear()
        if not self.lost.done():
            self.lost.set_result(reason)
        if self.keepalive is not None and self.keepalive is not asyncio.current_task():
            self.keepalive.cancel()
        for fut in list(self.pending):
            if not fut.done():
                fut.set_exception(_Lost(f"connection lost: {reason!r}"))
        self.pending.clear()

    def start_batch(self, steps: Sequence[_Step], window: int,
                    observe: ActionObserver | None) -> _Batch:
        """Register a batch and write its first window of actions."""
        protocol = self.protocol
        if self.lost.done() or protocol is None:
            raise _Lost("connection is closed")
        self.batch_counter += 1
        batch = _Batch(str(self.batch_counter), steps, window, protocol.transport,
                       self.loop, observe)
        protocol.batches[batch.key.encode()] = batch
        batch.pump()
        return batch

    def finish_batch(self, batch: _Batch) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.batches.pop(batch.key.encode(), None)

    def send(self, action: dict[str, str], as_list: bool | None = False) -> asyncio.Future[Any]:
        """Write one action; return the future of its reply (or list of replies)."""
        if self.lost.done() or self.protocol is None:
            raise _Lost("connection is closed")
        fut: asyncio.Future[Any] = self.protocol.send(action, as_list=as_list)
        self.pending.add(fut)
        fut.add_done_callback(self.pending.discard)
        return fut


#: How DBDel says the key was not there. Asterisk 22 answers "Database entry could not
#: be deleted" (ast_db_del2 fails for an absent key and for a database error alike);
#: older releases said "not found". Both count as cleared: a real failure shows up in
#: the next ``read_applied``, and the reconciler re-applies.
_ABSENT_KEY = ("not found", "could not be deleted")


def _map_error(exc: BaseException, config: AmiConfig, what: str) -> PbxError:
    """The one place where library, socket and asyncio errors become pbxcal errors."""
    if isinstance(exc, PbxError):
        return exc
    if isinstance(exc, TimeoutError):
        return PbxUnavailable(f"{config.where}: {what} timed out")
    if isinstance(exc, _Lost):
        return PbxUnavailable(f"{config.where}: {what} failed, {exc}")
    if isinstance(exc, OSError):
        return PbxUnavailable(f"{config.where}: {what} failed: {exc.strerror or exc}")
    return PbxUnavailable(f"{config.where}: {what} failed: {type(exc).__name__}: {exc}")


def _reply_message(reply: Any) -> str:
    return str(reply.get("Message", "")).strip()


class AmiPbx:
    """The ``Pbx`` port over AMI. See the module docstring."""

    def __init__(self, config: AmiConfig, *, on_action: ActionObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        self.on_connected: list[ConnectionCallback] = []
        self.on_disconnected: list[ConnectionCallback] = []
        self._on_action = on_action
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._connected_event = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        #: Login attempts so far (for tests and the status line).
        self.login_attempts = 0

    def __repr__(self) -> str:
        return f"AmiPbx({self.config!r}, connected={self.connected})"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a logged-in session is up."""
        return self._session is not None and not self._session.lost.done()

    async def start(self, *, retry: bool = True) -> None:
        """Connect and log in.

        Raises ``PbxAuthFailed`` on a refused login (and does not retry: that is a
        configuration error). Raises ``PbxUnavailable`` when Asterisk cannot be reached;
        with ``retry=True`` it keeps trying in the background and reconnects after every
        loss, with ``retry=False`` it never reconnects by itself.
        """
        if self._supervisor is not None or self.connected:
            return
        self._closing = False
        try:
            session = await self._connect_once()
        except PbxAuthFailed:
            raise
        except PbxUnavailable:
            if retry:
                self._supervisor = asyncio.create_task(self._supervise(None, first_attempt=1))
            raise
        if retry:
            self._supervisor = asyncio.create_task(self._supervise(session))

    async def close(self) -> None:
        """Log off and stop reconnecting. Safe to call more than once."""
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        session, self._session = self._session, None
        self._connected_event.clear()
        if session is not None and not session.lost.done():
            try:
                async with asyncio.timeout(min(1.0, self.config.action_timeout)):
                    await session.send({"Action": "Logoff"})
            except (TimeoutError, _Lost, OSError):
                pass  # going away anyway
            session.end(None)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - the API
        """Wait until a logged-in session is up; ``PbxUnavailable`` after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    await self._connected_event.wait()
                    if not self.connected:  # pragma: no cover - lost right after login
                        await asyncio.sleep(0.01)
        except TimeoutError as exc:
            raise _map_error(exc, self.config, f"waiting {timeout:g}s for a connection") from exc

    # -- the Pbx port ----------------------------------------------------------------

    async def read_applied(self) -> ForwardingState:
        """Read ``pbxcal/fwd/*`` back: extension -> sorted targets. Malformed values are
        logged and left out (the reconciler then overwrites them)."""
        step = _Step({"Action": "DBGetTree", "Family": FAMILY}, tolerate=("not found",))
        reply = await self._request(step, as_list=None)
        state: ForwardingState = {}
        for message in reply if isinstance(reply, list) else []:
            if message.get("Event") != "DBGetTreeResponse":
                continue
            key, value = str(message.get("Key", "")), str(message.get("Val", ""))
            ext = ext_from_key(key)
            if ext is None:
                if key.startswith(f"/{FAMILY}/fwd/"):
                    log.warning("%s: ignoring AstDB key %r: not an extension", self.name, key)
                continue
            try:
                targets = split_value(value)
            except UnsafeValue as exc:
                log.warning("%s: ignoring AstDB %s: %s", self.name, key, exc)
                continue
            if targets:
                state[ext] = targets
        return state

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> None:
        """Set each extension's targets; an empty sequence clears. Idempotent.

        The whole batch is validated first: one unsafe value refuses the batch and
        nothing is sent. Then all actions are pipelined (see ``_pipeline``).
        """
        pattern = self.config.extension_pattern
        checked = [validate_forwarding(ext, targets, pattern) for ext, targets in changes.items()]
        steps: list[_Step] = []
        for ext, targets in checked:
            state_var = f"DEVICE_STATE({device_name(ext)})"
            if targets:
                steps.append(_Step({"Action": "DBPut", "Family": FAMILY, "Key": fwd_key(ext),
                                    "Val": join_targets(targets)}))
            else:
                steps.append(_Step({"Action": "DBDel", "Family": FAMILY, "Key": fwd_key(ext)},
                                   tolerate=_ABSENT_KEY))
            if self.config.device_state:
                value = STATE_ACTIVE if targets else STATE_INACTIVE
                steps.append(_Step({"Action": "Setvar", "Variable": state_var, "Value": value}))
        if steps:
            await self._pipeline(steps)

    # -- the pipeline ----------------------------------------------------------------

    def _require_session(self) -> _Session:
        session = self._session
        if session is None or session.lost.done():
            raise PbxUnavailable(f"{self.config.where}: not connected")
        return session

    async def _pipeline(self, steps: Sequence[_Step]) -> None:
        """Send ``steps`` in order, at most ``window`` unanswered, on the current session.

        Every action must be answered within ``action_timeout`` of being written; AMI
        answers one session's actions in order, so watching the oldest unanswered one
        is enough. Refusals are collected and raised together (``PbxActionFailed``)
        once the batch settled; a lost connection or a timeout raises at once
        (``PbxUnavailable``).
        """
        session = self._require_session()
        timeout, observe = self.config.action_timeout, self._on_action
        batch: _Batch | None = None
        try:
            batch = session.start_batch(steps, self.config.window, observe)
            while not batch.done.done():
                oldest = batch.oldest_unanswered()
                try:
                    async with asyncio.timeout_at(batch.sent_at[oldest] + timeout):
                        await asyncio.shield(batch.done)
                except TimeoutError:
                    if batch.oldest_unanswered() == oldest:
                        raise
            batch.done.result()
        except (TimeoutError, _Lost, OSError) as exc:
            index = min(batch.oldest_unanswered() if batch is not None else 0, len(steps) - 1)
            name = steps[index].action["Action"]
            if observe is not None and batch is not None and batch.sent:
                result = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
                observe(name, result, time.monotonic() - batch.sent_at[min(index, batch.sent - 1)])
            raise _map_error(exc, self.config, f"AMI {name}") from exc
        finally:
            if batch is not None:
                session.finish_batch(batch)
        if batch.failures:
            more = f" (and {len(batch.failures) - 1} more)" if len(batch.failures) > 1 else ""
            raise PbxActionFailed(f"{self.config.where}: {batch.failures[0]}{more}")

    async def _request(self, step: _Step, as_list: bool | None = False) -> Any:
        """One action through panoramisk (for answers that are lists of events)."""
        session = self._require_session()
        name = step.action["Action"]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.action_timeout):
                reply = await session.send(step.action, as_list)
        except (TimeoutError, _Lost, OSError) as exc:
            self._observe(name, "timeout" if isinstance(exc, TimeoutError) else
                          "disconnected", started)
            raise _map_error(exc, self.config, f"AMI {name}") from exc
        first = reply[0] if isinstance(reply, list) else reply
        problem = None if first.success else _refusal(
            step, str(first.get("Response", "")), _reply_message(first))
        self._observe(name, "error" if problem else "success", started)
        if problem is not None:
            raise PbxActionFailed(f"{self.config.where}: {problem}")
        return reply

    # -- connecting ------------------------------------------------------------------

    async def _connect_once(self) -> _Session:
        """Open a session, log in, wait for ``FullyBooted``; install it as current."""
        config = self.config
        session = _Session(config, asyncio.get_running_loop())
        self.login_attempts += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(config.action_timeout):
                await session.open()
            login = {"Action": "Login", "Username": config.username, "Secret": config.secret,
                     "Events": "system"}
            async with asyncio.timeout(config.action_timeout):
                reply = await session.send(login)
        except (TimeoutError, _Lost, OSError) as exc:
            session.end(exc)
            self._observe("Login", "timeout" if isinstance(exc, TimeoutError) else
                          "disconnected", started)
            raise _map_error(exc, config, "AMI connect and login") from exc
        if not reply.success:
            session.end(None)
            self._observe("Login", "error", started)
            why = _reply_message(reply) or "no reason given"
            if "authentication" not in why.lower():
                # e.g. "Asterisk is shutting down" while it restarts: try again soon.
                raise PbxUnavailable(f"{config.where}: AMI login not possible now: {why}")
            raise PbxAuthFailed(
                f"{config.where}: AMI login as {config.username!r} refused: {why} "
                "(check username, secret and permit= in manager.conf)"
            )
        self._observe("Login", "success", started)
        try:
            # During Asterisk's start-up AMI answers before all modules are loaded.
            async with asyncio.timeout(config.boot_timeout):
                await session.booted.wait()
        except TimeoutError:
            log.warning("%s: no FullyBooted event after login (grant 'read = system'?); "
                        "going ahead", config.where)
        if session.lost.done():
            raise _map_error(_Lost("right after login"), config, "AMI login")
        session.keepalive = asyncio.create_task(self._keepalive(session))
        self._session = session
        self._connected_event.set()
        log.info("%s: AMI connected as %r", config.where, config.username)
        self._fire(self.on_connected, "on_connected")
        return session

    async def _keepalive(self, session: _Session) -> None:
        """Ping every ``ping_interval``; no answer in ``ping_timeout`` ends the session."""
        config = self.config
        while not session.lost.done():
            await asyncio.sleep(config.ping_interval)
            started = time.monotonic()
            try:
                async with asyncio.timeout(config.ping_timeout):
                    await session.send({"Action": "Ping"})
            except (TimeoutError, _Lost) as exc:
                self._observe("Ping", "timeout" if isinstance(exc, TimeoutError) else
                              "disconnected", started)
                log.warning("%s: AMI ping unanswered for %gs, dropping the connection",
                            config.where, config.ping_timeout)
                session.end(_map_error(exc, config, "AMI keepalive Ping"))
                return
            self._observe("Ping", "success", started)

    async def _supervise(self, session: _Session | None, first_attempt: int = 0) -> None:
        """Watch the session; after a loss reconnect with capped backoff and jitter."""
        config = self.config
        attempt = first_attempt
        delay = self._backoff(attempt) if session is None else 0.0
        while not self._closing:
            if session is not None:
                reason = await asyncio.shield(session.lost)
                if self._session is session:
                    self._session = None
                    self._connected_event.clear()
                log.warning("%s: AMI connection lost (%s); reconnecting", config.where, reason)
                self._fire(self.on_disconnected, "on_disconnected")
                session, attempt = None, 0
                delay = self._backoff(attempt)
            await asyncio.sleep(delay)
            if self._closing:
                break
            try:
                session = await self._connect_once()
            except PbxAuthFailed as exc:
                # A wrong secret will not fix itself soon: knock at the cap, not hot.
                log.error("%s; retrying in %gs", exc, config.backoff_max)
                attempt += 1
                delay = config.backoff_max * random.uniform(0.8, 1.0)
            except PbxUnavailable as exc:
                attempt += 1
                delay = self._backoff(attempt)
                log.info("%s; retrying in %.1fs", exc, delay)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (50-100 % of the step)."""
        step = self.config.backoff_initial * 2.0 ** min(attempt, 30)
        base = min(self.config.backoff_max, step)
        return base * random.uniform(0.5, 1.0)

    def _fire(self, callbacks: list[ConnectionCallback], what: str) -> None:
        for callback in list(callbacks):
            task = asyncio.create_task(self._call(callback, what))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _call(self, callback: ConnectionCallback, what: str) -> None:
        try:
            await callback()
        except PbxcalError as exc:
            log.warning("%s: %s callback failed: %s", self.config.where, what, exc)
        except Exception:
            log.exception("%s: %s callback crashed", self.config.where, what)

    def _observe(self, action: str, result: str, started: float) -> None:
        if self._on_action is not None:
            self._on_action(action, result, time.monotonic() - started)
