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

This module must not be imported by the daemon, and never talks to anything but
loopback and the Debian mirror. Needs root (chroot) and ``debootstrap``. Start reading
at ``AsteriskSandbox``; ``python -m pbxcal.testing.asterisk up`` runs one by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.resources
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_ENDPOINTS",
    "AsteriskSandbox",
    "SandboxError",
    "default_cache_dir",
    "ensure_root",
    "find_debian_mirror",
]

ROOT_DIRNAME = "asterisk-sid-root"
_MARKER = ".pbxcal-root-ok"
_PACKAGES = "asterisk,asterisk-modules,asterisk-config"
_DEBIAN_SUITES = frozenset(
    {
        "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
        "unstable", "testing", "stable", "oldstable", "oldoldstable",
    }
)  # fmt: skip
DEFAULT_ENDPOINTS: tuple[str, ...] = ("100", "201", "202", "300", "pstn")
# Asterisk gets SIGTERM when the Python that started it dies (no orphans after a crash).
# Linux ties this to the starting *thread*: call start()/restart() from a thread that
# outlives the sandbox (the main thread), not from a short-lived worker thread.
_DIE_WITH_PARENT: tuple[str, ...] = (
    ("setpriv", "--pdeathsig", "TERM") if shutil.which("setpriv") else ()
)
#: The Asterisk config files pbxcal ships (package data; ``contrib/asterisk`` links here).
CONTRIB_DIR: Traversable = importlib.resources.files("pbxcal.pbx") / "asterisk"
SHIPPED_SECRET_LINE = re.compile(r"^secret\s*=.*$", re.MULTILINE)

# Loaded explicitly (autoload=no): boot in about a second, no network probing.
_MODULES = (
    "res_pjproject", "res_sorcery_config", "res_sorcery_memory", "res_sorcery_astdb",
    "res_pjsip", "res_pjsip_session", "res_pjsip_authenticator_digest",
    "res_pjsip_endpoint_identifier_user", "res_pjsip_registrar", "res_pjsip_sdp_rtp",
    "res_pjsip_caller_id", "res_pjsip_logger", "res_pjsip_pubsub", "res_pjsip_exten_state",
    "res_pjsip_outbound_publish", "res_pjsip_pidf_body_generator",
    "res_pjsip_dialog_info_body_generator", "res_rtp_asterisk", "chan_pjsip",
    "res_timing_timerfd", "bridge_simple", "bridge_native_rtp", "codec_ulaw",
    "pbx_config", "app_dial", "app_stack", "app_exec", "app_verbose", "func_db", "func_strings",
    "func_logic", "func_callerid", "func_devstate", "func_channel",
)  # fmt: skip


class SandboxError(RuntimeError):
    """The Asterisk sandbox cannot be built or run; the message says why and how to fix it."""


