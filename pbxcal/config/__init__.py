"""The TOML configuration: one schema that validates every option and names where it is.

``load_config(path)`` reads and validates a file and returns a ``Config``; any problem
raises ``ConfigError`` whose ``problems`` are one line each, of the form
``FILE: [section] key: what is wrong``. ``Config.default()`` is what runs without a file.
Every option, with its default, is documented in ``config/pbxcal.example.toml``.

Modules: ``schema`` (the option tables: the one list of what exists), ``checks`` (value
checks, the extension pattern's cost and reach), ``model`` (the typed dataclasses and
``default_store_url``, the one default store location of CLI and service), ``loader``
(``load_config``, ``parse_config``, ``read_secret``), ``audit`` (what ``check-config``
verifies on the machine: secret files).

Secrets are never written in the file itself: a PBX's AMI secret comes from
``secret_file`` or from a systemd credential (``secret_credential``, read from
``$CREDENTIALS_DIRECTORY``) — see ``read_secret``. Start reading at ``loader.parse_config``.
"""

from __future__ import annotations

from pbxcal.config.loader import load_config, parse_config, read_secret
from pbxcal.config.model import (
    DEFAULT_STATE_DIRECTORY,
    Config,
    LinkConfig,
    PbxConfig,
    PortalConfig,
    PortalGoogle,
    PortalMicrosoft,
    SmtpConfig,
    default_store_path,
    default_store_url,
)
from pbxcal.config.schema import (
    DEFAULT_LISTEN,
    DEFAULT_REGION,
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TIMEZONE,
    SCHEMA,
    Option,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_REGION",
    "DEFAULT_STATE_DIRECTORY",
    "DEFAULT_SYNC_INTERVAL",
    "DEFAULT_TIMEZONE",
    "SCHEMA",
    "Config",
    "LinkConfig",
    "Option",
    "PbxConfig",
    "PortalConfig",
    "PortalGoogle",
    "PortalMicrosoft",
    "SmtpConfig",
    "default_store_path",
    "default_store_url",
    "load_config",
    "parse_config",
    "read_secret",
]
