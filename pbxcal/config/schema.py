"""The config schema: one declarative table of options per section.

Every option is an ``Option`` (name, TOML type, default, check, one-line doc) in the
table of its section (``SCHEMA``). The loader reads values only through these objects
and derives a section's known keys from its table, so an option cannot be read without
being known, nor known without being read (``_Reader.done`` insists); the test
``tests/unit/test_config.py`` checks the tables against ``config/pbxcal.example.toml``
both ways, so neither can an option go undocumented.

Must not read files or the environment. Start reading at ``SCHEMA`` at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pbxcal.config import checks
from pbxcal.core.ical import ExpansionLimits
from pbxcal.core.policy import DEFAULT_ALLOWED_TYPES, DEFAULT_EXTENSION_PATTERN, DEFAULT_MAX_TARGETS

T = TypeVar("T")

DEFAULT_REGION = "NL"
DEFAULT_TIMEZONE = "Europe/Amsterdam"
DEFAULT_LISTEN = "127.0.0.1:9640"
DEFAULT_SYNC_INTERVAL = 300.0
_LIMITS = ExpansionLimits()


@dataclass(frozen=True)
class Option(Generic[T]):
    """One config option: ``kind`` is its TOML type (``float`` accepts integers too).

    ``default`` is ``None`` for options that are unset unless written (or whose default
    is derived from another option, said in ``doc``). ``check`` returns a one-line
    problem or ``None``; it never sees a value of the wrong kind.
    """

    name: str
    kind: type[T]
    default: T | None
    doc: str
    check: Callable[[T], str | None] | None = None


def _opt(
    name: str,
    kind: type[T],
    default: T | None,
    doc: str,
    check: Callable[[T], str | None] | None = None,
) -> Option[T]:
    return Option(name, kind, default, doc, check)


# [pbxcal]
REGION = _opt("region", str, DEFAULT_REGION, "region of numbers without country code",
              checks.region)
TIMEZONE = _opt("timezone", str, DEFAULT_TIMEZONE, "zone of all-day and floating events",
                checks.zone)
EXTENSION_PATTERN = _opt("extension_pattern", str, DEFAULT_EXTENSION_PATTERN,
                         "full-match regular expression of an extension's digits",
                         checks.extension_pattern)
# [policy]
ALLOWED_COUNTRIES = _opt("allowed_countries", list, None,
                         "countries whose numbers may be targets (default: the region)",
                         checks.countries)
ALLOWED_TYPES = _opt("allowed_types", list, sorted(DEFAULT_ALLOWED_TYPES),
                     "number types that may be targets", checks.number_types)
ALLOW_EMERGENCY = _opt("allow_emergency", bool, False, "emergency numbers may be targets")
MAX_TARGETS = _opt("max_targets", int, DEFAULT_MAX_TARGETS,
                   "most targets ringing in parallel", checks.within(1, 50))
# [store]
STORE_URL = _opt("url", str, None, "sqlite:/// or postgresql:// URL (default: state directory)",
                 checks.store_url)
# [http]
LISTEN = _opt("listen", str, DEFAULT_LISTEN, "HOST:PORT of /metrics, /healthz, /readyz",
              checks.listen)
PUBLIC_URL = _opt("public_url", str, None,
                  "https URL where providers reach the webhooks (switches push on)",
                  checks.public_url)
# [sync]
SYNC_INTERVAL = _opt("interval", float, DEFAULT_SYNC_INTERVAL, "seconds between reads",
                     checks.within(1.0, 86400.0))
SYNC_TIMEOUT = _opt("timeout", float, 30.0, "seconds before a read is given up",
                    checks.within(1.0, 600.0))
MAX_BYTES = _opt("max_bytes", int, 20_000_000, "largest calendar in bytes",
                 checks.within(1000, 10**9))
HORIZON_DAYS = _opt("horizon_days", int, 14, "days ahead that are planned",
                    checks.within(1, 366))
MAX_EVENTS = _opt("max_events", int, _LIMITS.max_events, "VEVENTs per calendar",
                  checks.within(1, 1_000_000))
MAX_INSTANCES_PER_EVENT = _opt("max_instances_per_event", int, _LIMITS.max_instances_per_event,
                               "occurrences of one event over the horizon",
                               checks.within(1, 1_000_000))
MAX_INSTANCES_PER_LINK = _opt("max_instances_per_link", int, _LIMITS.max_instances_per_link,
                              "occurrences of one calendar over the horizon",
                              checks.within(1, 10_000_000))
# [secrets]
KEY_FILE = _opt("key_file", str, None,
                "file of the keys that encrypt stored credentials (pbxcal keys generate)",
                checks.path)
KEY_CREDENTIAL = _opt("key_credential", str, None,
                      "systemd credential holding the keys that encrypt stored credentials",
                      checks.credential)
# [portal]
PORTAL_PUBLIC_URL = _opt("public_url", str, None,
                         "https base URL customers open (switches the portal on)",
                         checks.public_url)
PORTAL_LISTEN = _opt("listen", str, None,
                     "HOST:PORT of the customer pages and webhooks (default: [http] listen)",
                     checks.listen)
ALLOW_NETWORKS = _opt("allow_networks", list, [],
                      "CIDRs that customers' calendar URLs may reach (default: none private)",
                      checks.networks)
INVITATION_HOURS = _opt("invitation_hours", int, 72, "hours an invitation link stays valid",
                        checks.within(1, 24 * 60))
LANGUAGES = _opt("languages", list, ["en", "nl"], "languages of the customer pages",
                 checks.languages)
# [portal.google]
GOOGLE_CLIENT_FILE = _opt("client_file", str, None,
                          "the Google \"Web application\" OAuth client JSON (a secret file)",
                          checks.path)
GOOGLE_REVOKE_URI = _opt("revoke_uri", str, "https://oauth2.googleapis.com/revoke",
                         "Google's token revocation endpoint", checks.public_url)
GOOGLE_API_ENDPOINT = _opt("api_endpoint", str, None, "the Calendar API's URL (tests only)",
                           checks.public_url)
# [portal.microsoft]
MS_CLIENT_ID = _opt("client_id", str, None, "the Entra ID app registration's client id",
                    checks.token)
MS_TENANT = _opt("tenant", str, "common",
                 "tenant id, or common / organizations / consumers", checks.token)
MS_CLIENT_SECRET_FILE = _opt("client_secret_file", str, None,
                             "file holding the app registration's client secret", checks.path)
MS_AUTHORITY_HOST = _opt("authority_host", str, None, "Microsoft sign-in host (tests only)",
                         checks.public_url)
MS_GRAPH_URL = _opt("graph_url", str, None, "Microsoft Graph's URL (tests only)",
                    checks.public_url)
MS_CA_FILE = _opt("ca_file", str, None, "CA bundle for the two above (tests only)", checks.path)
# [admin]
ADMIN_LISTEN = _opt("listen", str, None,
                    "HOST:PORT of the admin API (default: [http] listen; keep it internal)",
                    checks.listen)
# [smtp]
SMTP_HOST = _opt("host", str, None, "mail server that sends invitations (switches e-mail on)",
                 checks.host)
SMTP_PORT = _opt("port", int, 25, "its port", checks.within(1, 65535))
SMTP_FROM = _opt("from", str, None, "sender address of invitations (required with host)",
                 checks.email)
SMTP_STARTTLS = _opt("starttls", bool, False, "upgrade the connection with STARTTLS")
SMTP_USERNAME = _opt("username", str, None, "user for SMTP AUTH", checks.host)
SMTP_PASSWORD_FILE = _opt("password_file", str, None, "file holding the SMTP password",
                          checks.path)
# [pbx.NAME]
HOST = _opt("host", str, "127.0.0.1", "AMI host", checks.host)
PORT = _opt("port", int, 5038, "AMI port", checks.within(1, 65535))
USERNAME = _opt("username", str, "pbxcal", "AMI user", checks.username)
SECRET_FILE = _opt("secret_file", str, None, "file holding the AMI secret", checks.path)
SECRET_CREDENTIAL = _opt("secret_credential", str, None,
                         "systemd credential holding the AMI secret", checks.credential)
ACTION_TIMEOUT = _opt("action_timeout", float, 5.0, "seconds per AMI action",
                      checks.within(0.1, 120.0))
PING_INTERVAL = _opt("ping_interval", float, 10.0, "seconds between keepalive pings",
                     checks.within(0.5, 600.0))
PING_TIMEOUT = _opt("ping_timeout", float, 5.0, "seconds an unanswered ping may take",
                    checks.within(0.1, 120.0))
BACKOFF_MAX = _opt("backoff_max", float, 30.0, "longest wait between reconnects",
                   checks.within(0.5, 3600.0))
DEVICE_STATE = _opt("device_state", bool, True, "keep Custom:pbxcal<ext> INUSE (BLF)")
EXTENSIONS = _opt("extensions", list, [], "extensions that exist (\"100\", \"200-299\")",
                  checks.strings)
DISCOVER_EXTENSIONS = _opt("discover_extensions", bool, True,
                           "read the existing extensions from Asterisk on (re)connect")
READBACK_INTERVAL = _opt("readback_interval", float, 60.0,
                         "seconds between read-backs that repair drift",
                         checks.within(5.0, 3600.0))
# [[link]]
# [cluster] (PostgreSQL stores only: several `pbxcal run` processes, one writer per PBX)
CLUSTER_TTL = _opt("ttl", float, 10.0, "seconds a PBX write lease lasts unrenewed",
                   checks.within(2.0, 300.0))
CLUSTER_MARGIN = _opt("margin", float, 2.0, "seconds a holder stops writing before expiry",
                      checks.within(0.0, 60.0))
CLUSTER_SETTLE = _opt("settle", float, None,
                      "seconds a joining process runs before it is given PBXes (default 3 × ttl)",
                      checks.within(0.0, 3600.0))
LINK_EXTENSION = _opt("extension", str, None, "the extension (required)")
LINK_SOURCE = _opt("source", str, None, "file path or http(s)/webcal URL (required)",
                   checks.source)
LINK_PBX = _opt("pbx", str, None, "the PBX (default: the first [pbx.*])")
LINK_TIMEZONE = _opt("timezone", str, None, "zone (default: [pbxcal] timezone)", checks.zone)
OWNER_EMAILS = _opt("owner_emails", list, [], "the owner's addresses (declines are ignored)",
                    checks.strings)

#: Known in ``[pbx.NAME]`` only to be refused with a helpful message.
FORBIDDEN_SECRET = "secret"  # noqa: S105 - a key name, not a password

#: Section → its options. ``pbx.*`` stands for every ``[pbx.NAME]``, ``link`` for every
#: ``[[link]]``.
SCHEMA: dict[str, tuple[Option[Any], ...]] = {
    "pbxcal": (REGION, TIMEZONE, EXTENSION_PATTERN),
    "policy": (ALLOWED_COUNTRIES, ALLOWED_TYPES, ALLOW_EMERGENCY, MAX_TARGETS),
    "store": (STORE_URL,),
    "http": (LISTEN, PUBLIC_URL),
    "sync": (SYNC_INTERVAL, SYNC_TIMEOUT, MAX_BYTES, HORIZON_DAYS, MAX_EVENTS,
             MAX_INSTANCES_PER_EVENT, MAX_INSTANCES_PER_LINK),
    "secrets": (KEY_FILE, KEY_CREDENTIAL),
    "portal": (PORTAL_PUBLIC_URL, PORTAL_LISTEN, ALLOW_NETWORKS, INVITATION_HOURS, LANGUAGES),
    "portal.google": (GOOGLE_CLIENT_FILE, GOOGLE_REVOKE_URI, GOOGLE_API_ENDPOINT),
    "portal.microsoft": (MS_CLIENT_ID, MS_TENANT, MS_CLIENT_SECRET_FILE, MS_AUTHORITY_HOST,
                         MS_GRAPH_URL, MS_CA_FILE),
    "admin": (ADMIN_LISTEN,),
    "smtp": (SMTP_HOST, SMTP_PORT, SMTP_FROM, SMTP_STARTTLS, SMTP_USERNAME, SMTP_PASSWORD_FILE),
    "cluster": (CLUSTER_TTL, CLUSTER_MARGIN, CLUSTER_SETTLE),
    "pbx.*": (HOST, PORT, USERNAME, SECRET_FILE, SECRET_CREDENTIAL, ACTION_TIMEOUT,
              PING_INTERVAL, PING_TIMEOUT, BACKOFF_MAX, DEVICE_STATE, EXTENSIONS,
              DISCOVER_EXTENSIONS, READBACK_INTERVAL),
    "link": (LINK_EXTENSION, LINK_SOURCE, LINK_PBX, LINK_TIMEZONE, OWNER_EMAILS),
}
#: The top-level tables.
SECTIONS = ("pbxcal", "policy", "store", "http", "sync", "secrets", "portal", "admin", "smtp",
            "cluster", "pbx", "link")
#: Sub-tables of ``[portal]``.
PORTAL_PROVIDERS = ("google", "microsoft")