def _say(message: str) -> None:
    print(f"pbxcal.testing.asterisk: {message}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$PBXCAL_CACHE_DIR``, else ``~/.cache/pbxcal``."""
    env = os.environ.get("PBXCAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pbxcal"


# --------------------------------------------------------------------------- mirror


def _suite_is_debian(suite: str) -> bool:
    return suite.split("-", 1)[0].split("/", 1)[0] in _DEBIAN_SUITES


def _uri_is_debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and uri.rstrip("/").endswith("/debian")


def _list_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^]]*\]", " ", line[4:])
        fields = line.split()
        if len(fields) >= 2:
            yield fields[0], [fields[1]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites


def find_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian main archive this machine's apt uses, e.g. ``http://deb.debian.org/debian``.

    ``$PBXCAL_DEBIAN_MIRROR`` overrides. Raises ``SandboxError`` when none is configured.
    """
    override = os.environ.get("PBXCAL_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    sources: list[tuple[str, list[str]]] = []
    files = [apt_dir / "sources.list"]
    files += sorted((apt_dir / "sources.list.d").glob("*.list"))
    deb822 = sorted((apt_dir / "sources.list.d").glob("*.sources"))
    for path in files + deb822:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        parse = _deb822_entries if path.suffix == ".sources" else _list_entries
        sources.extend(parse(text))
    for uri, suites in sources:
        if _uri_is_debian_archive(uri) and any(_suite_is_debian(s) for s in suites):
            return uri.rstrip("/")
    raise SandboxError(
        f"no Debian archive mirror (a URI ending in /debian) found in {apt_dir}/sources.list"
        f" or {apt_dir}/sources.list.d/; set PBXCAL_DEBIAN_MIRROR=http://.../debian"
    )


def _check_mirror(mirror: str) -> None:
    url = f"{mirror}/dists/sid/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise SandboxError(
            f"Debian mirror {mirror} is unreachable ({url}: {exc}); check the network/proxy"
            " or set PBXCAL_DEBIAN_MIRROR"
        ) from exc


# --------------------------------------------------------------------------- root


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "the Asterisk sandbox needs root (debootstrap and chroot); run the tests as root"
        )


def _root_is_healthy(root: Path) -> bool:
    return (root / _MARKER).is_file() and (root / "usr/sbin/asterisk").is_file()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def _remove_tree(path: Path) -> None:
    """Delete a (possibly half-built) root; unmount what debootstrap left mounted first."""
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise SandboxError(f"cannot remove {path}: something is still mounted below it")
    shutil.rmtree(path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process building the Asterisk root ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _debootstrap(target: Path, mirror: str, log_path: Path) -> None:
    command = ["debootstrap", "--variant=minbase", f"--include={_PACKAGES}"]
    if os.environ.get("PBXCAL_DEBOOTSTRAP_NO_CHECK_GPG") == "1":
        command.append("--no-check-gpg")
    command += ["sid", str(target), mirror]
    _say(f"building Debian sid root with Asterisk (about a minute): {' '.join(command)}")
    started = time.monotonic()
    tail: list[str] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        last_report = 0.0
        for line in proc.stdout:
            log.write(line)
            tail = [*tail[-40:], line.rstrip()]
            now = time.monotonic()
            if line.startswith(("E:", "W:")) or now - last_report > 5:
                _say(f"debootstrap [{now - started:4.0f}s] {line.rstrip()}")
                last_report = now
        code = proc.wait()
    if code != 0:
        text = "\n".join(tail)
        errors = [t for t in tail if t.startswith("E:")] or tail[-1:] or ["no output"]
        hint = ""
        if "signature" in text.lower() or "NO_PUBKEY" in text or "unknown key" in text:
            hint = (
                "; sid is signed by a key this machine's keyring lacks: apt-get install"
                " debian-archive-keyring (from bookworm-updates) or set"
                " PBXCAL_DEBOOTSTRAP_NO_CHECK_GPG=1"
            )
        raise SandboxError(
            f"debootstrap failed (exit {code}): {errors[-1]}{hint}; full log: {log_path}"
        )
    _say(f"debootstrap finished in {time.monotonic() - started:.0f}s")


def ensure_root(cache_dir: Path | None = None) -> Path:
    """Return a healthy Debian sid root with Asterisk, building it on first use.

    The root lives at ``<cache_dir>/asterisk-sid-root``. It is built into a temporary
    directory and renamed into place, under a file lock, so concurrent callers build it
    once and never see a half-built root. A root without the success marker is rebuilt.
    """
    _require_root()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / ROOT_DIRNAME
    if _root_is_healthy(root):
        return root
    with _file_lock(cache / f"{ROOT_DIRNAME}.lock"):
        if _root_is_healthy(root):
            return root
        if shutil.which("debootstrap") is None:
            raise SandboxError("debootstrap is not installed; run: apt-get install debootstrap")
        mirror = find_debian_mirror()
        _check_mirror(mirror)
        for stale in cache.glob(f"{ROOT_DIRNAME}.tmp-*"):
            _remove_tree(stale)
        for stale in cache.glob(f"{ROOT_DIRNAME}.old-*"):
            _remove_tree(stale)
        tmp = cache / f"{ROOT_DIRNAME}.tmp-{os.getpid()}"
        try:
            _debootstrap(tmp, mirror, cache / f"{ROOT_DIRNAME}.build.log")
            version = subprocess.run(
                ["chroot", str(tmp), "asterisk", "-V"], capture_output=True, text=True,
                check=False, timeout=60,
            )  # fmt: skip
            if version.returncode != 0 or not version.stdout.startswith("Asterisk"):
                raise SandboxError(
                    f"the new root at {tmp} has no working asterisk: "
                    f"{(version.stdout + version.stderr).strip()[:200]}"
                )
            (tmp / "srv/pbxcal").mkdir(parents=True, exist_ok=True)
            (tmp / _MARKER).write_text(f"{version.stdout.strip()}\nmirror {mirror}\n")
            if root.exists():
                old = cache / f"{ROOT_DIRNAME}.old-{os.getpid()}"
                root.rename(old)
                tmp.rename(root)
                _remove_tree(old)
            else:
                tmp.rename(root)
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(tmp)
            raise
        _say(f"Asterisk root ready: {root} ({version.stdout.strip()})")
    return root


# --------------------------------------------------------------------------- sandbox


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
        _require_root()
        if self.running:
            return
        if not _root_is_healthy(self.root):
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
        source = self.contrib_dir / "manager.d" / "pbxcal.conf"
        try:
            shipped = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise SandboxError(f"cannot read {source}: {exc}") from exc
        if len(SHIPPED_SECRET_LINE.findall(shipped)) != 1:
            raise SandboxError(f"{source} must contain exactly one 'secret = ...' line")
        patched = SHIPPED_SECRET_LINE.sub(f"secret = {self.ami_secret}", shipped)
        before = [ln for ln in shipped.splitlines() if not SHIPPED_SECRET_LINE.match(ln)]
        after = [ln for ln in patched.splitlines() if not SHIPPED_SECRET_LINE.match(ln)]
        assert before == after, "only the secret line may differ from the shipped file"
        return patched

    def _prepare(self) -> None:
        base = self.instance_dir
        for sub in ("etc/manager.d", "run", "spool", "lib", "log", "cache"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.ami_port = _free_port(socket.SOCK_STREAM)
        self.sip_port = _free_port(socket.SOCK_DGRAM)
        # Even start, 200 ports; Asterisk retries inside the range if one is taken.
        self.rtp_start = 30000 + 2 * secrets.randbelow(4900)
        extensions = self.contrib_dir / "extensions_pbxcal.conf"
        if not extensions.is_file():
            raise SandboxError(f"missing {extensions}: pbxcal's package data is incomplete; "
                               "reinstall pbxcal")
        files = {
            "asterisk.conf": self._asterisk_conf(),
            "modules.conf": "[modules]\nautoload = no\n"
            + "".join(f"load = {m}.so\n" for m in _MODULES),
            "logger.conf": "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\n"
            "messages.log => notice,warning,error,verbose(3)\n",
            "manager.conf": self._manager_conf(),
            "manager.d/pbxcal.conf": self.pbxcal_manager_conf(),
            "pjsip.conf": self._pjsip_conf(),
            "rtp.conf": f"[general]\nrtpstart = {self.rtp_start}\n"
            f"rtpend = {self.rtp_start + 199}\nicesupport = no\n",
            "extensions.conf": self._extensions_conf(),
            "extensions_pbxcal.conf": extensions.read_text(encoding="utf-8"),
            "cdr.conf": "[general]\nenable = no\n",
            "cel.conf": "[general]\nenable = no\n",
        }
        for quiet in ("features", "acl", "udptl", "pjproject", "ccss"):
            files[f"{quiet}.conf"] = "; intentionally empty: defaults are fine\n"
        stock = self.root / "etc/asterisk/indications.conf"
        if stock.is_file():
            files["indications.conf"] = stock.read_text()
        for rel, text in files.items():
            (base / "etc" / rel).write_text(text)
        self._prepared = True

    def _asterisk_conf(self) -> str:
        inside = self._inside
        return (
            "[directories]\n"
            f"astetcdir => {inside}/etc\n"
            f"astmoddir => {self._moddir_inside()}\n"
            f"astvarlibdir => {inside}/lib\n"
            f"astdbdir => {inside}/lib\n"
            f"astkeydir => {inside}/lib\n"
            "astdatadir => /usr/share/asterisk\n"
            "astagidir => /usr/share/asterisk/agi-bin\n"
            f"astspooldir => {inside}/spool\n"
            f"astrundir => {inside}/run\n"
            f"astlogdir => {inside}/log\n"
            f"astcachedir => {inside}/cache\n"
            "astsbindir => /usr/sbin\n"
            "\n[options]\n"
            "verbose = 3\n"
            "documentation_language = en_US\n"
            "hideconnect = yes\n"
            f"systemname = {self.name}\n"
            f"entityid = 02:00:00:{secrets.token_hex(1)}:{secrets.token_hex(1)}:"
            f"{secrets.token_hex(1)}\n"
        )

    def _moddir_inside(self) -> str:
        found = sorted(self.root.glob("usr/lib/*/asterisk/modules"))
        if not found:
            raise SandboxError(f"no usr/lib/*/asterisk/modules in {self.root}; rebuild the root")
        return "/" + str(found[0].relative_to(self.root))

    def _manager_conf(self) -> str:
        return (
            "[general]\n"
            "enabled = yes\n"
            f"port = {self.ami_port}\n"
            "bindaddr = 127.0.0.1\n"
            "displayconnects = no\n"
            "\n"
            '#include "manager.d/pbxcal.conf"\n'
            "\n"
            f"[{self.admin_username}]\n"
            f"secret = {self.admin_secret}\n"
            "deny = 0.0.0.0/0.0.0.0\n"
            "permit = 127.0.0.1/255.255.255.255\n"
            "read = all\n"
            "write = all\n"
        )

    def _pjsip_conf(self) -> str:
        parts = [
            "[global]\ntype = global\nuser_agent = pbxcal-sandbox\n\n"
            f"[transport-udp]\ntype = transport\nprotocol = udp\n"
            f"bind = 127.0.0.1:{self.sip_port}\n"
        ]
        for ep in self.endpoints:
            parts.append(
                f"\n[{ep}]\ntype = endpoint\ntransport = transport-udp\n"
                f"context = {self.phones_context}\ndisallow = all\nallow = ulaw\n"
                f"auth = {ep}-auth\naors = {ep}\ndirect_media = no\n"
                f'callerid = "{ep}" <{ep}>\n'
                f"\n[{ep}-auth]\ntype = auth\nauth_type = userpass\n"
                f"username = {ep}\npassword = {self.sip_secret}\n"
                f"\n[{ep}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n"
            )
        return "".join(parts)

    def _extensions_conf(self) -> str:
        return f"""\
[general]
static = yes
writeprotect = yes

[globals]
PBXCAL_OUTBOUND_CONTEXT = {self.phones_context}
PBXCAL_INTERNAL_CONTEXT = pbxcal-test-internal
PBXCAL_DIAL_TIMEOUT = 30

#include "extensions_pbxcal.conf"

; What the phones dial; also the context forwarding targets are dialled in.
[{self.phones_context}]
include => pbxcal-test-internal
include => pbxcal-test-outbound
include => pbxcal-hints

; Internal extensions: the pbxcal hook, then the extension's own phone.
[pbxcal-test-internal]
exten => _XXX,1,Gosub(pbxcal-forward,s,1(${{EXTEN}}))
 same => n,GotoIf($["${{GOSUB_RETVAL}}" != ""]?unanswered)
 same => n,Dial(PJSIP/${{EXTEN}},30)
 same => n(unanswered),Hangup()

; The PSTN: every E.164 number goes to the "pstn" endpoint (the user part carries it),
; and so does every other digit string that is not an internal extension (national
; numbers, short codes like 118218 or 1120), as a real outbound route would send them.
[pbxcal-test-outbound]
exten => _+X.,1,Dial(PJSIP/${{EXTEN}}@pstn,30)
 same => n,Hangup()
exten => _X.,1,Dial(PJSIP/${{EXTEN}}@pstn,30)
 same => n,Hangup()
"""


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
