"""The validated configuration as typed values, and the one default store location.

``Config`` (with ``PbxConfig`` per ``[pbx.NAME]`` and ``LinkConfig`` per ``[[link]]``)
is what ``pbxcal.config.load_config`` returns; every field has its schema default, so
``Config()`` is what runs without a file. ``default_store_url`` is where the CLI *and*
the service keep their SQLite store when ``[store] url`` is not set, so a link added
with ``pbxcal links add`` is seen by the running service.

Must not read files (``default_store_url`` only looks at its argument). Start at ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from pbxcal.config.schema import (
    DEFAULT_LISTEN,
    DEFAULT_REGION,
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TIMEZONE,
)
from pbxcal.core.ical import ExpansionLimits
from pbxcal.core.policy import NumberPolicy

#: The service's state directory: ``StateDirectory=pbxcal`` in ``systemd/pbxcal.service``
#: (with ``DynamicUser=yes`` a link to ``/var/lib/private/pbxcal``).
DEFAULT_STATE_DIRECTORY = Path("/var/lib/pbxcal")
STORE_FILE_NAME = "pbxcal.sqlite3"


def default_store_path(state_directory: str | None = None) -> Path:
    """The SQLite file used when ``[store] url`` is not set.

    ``state_directory`` is systemd's ``$STATE_DIRECTORY`` (the first of a ``:`` list)
    when the service runs; everywhere else — the CLI, a service started by hand — it is
    ``/var/lib/pbxcal``, the same directory, so both sides use one store.
    """
    first = state_directory.split(":")[0] if state_directory else ""
    return (Path(first) if first else DEFAULT_STATE_DIRECTORY) / STORE_FILE_NAME


def default_store_url(state_directory: str | None = None) -> str:
    """``sqlite:///`` URL of ``default_store_path(state_directory)``."""
    return f"sqlite:///{default_store_path(state_directory)}"


@dataclass(frozen=True)
class PbxConfig:
    """One Asterisk reached over AMI (``[pbx.NAME]``)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "pbxcal"
    secret_file: str | None = None
    secret_credential: str | None = None
    action_timeout: float = 5.0
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    backoff_max: float = 30.0
    device_state: bool = True
    #: Extensions that exist on this PBX, from the config (ranges expanded).
    extensions: frozenset[str] = frozenset()
    #: Read the existing extensions from Asterisk on every (re)connect.
    discover_extensions: bool = True
    #: Seconds between read-backs of the PBX that repair drift.
    readback_interval: float = 60.0


@dataclass(frozen=True)
class PortalGoogle:
    """``[portal.google]``: Google sign-in on the customer pages (a web OAuth client)."""

    client_file: str
    revoke_uri: str = "https://oauth2.googleapis.com/revoke"
    #: The Calendar API's URL; ``None`` is Google's (tests point it at the fake).
    api_endpoint: str | None = None


@dataclass(frozen=True)
class PortalMicrosoft:
    """``[portal.microsoft]``: Microsoft 365 sign-in (a confidential Entra ID app)."""

    client_id: str
    client_secret_file: str
    tenant: str = "common"
    #: ``None``: Microsoft's public cloud (tests point these at the fake).
    authority_host: str | None = None
    graph_url: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class PortalConfig:
    """``[portal]``: the customer pages (self-service linking)."""

    public_url: str
    #: Where the customer pages and webhooks listen; ``None``: ``[http] listen``.
    listen: str | None = None
    #: CIDRs customers' calendar URLs may reach although private (default: none).
    allow_networks: tuple[str, ...] = ()
    invitation_hours: int = 72
    languages: tuple[str, ...] = ("en", "nl")
    google: PortalGoogle | None = None
    microsoft: PortalMicrosoft | None = None


@dataclass(frozen=True)
class SmtpConfig:
    """``[smtp]``: where invitation e-mails are sent through."""

    host: str
    sender: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class LinkConfig:
    """A calendar declared in the config file that drives one extension."""

    extension: str
    source: str
    pbx: str
    timezone: str | None = None
    owner_emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: the PBX write leases of processes sharing a PostgreSQL store."""

    ttl: float = 10.0
    margin: float = 2.0
    #: ``None``: 3 × ttl
    settle: float | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    region: str = DEFAULT_REGION
    timezone: str = DEFAULT_TIMEZONE
    policy: NumberPolicy = field(default_factory=lambda: NumberPolicy.default(DEFAULT_REGION))
    store_url: str | None = None
    listen: str = DEFAULT_LISTEN
    #: Where providers reach ``/webhooks/...`` from outside (push); None: polling only.
    public_url: str | None = None
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    sync_timeout: float = 30.0
    max_calendar_bytes: int = 20_000_000
    horizon_days: int = 14
    limits: ExpansionLimits = field(default_factory=ExpansionLimits)
    #: ``[secrets]``: where the keys that encrypt stored credentials come from.
    secrets_key_file: str | None = None
    secrets_key_credential: str | None = None
    #: ``[portal]``; ``None``: no customer pages.
    portal: PortalConfig | None = None
    #: ``[admin] listen``; ``None``: the admin API shares ``listen``.
    admin_listen: str | None = None
    #: ``[smtp]``; ``None``: invitations are not e-mailed.
    smtp: SmtpConfig | None = None
    #: ``[cluster]``; used only with a PostgreSQL store.
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pbxes: dict[str, PbxConfig] = field(default_factory=dict)
    links: tuple[LinkConfig, ...] = ()
    source: str = "(defaults)"
    #: One-line warnings about valid but risky settings (``check-config`` prints them).
    warnings: tuple[str, ...] = ()

    @classmethod
    def default(cls) -> Config:
        return cls()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
