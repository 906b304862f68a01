"""``pbxcal keys generate|rotate``: the keys that encrypt credentials kept in the store.

``generate FILE`` writes a new key file (mode 0600, one base64 key per line, the first
encrypts; refuses an existing file) or, with ``--add``, puts a new current key in front
of an existing file's keys (rewritten atomically, keeping its owner and mode).
``rotate`` re-encrypts every stored secret that an older key sealed with the current key
of ``[secrets]`` and says how many. Both name the file or store they touched and the
key's id (a fingerprint), never key material. The format and the crypto are described
in ``pbxcal.store.secrets``.

Rotation, in order: ``pbxcal keys generate --add FILE``; restart the service (it must
know the new key before anything is written with it); ``pbxcal keys rotate``; delete
the old key's line; restart again.

``key_ring(config)`` is how any command that stores or reads a credential gets the keys.

Must not print, log or take key material on the command line. Start at ``run_keys``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbxcal.cli.common import global_options, load, opened_store
from pbxcal.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import KeyRing


def add_keys(sub: Any) -> None:
    common = global_options()
    p = sub.add_parser(
        "keys",
        parents=[common],
        help="make and rotate the keys that encrypt stored credentials",
        description="Make a key file for [secrets] key_file, or re-encrypt the stored "
        "credentials with the current key after a new one was put first. --config and "
        "--store may stand before or after rotate.",
    )
    keys = p.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    generate = keys.add_parser(
        "generate",
        help="write a new key file (0600), or put a new key first in one (--add)",
        description="Write a new key file, readable only by its owner. With --add, put a "
        "new key in front of an existing file's keys: it encrypts from then on, the "
        "others still decrypt until 'pbxcal keys rotate' re-encrypted everything.",
    )
    generate.add_argument(
        "file",
        metavar="FILE",
        type=Path,
        help="the key file; the service must read it: owned by its user, or passed with "
        'LoadCredential=pbxcal-keys:FILE and [secrets] key_credential = "pbxcal-keys"',
    )
    generate.add_argument(
        "--add",
        action="store_true",
        help="put a new current key in front of the keys of an existing FILE",
    )
    keys.add_parser(
        "rotate",
        parents=[common],
        help="re-encrypt every stored credential with the current (first) key",
        description="Re-encrypt every credential in the store that an older key "
        "encrypted with the first key of [secrets] key_file / key_credential.",
    )
    p.set_defaults(handler=run_keys)


def run_keys(ns: argparse.Namespace) -> int:
    if ns.keys_command == "generate":
        return _generate(ns.file, add=ns.add)
    return _rotate(ns)


def _generate(path: Path, *, add: bool) -> int:
    from pbxcal.store.secrets import encode_key, key_id, new_key, read_key_file

    key = new_key()
    if not add:
        _create(path, encode_key(key) + "\n")
        print(
            f'wrote {path}: 1 key (id {key_id(key)}); set [secrets] key_file = "{path.absolute()}"'
        )
        return 0
    if not path.exists():
        raise InputError(f"{path} does not exist; without --add a new key file is written")
    old = read_key_file(path)
    lines = path.read_text(encoding="ascii").splitlines()
    _replace(path, "\n".join([encode_key(key), *lines]) + "\n")
    print(
        f"wrote {path}: new current key {key_id(key)} in front of {len(old.ids)} older "
        f"key(s) ({', '.join(old.ids)}); restart the service, run 'pbxcal keys rotate', "
        "then delete the older lines"
    )
    return 0


def _create(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InputError(
            f"{path} exists; it is never overwritten (--add puts a new key in front of its keys)"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        _write_all(fd, text.encode("ascii"))
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)


def _replace(path: Path, text: str) -> None:
    """Rewrite ``path`` atomically (temp file + rename), keeping its owner and mode."""
    info = path.stat()
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write next to {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, info.st_mode & 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, info.st_uid, info.st_gid)
        _write_all(fd, text.encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        Path(temporary).unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def key_ring(config: Config) -> KeyRing:
    """The keys of ``[secrets]``; a one-line ``ConfigError`` when none are configured.

    For every command that stores or reads a credential:
    ``store.use_keys(key_ring(config))`` on the store of ``common.opened_store``.
    """
    from pbxcal.store.secrets import NO_KEY_MESSAGE, load_key_ring

    ring = load_key_ring(config.secrets_key_file, config.secrets_key_credential)
    if ring is None:
        raise ConfigError([f"{config.source}: {NO_KEY_MESSAGE}"])
    return ring


def _rotate(ns: argparse.Namespace) -> int:
    config = load(ns)
    ring = key_ring(config)
    with opened_store(ns, config) as (store, where):
        store.use_keys(ring)
        count = store.rotate_secrets()
    print(
        f"re-encrypted {count} secret(s) in store {where} with key {ring.current_id} "
        f"(keys from {ring.where})"
    )
    return 0
