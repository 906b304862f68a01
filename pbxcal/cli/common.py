"""What several commands share: global options, the config, the store and its files.

``global_options(...)`` builds the parent parser of ``--config``/``--store``/``--json``
that a command group and each of its actions both accept (``pbxcal links --config F
add`` and ``pbxcal links add --config F`` are the same); ``config_path(ns)`` and
``store_url(ns, config)`` read them. ``opened_store`` opens the store the service uses
(``pbxcal.config.default_store_url``) and keeps its SQLite files writable by the
service's user when root writes them; ``store_name`` is how output names it.

Must stay light to import (the CLI starts with it): heavy modules are imported inside
functions. Start reading at ``opened_store``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Store

DEFAULT_CONFIG = "/etc/pbxcal/pbxcal.toml"
#: SQLite writes these next to the database file.
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def global_options(*, store: bool = True, json: bool = False) -> argparse.ArgumentParser:
    """A parent parser whose options may stand before or after a command's action.

    Their defaults are ``SUPPRESS`` so the place that did not give an option does not
    overwrite the one that did; read them with ``config_path``/``store_url``/``wants_json``.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"the TOML config (default: $PBXCAL_CONFIG or {DEFAULT_CONFIG})",
    )
    if store:
        parent.add_argument(
            "--store",
            metavar="URL",
            default=argparse.SUPPRESS,
            help="override [store] url (default: /var/lib/pbxcal/pbxcal.sqlite3, the "
            "service's state directory)",
        )
    if json:
        parent.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )
    return parent


def config_path(ns: argparse.Namespace) -> str:
    path: str = getattr(ns, "config", None) or os.environ.get("PBXCAL_CONFIG") or DEFAULT_CONFIG
    return path


def wants_json(ns: argparse.Namespace) -> bool:
    return bool(getattr(ns, "json", False))


def store_url(ns: argparse.Namespace, config: Config) -> str:
    """``--store``, else ``[store] url``, else the service's default location."""
    from pbxcal.config import default_store_url

    given: str | None = getattr(ns, "store", None)
    return given or config.store_url or default_store_url(os.environ.get("STATE_DIRECTORY"))


def store_name(url: str) -> str:
    """The store as output names it: a SQLite file's path, else the URL redacted."""
    from pbxcal.core.redact import redact_url

    path = sqlite_path(url)
    return str(path) if path is not None else redact_url(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (absolute), or None (PostgreSQL, in memory)."""
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///") :].split("?", 1)[0]
    if not name or name == ":memory:":
        return None
    return Path(name).absolute()


@contextmanager
def opened_store(ns: argparse.Namespace, config: Config) -> Iterator[tuple[Store, str]]:
    """The store the service uses, open, with its name for output; closed afterwards.

    With the default location its directory must exist (systemd creates it for the
    service's user on the first start): pbxcal does not create it as root. When root
    writes a SQLite store in a directory owned by another user (the service's), the
    database files are given to that user, so the service can still write them.
    """
    from pbxcal.store import Store

    url = store_url(ns, config)
    path = sqlite_path(url)
    explicit = bool(getattr(ns, "store", None) or config.store_url)
    if path is not None:
        if not explicit and not path.parent.is_dir():
            raise InputError(
                f"store {path}: {path.parent} does not exist yet; start the service once "
                "(systemd creates it for the service's user) or give --store / [store] url"
            )
        give_to_directory_owner(path, create=True)
    store = Store.open(url)
    try:
        if path is not None:
            give_to_directory_owner(path, create=False)
        yield store, store_name(url)
    finally:
        store.close()
        if path is not None:
            give_to_directory_owner(path, create=False)


def give_to_directory_owner(path: Path, *, create: bool) -> None:
    """As root, make ``path`` (and its -wal/-shm/-journal) belong to its directory's owner.

    With ``create`` a missing database file is created first (0600) so SQLite never
    creates it as root. Does nothing when not root or when the directory is root's.
    """
    if os.geteuid() != 0:
        return
    try:
        directory = path.parent.stat()
    except OSError:
        return  # Store.open reports a missing or unusable directory in its own words
    if directory.st_uid == 0:
        return
    if create and not path.exists() and path.parent.is_dir():
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise InputError(f"cannot create store {path}: {exc.strerror}") from None
        else:
            try:
                os.fchown(fd, directory.st_uid, directory.st_gid)
            finally:
                os.close(fd)
    for suffix in _COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            info = companion.lstat()
            if info.st_uid == 0 and not companion.is_symlink():
                os.chown(companion, directory.st_uid, directory.st_gid, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(
                f"store {path}: cannot give {companion.name} to the service's user "
                f"(uid {directory.st_uid}): {exc.strerror}"
            ) from None


def load(ns: argparse.Namespace) -> Config:
    from pbxcal.config import load_config

    return load_config(config_path(ns))
