"""``AmiPbx``: the ``Pbx`` port over one Asterisk's AMI, with reconnects and error mapping.

What it does: keeps one logged-in ``AmiSession`` to one Asterisk (login, wait for
``FullyBooted``, ``Ping`` keepalive), reads the forwardings back with ``DBGetTree`` on
family ``pbxcal``, reads the extensions that exist (``PJSIPShowEndpoints`` and
``ExtensionStateList``), and applies changes in two pipelined phases: routing first
(``DBPut`` / ``DBDel`` of ``pbxcal/fwd/<ext>``, so calls route right at about the raw
AMI speed), then the BLF lamps (``Setvar DEVICE_STATE(Custom:pbxcal<ext>)``, about five
times a DBPut's cost in Asterisk) for the extensions whose routing was applied.

Refusal is per extension: a value that fails the wire rule is not sent, a PBX error
answer refuses its own extension, everything else of the batch is applied
(``ApplyResult.refused``). ``PbxUnavailable`` means the connection is gone or an action
timed out, and nothing is known about the batch.

Reconnecting: Asterisk being restarted refuses TCP connections; retrying those is cheap,
so they are retried every ``fast_retry`` seconds and pbxcal is back within a fraction
of a second of Asterisk accepting again. Slow failures (timeouts, a peer that accepts
and drops) back off exponentially up to ``backoff_max``; a refused login (wrong secret)
is retried only every ``backoff_max`` (no storm of failed logins in Asterisk's log).
``on_connected`` callbacks run after every login so the reconciler can re-apply.

What it must not do: send a value it has not validated (``pbxcal.pbx.values``, then the
codec refuses CR/LF once more); let a socket, asyncio or protocol exception escape
(``map_error`` is the one place they become ``PbxError``); re-send an action of a lost
session (the reconciler re-applies the desired state itself); log or ``repr`` the secret.

AMI privileges needed (``contrib/asterisk/manager.d/pbxcal.conf``): ``write =
system,call`` (DBPut/DBDel/DBGetTree and PJSIPShowEndpoints need ``system``; Setvar and
ExtensionStateList need ``call``) and ``read = system`` (only for the ``FullyBooted`` /
``Shutdown`` events; without it login still works, a little slower).

Beside it: ``actions`` builds the steps sent and reads the list answers (pure),
``config`` holds ``AmiConfig`` (re-exported here).

Start reading at ``AmiPbx.apply``, then ``AmiPbx._pipeline``, then ``AmiPbx._supervise``
(the connection lifecycle).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from pbxcal.errors import (
    PbxActionFailed,
    PbxAuthFailed,
    PbxcalError,
    PbxError,
    PbxUnavailable,
    UnsafeValue,
)
from pbxcal.pbx import ApplyResult, ForwardingState
from pbxcal.pbx.ami.actions import (
    APPLIED_TREE,
    DND_TREE,
    ENDPOINTS,
    HINTS,
    STATE_ENDPOINTS,
    STATE_HINTS,
    CheckedForwarding,
    extension_states,
    extensions_listed,
    forwardings_from_tree,
    lamp_steps,
    routing_steps,
)
from pbxcal.pbx.ami.codec import Message, ProtocolError
from pbxcal.pbx.ami.config import AmiConfig
from pbxcal.pbx.ami.session import (
    ActionObserver,
    AmiSession,
    LoginRefused,
    SessionClosed,
    Step,
    refusal,
)
from pbxcal.pbx.values import validate_forwarding

__all__ = ["ActionObserver", "AmiConfig", "AmiPbx", "ConnectionCallback", "map_error"]

log = logging.getLogger(__name__)

#: An async callable run after every (re)login or after a lost connection.
ConnectionCallback = Callable[[], Awaitable[None]]

#: A session that ends sooner than this after login counts as a failed attempt (backoff),
#: so an Asterisk that accepts and drops again and again is not hammered.
_STABLE_SESSION = 5.0


def map_error(exc: BaseException, config: AmiConfig, what: str) -> PbxError:
    """The one place where socket, asyncio and session errors become pbxcal errors."""
    if isinstance(exc, PbxError):
        return exc
    if isinstance(exc, TimeoutError):
        return PbxUnavailable(f"{config.where}: {what} timed out")
    if isinstance(exc, LoginRefused):
        if exc.auth:
            return PbxAuthFailed(
                f"{config.where}: AMI login as {config.username!r} refused: {exc} "
                "(check username, secret and permit= in manager.conf)")
        # e.g. "Asterisk is shutting down" while it restarts: try again soon.
        return PbxUnavailable(f"{config.where}: AMI login not possible now: {exc}")
    if isinstance(exc, SessionClosed):
        return PbxUnavailable(f"{config.where}: {what} failed, {exc}")
    if isinstance(exc, ProtocolError):
        return PbxUnavailable(f"{config.where}: {what} failed: {exc}")
    if isinstance(exc, OSError):
        return PbxUnavailable(f"{config.where}: {what} failed: {exc.strerror or exc}")
    return PbxUnavailable(f"{config.where}: {what} failed: {type(exc).__name__}: {exc}")


def _cheap(exc: BaseException) -> bool:
    """A failure that is cheap to retry soon: a refused connection or "not now" login."""
    cause = exc.__cause__
    return isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, LoginRefused) and not cause.auth)


def _result(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else "disconnected"


class AmiPbx:
    """The ``Pbx`` port over AMI. See the module docstring."""

    def __init__(self, config: AmiConfig, *, on_action: ActionObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        self.on_connected: list[ConnectionCallback] = []
        self.on_disconnected: list[ConnectionCallback] = []
        self._on_action = on_action
        self._session: AmiSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._connected_event = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._last_problem = ""
        #: Login attempts so far (for tests and the status line).
        self.login_attempts = 0

    def __repr__(self) -> str:
        return f"AmiPbx({self.config!r}, connected={self.connected})"

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a logged-in session is up."""
        return self._session is not None and not self._session.closed.done()

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
        except PbxUnavailable as exc:
            if retry:
                delay = self._retry_delay(exc, 1)
                self._supervisor = asyncio.create_task(self._supervise(None, delay, 1))
            raise
        if retry:
            self._supervisor = asyncio.create_task(self._supervise(session, 0.0, 0))

    async def close(self) -> None:
        """Log off and stop reconnecting. Safe to call more than once."""
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        session, self._session = self._session, None
        self._connected_event.clear()
        if session is not None:
            await session.logoff(min(1.0, self.config.action_timeout))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - the API
        """Wait until a logged-in session is up; ``PbxUnavailable`` after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    self._connected_event.clear()
                    await self._connected_event.wait()
        except TimeoutError as exc:
            raise map_error(exc, self.config, f"waiting {timeout:g}s for a connection") from exc

    # -- the Pbx port ------------------------------------------------------------------

    async def read_applied(self) -> ForwardingState:
        """Read ``pbxcal/fwd/*`` back: extension -> sorted targets. Malformed values are
        logged and left out (the reconciler then overwrites them)."""
        _, events = await self._request(APPLIED_TREE)
        return forwardings_from_tree(events, self.name)

    async def read_extensions(self) -> frozenset[str]:
        """The extensions that exist on this Asterisk: PJSIP endpoints and hints whose
        name is an extension by the wire rule (1-15 ASCII digits).

        ``PJSIPShowEndpoints`` (class ``system``) finds the phones; ``ExtensionStateList``
        (class ``call``) finds hinted extensions on sites without PJSIP endpoints per
        extension. Names like ``pstn`` or ``pbxcal100`` are not extensions.
        """
        _, endpoints = await self._request(ENDPOINTS)
        _, hints = await self._request(HINTS)
        return extensions_listed(endpoints, hints)

    async def read_extension_states(self) -> dict[str, str]:
        """What each extension's phone is doing: "in-use", "ringing", "dnd", "idle" or
        "unavailable": the PJSIP endpoints' device state (``PJSIPShowEndpoints``), hints
        (``ExtensionStateList``) where there is no endpoint of that name, and
        do-not-disturb as FreePBX keeps it (AstDB ``DND/<ext>`` = ``YES``) over an idle
        phone. Extensions with none of these are absent."""
        _, hints = await self._request(STATE_HINTS)
        _, endpoints = await self._request(STATE_ENDPOINTS)
        _, dnd = await self._request(DND_TREE)
        return extension_states(hints, endpoints, dnd)

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        """Set each extension's targets; an empty sequence clears. Idempotent.

        Each forwarding is validated on its own: an unsafe one is refused and not sent.
        Then all routing actions are pipelined (``_pipeline``), then the lamps of the
        extensions whose routing was applied.
        """
        refused: dict[str, str] = {}
        checked: list[CheckedForwarding] = []
        for ext, targets in changes.items():
            try:
                checked.append(validate_forwarding(ext, targets))
            except UnsafeValue as exc:
                refused[ext] = str(exc)
        routing = routing_steps(checked)
        if routing:
            refused.update(await self._pipeline(routing))
        if routing and self.config.device_state:
            refused.update(await self._pipeline(lamp_steps(checked, refused)))
        if refused:
            first = next(iter(refused.items()))
            log.warning("%s: %d of %d forwarding(s) refused, first %s: %s", self.config.where,
                        len(refused), len(changes), *first)
        return ApplyResult(refused=refused)

    # -- sending -----------------------------------------------------------------------

    def _require_session(self) -> AmiSession:
        session = self._session
        if session is None or session.closed.done():
            raise PbxUnavailable(f"{self.config.where}: not connected")
        return session

    async def _pipeline(self, steps: Sequence[Step]) -> dict[str, str]:
        """Send ``steps`` in order, at most ``window`` unanswered; the refused ``tag``s.

        Every action must be answered within ``action_timeout`` of being written; AMI
        answers one session's actions in order, so watching the oldest unanswered one is
        enough. A lost connection or a timeout raises ``PbxUnavailable`` at once.
        """
        if not steps:
            return {}
        session = self._require_session()
        timeout, observe = self.config.action_timeout, self._on_action
        batch = None
        try:
            batch = session.start_batch(steps, self.config.window)
            while not batch.done.done():
                oldest = batch.oldest_unanswered()
                left = batch.sent_at[oldest] + timeout - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.0, left)):
                        await asyncio.shield(batch.done)
                except TimeoutError:
                    if batch.oldest_unanswered() == oldest:
                        raise
            batch.done.result()
        except (TimeoutError, SessionClosed, OSError) as exc:
            index = min(batch.oldest_unanswered() if batch is not None else 0, len(steps) - 1)
            name = steps[index].action
            if observe is not None and batch is not None and batch.sent:
                observe(name, _result(exc),
                        time.monotonic() - batch.sent_at[min(index, batch.sent - 1)])
            raise map_error(exc, self.config, f"AMI {name}") from exc
        finally:
            if batch is not None:
                session.finish_batch(batch)
        return {step.tag: problem for step, problem in zip(steps, batch.problems, strict=True)
                if problem is not None}

    async def _request(self, step: Step) -> tuple[Message, list[Message]]:
        """One list action (``DBGetTree`` and friends): its answer and events."""
        session = self._require_session()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.action_timeout):
                reply, events = await session.request_list(step)
        except (TimeoutError, SessionClosed, OSError) as exc:
            self._observe(step.action, _result(exc), started)
            raise map_error(exc, self.config, f"AMI {step.action}") from exc
        problem = refusal(step, reply)
        self._observe(step.action, "error" if problem else "success", started)
        if problem is not None:
            raise PbxActionFailed(f"{self.config.where}: {problem}")
        return reply, events

    # -- connecting --------------------------------------------------------------------

    async def _connect_once(self) -> AmiSession:
        """Open a session, log in, wait for ``FullyBooted``; install it as current."""
        config = self.config
        self.login_attempts += 1
        started = time.monotonic()
        session: AmiSession | None = None
        try:
            async with asyncio.timeout(config.action_timeout):
                session = await AmiSession.connect(config.host, config.port, self._on_action)
                await session.login(config.username, config.secret)
        except LoginRefused as exc:
            assert session is not None
            session.close(None)
            self._observe("Login", "error", started)
            raise map_error(exc, config, "AMI login") from exc
        except (TimeoutError, SessionClosed, OSError) as exc:
            if session is not None:
                session.close(exc)
            self._observe("Login", _result(exc), started)
            raise map_error(exc, config, "AMI connect and login") from exc
        except UnsafeValue as exc:  # a line break in the username or secret
            if session is not None:
                session.close(None)
            raise PbxAuthFailed(f"{config.where}: AMI login as {config.username[:40]!r} "
                                f"not sent: {exc}") from exc
        except BaseException:
            if session is not None:
                session.close(None)
            raise
        self._observe("Login", "success", started)
        try:
            # During Asterisk's start-up AMI answers before all modules are loaded.
            async with asyncio.timeout(config.boot_timeout):
                await session.wait_booted()
        except TimeoutError:
            log.warning("%s: no FullyBooted event after login (grant 'read = system'?); "
                        "going ahead", config.where)
        except SessionClosed as exc:
            raise map_error(exc, config, "AMI login") from exc
        except BaseException:  # cancelled (close() while connecting): leave nothing open
            session.close(None)
            raise
        session.start_keepalive(config.ping_interval, config.ping_timeout)
        self._session = session
        self._connected_event.set()
        self._last_problem = ""
        log.info("%s: AMI connected as %r", config.where, config.username)
        self._fire(self.on_connected, "on_connected")
        return session

    async def _supervise(self, session: AmiSession | None, delay: float, attempt: int) -> None:
        """Watch the session; after a loss reconnect (fast when cheap, else back off)."""
        config = self.config
        since, flaps = time.monotonic(), 0
        while not self._closing:
            if session is not None:
                reason = await asyncio.shield(session.closed)
                if self._session is session:
                    self._session = None
                    self._connected_event.clear()
                log.warning("%s: AMI connection lost (%s); reconnecting", config.where,
                            map_error(reason, config, "the session") if reason else "closed")
                self._fire(self.on_disconnected, "on_disconnected")
                session = None
                # Right away, unless sessions keep dying young (a flapping peer).
                flaps = flaps + 1 if time.monotonic() - since < _STABLE_SESSION else 0
                attempt = max(flaps - 1, 0)
                delay = self._backoff(attempt) if attempt else 0.0
            await asyncio.sleep(delay)
            if self._closing:
                break
            try:
                session = await self._connect_once()
                since = time.monotonic()
            except PbxError as exc:
                attempt += 1
                delay = self._retry_delay(exc, attempt)
                self._report(exc, delay)

    def _retry_delay(self, exc: PbxError, attempt: int) -> float:
        config = self.config
        if isinstance(exc, PbxAuthFailed):
            # A wrong secret will not fix itself soon: knock at the cap, not hot.
            return config.backoff_max * random.uniform(0.8, 1.0)
        if _cheap(exc):
            return config.fast_retry * random.uniform(0.8, 1.0)
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (50-100 % of the step)."""
        step = self.config.backoff_initial * 2.0 ** min(max(attempt - 1, 0), 30)
        return min(self.config.backoff_max, step) * random.uniform(0.5, 1.0)

    def _report(self, exc: PbxError, delay: float) -> None:
        """Log a failed reconnect once per kind of problem, not at every fast retry."""
        text = str(exc)
        if isinstance(exc, PbxAuthFailed):
            log.error("%s; retrying in %.0fs", text, delay)
        elif text != self._last_problem:
            log.info("%s; retrying (every %.2gs while this lasts)", text, delay)
        self._last_problem = text

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
