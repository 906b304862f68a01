"""A throwaway PostgreSQL server for tests: Debian's own binaries, a cluster in a temp dir.

``running_postgres(tmpdir)`` initialises a cluster, starts it on 127.0.0.1 on a free port
(its unix socket in the cluster's own directory, so it never clashes with a system
PostgreSQL), creates a database and yields a ``postgresql+psycopg://`` URL; on exit it
stops the server (immediate mode) and deletes the cluster. ``stop_postgres(url)`` and
``start_postgres(url)`` stop it (cutting every connection) and start it again on the
same port. Durability is switched off
(``fsync=off``), which is fine for data that dies with the test run.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(created by Debian's package) via ``runuser``; the cluster then lives in a directory that
user can reach. Missing binaries are an error that says how to install them, never a skip.

The contract tests that run the SQLite store's tests again on PostgreSQL take their
fixtures here: ``postgres_server = server_fixture()`` (one server for the module) and
``store_url = database_fixture("store_test")`` (a fresh database per test, overriding
the SQLite ``store_url`` of the star-imported tests).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbxcal.testing.ports import free_port

INSTALL_HINT = "install the PostgreSQL server with: apt-get install postgresql"
SUPERUSER = "pbxcal"
DATABASE = "pbxcal_test"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server would not start."""


def find_binaries() -> Path:
    """The ``bin`` directory of the newest PostgreSQL in /usr/lib/postgresql/*."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for initdb in reversed(candidates):
        bindir = initdb.parent
        if (bindir / "pg_ctl").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(
        f"PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; {INSTALL_HINT}"
    )


@contextlib.contextmanager
def running_postgres(tmpdir: Path | str | None = None) -> Iterator[str]:
    """Start a private PostgreSQL; yield a SQLAlchemy URL to an empty database in it."""
    bindir = find_binaries()
    as_root = os.geteuid() == 0
    owner = _postgres_user() if as_root else None
    base = Path(tempfile.mkdtemp(prefix="pbxcal-pg-", dir=_reachable(tmpdir, owner)))
    try:
        if owner is not None:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        data = base / "data"
        _run(
            owner,
            base,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )
        port = _start(owner, base, bindir, data)
        _SERVERS[f"127.0.0.1:{port}"] = (owner, base, bindir, data, port)
        try:
            url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
            create_database(url, DATABASE, template="template0")
            yield url
        finally:
            _SERVERS.pop(f"127.0.0.1:{port}", None)
            _run(
                owner,
                base,
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def create_database(url: str, name: str, template: str = "template0") -> str:
    """Create database ``name`` on the server of ``url``; return a URL pointing at it."""
    import psycopg
    from psycopg import sql

    host_part, _, _ = url.rpartition("/")
    conninfo = host_part.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return f"{host_part}/{name}"


def server_fixture(scope: Any = "module") -> Any:
    """A pytest fixture named ``postgres_server``: one running server's URL for ``scope``;
    missing binaries fail the tests with the install hint."""

    @pytest.fixture(scope=scope, name="postgres_server")
    def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        """The URL of a running PostgreSQL server."""
        started = time.monotonic()
        try:
            with running_postgres(tmp_path_factory.mktemp("postgres")) as url:
                print(f"\nPostgreSQL ready in {time.monotonic() - started:.2f}s at {url}")
                yield url
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)

    return postgres_server


def database_fixture(prefix: str) -> Any:
    """A pytest fixture named ``store_url``: a fresh, empty database on ``postgres_server``
    for each test (``<prefix>_<n>``)."""
    numbers = itertools.count(1)

    @pytest.fixture(name="store_url")
    def store_url(postgres_server: str) -> str:
        """A fresh, empty database on ``postgres_server``."""
        return create_database(postgres_server, f"{prefix}_{next(numbers)}")

    return store_url


#: host:port -> (owner, base, bindir, data, port) of each running server, for stop/start
_SERVERS: dict[str, tuple[pwd.struct_passwd | None, Path, Path, Path, int]] = {}


def stop_postgres(url: str) -> None:
    """Stop the server of ``url`` (started by ``running_postgres``) as an operator would.

    Fast mode: every client connection is cut at once and the data is kept (an
    immediate stop would lose the commits that ``synchronous_commit=off`` had not
    written yet).
    """
    owner, base, bindir, data, _port = _SERVERS[url.split("@", 1)[1].split("/", 1)[0]]
    _run(owner, base, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


def start_postgres(url: str) -> None:
    """Start the stopped server of ``url`` again, on the same port."""
    owner, base, bindir, data, port = _SERVERS[url.split("@", 1)[1].split("/", 1)[0]]
    log = str(base / "server.log")
    argv = [str(bindir / "pg_ctl"), "-D", str(data), "-l", log, "-o", _options(port, base)]
    _run(owner, base, [*argv, "-w", "-t", "60", "start"])


def _options(port: int, base: Path) -> str:
    return (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )


def _start(owner: pwd.struct_passwd | None, base: Path, bindir: Path, data: Path) -> int:
    log = base / "server.log"
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        options = _options(port, base)
        result = _run(
            owner,
            base,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=False,
        )
        if result.returncode == 0:
            return port
        last_error = log.read_text(errors="replace")[-2000:] if log.exists() else result.stdout
        time.sleep(0.2)
    raise PostgresUnavailable(f"PostgreSQL did not start: {last_error.strip()}")


def _run(
    owner: pwd.struct_passwd | None, cwd: Path, argv: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    program = Path(argv[0]).name
    if owner is not None:
        argv = ["runuser", "-u", owner.pw_name, "--", *argv]
    result = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if check and result.returncode != 0:
        raise PostgresUnavailable(
            f"{program} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            f"running as root needs the 'postgres' user to start PostgreSQL; {INSTALL_HINT}"
        ) from None


def _reachable(tmpdir: Path | str | None, owner: pwd.struct_passwd | None) -> str | None:
    """``tmpdir`` if the server's user can reach it, else the system temp dir.

    pytest's ``tmp_path`` lives under a 0700 directory of root's, which ``postgres``
    cannot enter; widening its permissions would change more than this helper owns.
    """
    if tmpdir is None:
        return None
    path = Path(tmpdir).resolve()
    if owner is None:
        return str(path)
    for directory in [path, *path.parents]:
        info = directory.stat()
        if info.st_uid != owner.pw_uid and not info.st_mode & 0o001:
            return None
    return str(path)
