"""``AmiPbx``: the ``Pbx`` port over the Asterisk Manager Interface (panoramisk).

What it does: keeps one logged-in AMI session to one Asterisk, reads the forwardings
back with ``DBGetTree`` on family ``pbxcal``, and applies changes with ``DBPut`` /
``DBDel`` plus ``Setvar DEVICE_STATE(Custom:pbxcal<ext>)`` (INUSE / NOT_INUSE), many
actions pipelined on the connection inside a bounded window. Its own ``Ping`` keepalive
detects half-open connections; it reconnects with capped exponential backoff and
jitter and calls ``on_connected`` after every login so the reconciler can re-apply.

What it must not do: send a value it has not validated (``pbxcal.pbx.values`` checks a
whole batch before the first byte is written); let a panoramisk, socket or asyncio
exception escape (``_map_error`` is the one place they become ``PbxError``); rely on
panoramisk's own ping, reconnect or re-sending of queued actions (all switched off in
``_Session``: a forwarding re-sent minutes late after a reconnect could be wrong, and
the reconciler re-applies the desired state itself); log or ``repr`` the secret.

AMI privileges needed (``manager.conf``): ``write = system,call`` (DBPut/DBDel/DBGetTree
need ``system``, Setvar needs ``call``) and ``read = system`` (only for the
``FullyBooted`` / ``Shutdown`` events; without it login still works, a little slower).

Start reading at ``AmiPbx.apply``, then ``AmiPbx._run`` (the pipeline), then
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

    @property
    def where(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"


class _Lost(Exception):
    """The session ended while an action was in flight (internal; mapped at the boundary)."""


class _Everything:
    """A container that holds every name: panoramisk then queues no action for re-sending."""

    def __contains__(self, item: object) -> bool:
        return True


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

    async def open(self) -> None:
        """TCP-connect and hand the protocol to panoramisk (no login yet)."""
        transport, protocol = await self.loop.create_connection(
            AMIProtocol, self.config["host"], self.config["port"]
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

    def send(self, action: dict[str, str], as_list: bool | None = False) -> asyncio.Future[Any]:
        """Write one action; return the future of its reply (or list of replies)."""
        if self.lost.done() or self.protocol is None:
            raise _Lost("connection is closed")
        fut: asyncio.Future[Any] = self.protocol.send(action, as_list=as_list)
        self.pending.add(fut)
        fut.add_done_callback(self.pending.discard)
        return fut


@dataclass(slots=True)
class _Step:
    """One action of a batch and what counts as success for it."""

    action: dict[str, str]
    #: Lower-case fragments of an ``Error`` message that still mean "done" (idempotency).
    tolerate: tuple[str, ...] = ()


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
        self._window: asyncio.Semaphore | None = None
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
        (reply,) = await self._run([step], as_list=None)
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
        nothing is sent. Then all actions are pipelined (see ``_run``).
        """
        pattern = self.config.extension_pattern
        checked = [validate_forwarding(ext, targets, pattern) for ext, targets in changes.items()]
        steps: list[_Step] = []
        for ext, targets in checked:
            state_var = f"DEVICE_STATE({device_name(ext)})"
            if targets:
                steps.append(_Step({"Action": "DBPut", "Family": FAMILY, "Key": fwd_key(ext),
                                    "Val": join_targets(targets)}))
                steps.append(_Step({"Action": "Setvar", "Variable": state_var,
                                    "Value": STATE_ACTIVE}))
            else:
                steps.append(_Step({"Action": "DBDel", "Family": FAMILY, "Key": fwd_key(ext)},
                                   tolerate=_ABSENT_KEY))
                steps.append(_Step({"Action": "Setvar", "Variable": state_var,
                                    "Value": STATE_INACTIVE}))
        if steps:
            await self._run(steps)

    # -- the pipeline ----------------------------------------------------------------

    async def _run(self, steps: Sequence[_Step], as_list: bool | None = False) -> list[Any]:
        """Send ``steps`` in order on the current session, at most ``window`` in flight.

        AMI answers the actions of one session in order, so waiting for the oldest
        unanswered one is enough; when the answers keep up nothing is awaited at all.
        Every action must be answered within ``action_timeout`` of being written.
        Returns the replies in order; raises the first failure after the batch settled
        (``PbxActionFailed``), or at once when the connection goes (``PbxUnavailable``).
        """
        session = self._session
        if session is None or session.lost.done():
            raise PbxUnavailable(f"{self.config.where}: not connected")
        if self._window is None:
            self._window = asyncio.Semaphore(self.config.window)
        window, timeout, observe = self._window, self.config.action_timeout, self._on_action
        sent: list[tuple[_Step, asyncio.Future[Any], float]] = []
        current = "send"
        try:
            for step in steps:
                current = step.action["Action"]
                if window.locked():
                    async with asyncio.timeout(timeout):
                        await window.acquire()
                else:
                    await window.acquire()
                try:
                    fut = session.send(step.action, as_list)
                except BaseException:
                    window.release()
                    raise
                fut.add_done_callback(lambda _f: window.release())
                sent.append((step, fut, time.monotonic()))
            replies: list[Any] = []
            failures: list[str] = []
            for step, fut, started in sent:
                current = step.action["Action"]
                if not fut.done():
                    async with asyncio.timeout_at(started + timeout):
                        await fut
                reply = fut.result()
                problem = self._check(step, reply)
                if observe is not None:
                    observe(current, "error" if problem else "success",
                            time.monotonic() - started)
                if problem:
                    failures.append(problem)
                replies.append(reply)
        except (TimeoutError, _Lost, OSError) as exc:
            result = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
            if observe is not None:
                observe(current, result, time.monotonic() - (sent[-1][2] if sent else 0.0))
            raise _map_error(exc, self.config, f"AMI {current}") from exc
        finally:
            for _step, fut, _started in sent:
                if not fut.done():
                    fut.cancel()  # its window slot comes back through the done callback
                elif not fut.cancelled():
                    fut.exception()  # mark as retrieved: one error is reported, not 256
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise PbxActionFailed(f"{self.config.where}: {failures[0]}{more}")
        return replies

    @staticmethod
    def _check(step: _Step, reply: Any) -> str | None:
        """``None`` if ``reply`` means success for ``step``, else a one-line problem."""
        first = reply[0] if isinstance(reply, list) else reply
        if first.success:
            return None
        message = _reply_message(first)
        if any(fragment in message.lower() for fragment in step.tolerate):
            return None
        action = step.action
        what = " ".join(f"{k}={action[k]}" for k in ("Family", "Key", "Variable") if k in action)
        return f"AMI {action['Action']} {what} refused: {message or first.get('Response')}"

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
        self._window = asyncio.Semaphore(config.window)
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
