"""The cluster's own PostgreSQL connections: libpq settings that notice a dead peer fast.

What it does: turns the store URL (``postgresql://`` or ``postgresql+psycopg://``, as
SQLAlchemy spells it) into a libpq connection string (``conninfo``) with settings
chosen for the lease protocol, and opens psycopg async connections in autocommit mode
(``connect``). The cluster talks to PostgreSQL through psycopg directly, not through
the store's SQLAlchemy pool: every lease statement is one awaited round trip that
``asyncio.timeout`` can cancel (psycopg cancels it on the server), lease renewals never
queue behind the store's sync writes, and LISTEN needs a connection of its own.

Why the settings: a lease must be renewed within its ttl, so a connection to a server
that vanished (a host gone, a cable pulled) must fail within seconds, not after the
kernel's two hours of TCP keepalive. ``connect_timeout`` bounds connecting,
``tcp_user_timeout`` bounds unacknowledged sends and the keepalive settings notice an
idle connection (the LISTEN one) whose peer is gone. Values given in the URL win.

What it must not do: log the URL or conninfo (they may hold a password), or map errors
itself (callers map ``psycopg.Error`` to their own outcome at their boundary).

Start reading at ``cluster_conninfo``.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pbxcal.errors import StoreError

#: Seconds: how soon a connection to a server that vanished is given up.
DEAD_PEER_SECONDS = 5


def is_postgres_url(url: str) -> bool:
    """True for a ``postgresql://`` / ``postgresql+psycopg://`` store URL."""
    return url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def cluster_conninfo(url: str, *, application_name: str = "pbxcal-cluster") -> str:
    """A libpq conninfo for the store at ``url``, tuned to notice a dead server fast."""
    if not is_postgres_url(url):
        raise StoreError("a cluster needs a PostgreSQL store (postgresql://USER@HOST/DB)")
    try:
        parsed = make_url(url)
    except ArgumentError:  # the URL may hold a password; do not echo it
        raise StoreError("invalid store URL; expected postgresql://USER@HOST/DB") from None
    params: dict[str, str | int] = {
        "connect_timeout": DEAD_PEER_SECONDS,
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": DEAD_PEER_SECONDS,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": DEAD_PEER_SECONDS * 1000,
    }
    for key, value in parsed.query.items():
        params[key] = value if isinstance(value, str) else value[-1]
    given: dict[str, str | int | None] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    params.update({key: value for key, value in given.items() if value is not None})
    return make_conninfo("", **params)


async def connect(conninfo: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """An autocommit async connection (each lease statement is its own transaction)."""
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
