"""A real Asterisk 22 for tests and demos, in a cached Debian sid chroot.

Debian bookworm ships no Asterisk, Debian sid does. ``ensure_root()`` builds a minimal
sid root with ``debootstrap`` from the mirror this machine's apt already uses, once, and
caches it (``$PBXCAL_CACHE_DIR`` or ``~/.cache/pbxcal``). ``AsteriskSandbox`` then runs
one isolated Asterisk from that root: its own directory inside the chroot
(``/srv/pbxcal/<name>-<random>``) with its own config, AstDB, sockets and logs, AMI and
SIP on free loopback ports. Several sandboxes can share one root.

The sandbox uses the files an admin installs, unchanged: ``extensions_pbxcal.conf`` and
``manager.d/pbxcal.conf`` (only its ``secret`` line is replaced). They are package data
of ``pbxcal.pbx`` (``pbxcal/pbx/asterisk/``, found with ``importlib.resources``, so an
installed pbxcal needs no source checkout); ``contrib/asterisk/`` links to that one copy
for admins. Around them it writes a test dialplan and PJSIP endpoints 100, 201, 202, 300
and ``pstn`` (the PSTN stand-in: E.164 numbers *and* any other digit string that is not
an internal extension are routed to it, as a real trunk route would).

Beside it, and importable from here too: ``asterisk_root`` (building and caching the
root, ``ensure_root``, ``find_debian_mirror``, ``SandboxError``) and ``asterisk_files``
(the text of each config file an instance gets). This module runs an instance.

This module must not be imported by the daemon, and never talks to anything but
loopback and the Debian mirror. Needs root (chroot) and ``debootstrap``. Start reading
at ``AsteriskSandbox``; ``python -m pbxcal.testing.asterisk up`` runs one by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType

from pbxcal.testing.asterisk_files import (
    CONTRIB_DIR,
    SHIPPED_SECRET_LINE,
    asterisk_conf,
    extensions_conf,
    manager_conf,
    moddir_inside,
    modules_conf,
    pbxcal_manager_conf,
    pjsip_conf,
)
from pbxcal.testing.asterisk_root import (
    ROOT_DIRNAME,
    SandboxError,
    default_cache_dir,
    ensure_root,
    find_debian_mirror,
    require_root,
    root_is_healthy,
)
from pbxcal.testing.ports import free_port

__all__ = [
    "CONTRIB_DIR",
    "DEFAULT_ENDPOINTS",
    "ROOT_DIRNAME",
    "SHIPPED_SECRET_LINE",
    "AsteriskSandbox",
    "SandboxError",
    "default_cache_dir",
    "ensure_root",
    "find_debian_mirror",
]

DEFAULT_ENDPOINTS: tuple[str, ...] = ("100", "201", "202", "300", "pstn")
# Asterisk gets SIGTERM when the Python that started it dies (no orphans after a crash).
# Linux ties this to the starting *thread*: call start()/restart() from a thread that
# outlives the sandbox (the main thread), not from a short-lived worker thread.
_DIE_WITH_PARENT: tuple[str, ...] = (
    ("setpriv", "--pdeathsig", "TERM") if shutil.which("setpriv") else ()
)


# --------------------------------------------------------------------------- sandbox


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


class AsteriskSandbox:
    """One isolated Asterisk from a shared root: AMI and PJSIP/UDP on loopback.

    ``with AsteriskSandbox(ensure_root()) as ast:`` starts it and waits for FullyBooted;
    leaving the block stops it and deletes its directory (set ``keep=True`` or
    ``PBXCAL_KEEP_SANDBOX=1`` to keep it for debugging). ``restart()`` keeps ports and
    AstDB, like a real PBX restart.

    AMI users: ``ami_username`` (``pbxcal``, exactly the shipped manager.d/pbxcal.conf)
    and ``admin_username`` (``sandbox-admin``, all privileges, for tests). SIP endpoints
    in ``endpoints`` authenticate with username = endpoint name, password ``sip_secret``,
    and dial in context ``pbxcal-test-phones``.
    """

    ami_host = "127.0.0.1"
    sip_host = "127.0.0.1"
    ami_username = "pbxcal"
    admin_username = "sandbox-admin"
    phones_context = "pbxcal-test-phones"

    def __init__(
        self,
        root: Path,
        name: str = "pbxcal-test",
        *,
        endpoints: Sequence[str] = DEFAULT_ENDPOINTS,
        contrib_dir: Traversable | None = None,
        boot_timeout: float = 60.0,
        keep: bool = False,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
            raise SandboxError(f"sandbox name {name!r} must match [A-Za-z0-9_.-]{{1,40}}")
        for endpoint in endpoints:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", endpoint):
                raise SandboxError(f"endpoint name {endpoint!r} must match [A-Za-z0-9_-]+")
        self.root = root
        self.name = name
        self.endpoints = tuple(endpoints)
        self.contrib_dir = contrib_dir if contrib_dir is not None else CONTRIB_DIR
        self.boot_timeout = boot_timeout
        self.keep = keep or os.environ.get("PBXCAL_KEEP_SANDBOX") == "1"
        self.ami_secret = secrets.token_hex(16)
        self.admin_secret = secrets.token_hex(16)
        self.sip_secret = secrets.token_hex(8)
        self.ami_port = 0
        self.sip_port = 0
        self.rtp_start = 0
        self.boot_seconds: float | None = None
        self._inside = Path("/srv/pbxcal") / f"{name}-{secrets.token_hex(4)}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._started_at = 0.0

    # -- paths ---------------------------------------------------------------------

    @property
    def instance_dir(self) -> Path:
        """This instance's directory, as seen from the host."""
        return self.root / self._inside.relative_to("/")

    @property
    def log_path(self) -> Path:
        """Asterisk's messages log (verbose level 3), as seen from the host."""
        return self.instance_dir / "log" / "messages.log"

    @property
    def console_log_path(self) -> Path:
        return self.instance_dir / "log" / "console.log"

    @property
    def _conf_inside(self) -> str:
        return str(self._inside / "etc" / "asterisk.conf")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> AsteriskSandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, *, wait: bool = True) -> None:
        """Start Asterisk and wait until it is FullyBooted and AMI accepts connections.

        ``wait=False`` returns as soon as the process is started (e.g. to watch a client
        reconnect while Asterisk boots); call ``wait_ready()`` afterwards.
        """
        require_root()
        if self.running:
            return
        if not root_is_healthy(self.root):
            raise SandboxError(f"{self.root} is not a built Asterisk root; call ensure_root()")
        if not self._prepared:
            self._prepare()
        started = time.monotonic()
        console = open(self.console_log_path, "ab")  # noqa: SIM115 (lives with the process)
        try:
            self._proc = subprocess.Popen(
                [*_DIE_WITH_PARENT, "chroot", str(self.root), "asterisk", "-f", "-n", "-C",
                 self._conf_inside],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            console.close()
        self._started_at = started
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the started Asterisk is FullyBooted and AMI accepts connections.

        Safe from a worker thread (it only runs ``asterisk -rx`` and connects).
        """
        started = self._started_at
        try:
            self._wait_booted(started + self.boot_timeout)
        except BaseException:
            self._kill()
            raise
        self.boot_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop cleanly (``core stop now``), then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(SandboxError, subprocess.TimeoutExpired):
                self._rx("core stop now", timeout=10)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports, with the same AstDB."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the instance directory (unless ``keep``)."""
        try:
            self.stop()
        finally:
            if not self.keep and self.instance_dir.exists():
                shutil.rmtree(self.instance_dir, ignore_errors=True)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        self._proc = None

    def _wait_booted(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise SandboxError(
                    f"Asterisk exited with status {proc.returncode} during boot; "
                    f"log tail: {self._log_tails()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError(
                    f"Asterisk did not reach FullyBooted within {self.boot_timeout:.0f}s; "
                    f"log tail: {self._log_tails()}"
                )
            try:
                out = self._rx("core waitfullybooted", timeout=max(remaining, 1.0))
            except (SandboxError, subprocess.TimeoutExpired):
                time.sleep(0.1)
                continue
            if "fully booted" in out.lower():
                break
            time.sleep(0.1)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((self.ami_host, self.ami_port), timeout=1).close()
                return
            time.sleep(0.1)
        raise SandboxError(
            f"Asterisk booted but AMI on {self.ami_host}:{self.ami_port} does not accept "
            f"connections; log tail: {self._log_tails()}"
        )

    def _log_tails(self) -> str:
        return f"{_tail(self.log_path)} || console: {_tail(self.console_log_path, 10)}"

    # -- CLI -----------------------------------------------------------------------

    def _rx(self, command: str, timeout: float) -> str:
        result = subprocess.run(
            ["chroot", str(self.root), "asterisk", "-C", self._conf_inside, "-rx", command],
            capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if result.returncode != 0 or result.stdout.startswith("Unable to connect"):
            raise SandboxError(
                f"asterisk -rx {command!r} failed ({result.returncode}): "
                f"{(result.stdout + result.stderr).strip()[:300]}"
            )
        return result.stdout

    def cli(self, command: str, timeout: float = 15.0) -> str:
        """Run one Asterisk CLI command against this instance and return its output."""
        if "\n" in command or "\r" in command:
            raise SandboxError("CLI command must be one line")
        if not self.running:
            raise SandboxError(f"sandbox {self.name} is not running")
        return self._rx(command, timeout)

    # -- configuration -------------------------------------------------------------

    def pbxcal_manager_conf(self) -> str:
        """The shipped manager.d/pbxcal.conf with only its secret line replaced."""
        return pbxcal_manager_conf(self.contrib_dir, self.ami_secret)

    def _manager_conf(self) -> str:
        """The text of manager.conf (a hook: tests add AMI users or logging)."""
        return manager_conf(self.ami_port, self.admin_username, self.admin_secret)

    def _prepare(self) -> None:
        base = self.instance_dir
        for sub in ("etc/manager.d", "run", "spool", "lib", "log", "cache"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.ami_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        # Even start, 200 ports; Asterisk retries inside the range if one is taken.
        self.rtp_start = 30000 + 2 * secrets.randbelow(4900)
        extensions = self.contrib_dir / "extensions_pbxcal.conf"
        if not extensions.is_file():
            raise SandboxError(f"missing {extensions}: pbxcal's package data is incomplete; "
                               "reinstall pbxcal")
        files = {
            "asterisk.conf": asterisk_conf(self._inside, moddir_inside(self.root), self.name),
            "modules.conf": modules_conf(),
            "logger.conf": "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\n"
            "messages.log => notice,warning,error,verbose(3)\n",
            "manager.conf": self._manager_conf(),
            "manager.d/pbxcal.conf": self.pbxcal_manager_conf(),
            "pjsip.conf": pjsip_conf(self.sip_port, self.endpoints, self.phones_context,
                                     self.sip_secret),
            "rtp.conf": f"[general]\nrtpstart = {self.rtp_start}\n"
            f"rtpend = {self.rtp_start + 199}\nicesupport = no\n",
            "extensions.conf": extensions_conf(self.phones_context),
            "extensions_pbxcal.conf": extensions.read_text(encoding="utf-8"),
            "cdr.conf": "[general]\nenable = no\n",
            "cel.conf": "[general]\nenable = no\n",
        }  # fmt: skip
        for quiet in ("features", "acl", "udptl", "pjproject", "ccss"):
            files[f"{quiet}.conf"] = "; intentionally empty: defaults are fine\n"
        stock = self.root / "etc/asterisk/indications.conf"
        if stock.is_file():
            files["indications.conf"] = stock.read_text()
        for rel, text in files.items():
            (base / "etc" / rel).write_text(text)
        self._prepared = True

# --------------------------------------------------------------------------- CLI


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``build``: build/reuse the root. ``up``: run a sandbox until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m pbxcal.testing.asterisk")
    parser.add_argument("command", choices=["build", "up"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--name", default="pbxcal-demo")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        root = ensure_root(args.cache_dir)
        if args.command == "build":
            print(root)
            return 0
        with AsteriskSandbox(root, args.name) as ast:
            print(f"asterisk up in {ast.boot_seconds:.1f}s, config in {ast.instance_dir}/etc")
            print(f"AMI   {ast.ami_host}:{ast.ami_port} user {ast.ami_username} "
                  f"secret {ast.ami_secret}")  # fmt: skip
            print(f"admin {ast.admin_username} secret {ast.admin_secret}")
            print(f"SIP   udp {ast.sip_host}:{ast.sip_port} endpoints "
                  f"{','.join(ast.endpoints)} password {ast.sip_secret}")  # fmt: skip
            print(f"log   {ast.log_path}")
            print("Ctrl-C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while ast.running:
                    time.sleep(1)
        return 0
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
