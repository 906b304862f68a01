"""``AmiConfig``: how ``AmiPbx`` reaches one Asterisk over AMI, and how patiently.

What it does: holds one ``[pbx.NAME]`` table's connection settings (host, port, AMI
user and secret) and the timing of the adapter (action timeout, keepalive, backoff,
window, boot wait); ``AmiConfig.from_config`` reads the secret from its file or systemd
credential.

What it must not do: connect, or show the secret (it is left out of ``repr``).
Start reading at ``AmiConfig.from_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pbxcal.config import PbxConfig, read_secret

__all__ = ["AmiConfig"]


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
    #: First step of the exponential backoff after a slow failure (timeout, reset).
    backoff_initial: float = 0.5
    #: Cap of that backoff, and the interval between login attempts with a wrong secret.
    backoff_max: float = 30.0
    #: Retry interval after a refused TCP connection or a "not now" login answer (cheap).
    fast_retry: float = 0.25
    #: Most actions in flight at once on the connection.
    window: int = 256
    #: How long to wait after login for ``FullyBooted`` before going ahead anyway.
    boot_timeout: float = 5.0
    #: Keep ``Custom:pbxcal<ext>`` in step for BLF keys (one more action per change).
    device_state: bool = True

    @property
    def where(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"

    @classmethod
    def from_config(cls, pbx: PbxConfig) -> AmiConfig:
        """The settings of a ``[pbx.NAME]`` table, with its secret read from its file or
        systemd credential (``ConfigError`` when it cannot be read)."""
        return cls(
            name=pbx.name,
            host=pbx.host,
            port=pbx.port,
            username=pbx.username,
            secret=read_secret(pbx),
            action_timeout=pbx.action_timeout,
            ping_interval=pbx.ping_interval,
            ping_timeout=pbx.ping_timeout,
            backoff_max=pbx.backoff_max,
            device_state=pbx.device_state,
        )
