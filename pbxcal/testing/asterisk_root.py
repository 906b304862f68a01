"""The cached Debian sid root with Asterisk 22 in it, which ``AsteriskSandbox`` runs from.

Debian bookworm ships no Asterisk, Debian sid does. ``ensure_root()`` builds a minimal
sid root with ``debootstrap`` from the mirror this machine's apt already uses
(``find_debian_mirror``), once, and caches it (``$PBXCAL_CACHE_DIR`` or
``~/.cache/pbxcal``): built into a temporary directory and renamed into place under a
file lock, so concurrent callers build it once and never see a half-built root.

What it must not do: be imported by the daemon, talk to anything but the Debian mirror,
or leave a half-built root or a mount behind. Needs root (chroot) and ``debootstrap``.
Its names are importable from ``pbxcal.testing.asterisk`` too.
Start reading at ``ensure_root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ROOT_DIRNAME",
    "SandboxError",
    "default_cache_dir",
    "ensure_root",
    "find_debian_mirror",
    "require_root",
    "root_is_healthy",
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


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "the Asterisk sandbox needs root (debootstrap and chroot); run the tests as root"
        )


def root_is_healthy(root: Path) -> bool:
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
    require_root()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / ROOT_DIRNAME
    if root_is_healthy(root):
        return root
    with _file_lock(cache / f"{ROOT_DIRNAME}.lock"):
        if root_is_healthy(root):
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
