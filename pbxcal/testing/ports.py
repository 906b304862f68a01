"""A free loopback port for a test server: ``free_port()`` (TCP) or ``free_port(SOCK_DGRAM)``.

What it does: binds a socket of that kind to 127.0.0.1 port 0, reads the port the kernel
chose and closes it again, so a server started right after can bind it. Tests, demos and
benches take their ports here instead of each keeping a copy of these lines.

What it must not do: hold the port (another process may take it between this call and
the bind: fine on a test machine, not a way to reserve anything), or bind beyond loopback.
Start reading at ``free_port``.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago, for ``kind`` (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
