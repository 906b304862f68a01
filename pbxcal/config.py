"""The TOML configuration: one schema that validates every option and names where it is.

``load_config(path)`` reads and validates a file and returns a ``Config``; any problem
raises ``ConfigError`` whose ``problems`` are one line each, of the form
``FILE: [section] key: what is wrong``. ``Config.default()`` is what runs without a file.
Every option, with its default, is documented in ``config/pbxcal.example.toml``.

Secrets are never written in the file itself: a PBX's AMI secret comes from
``secret_file`` or from a systemd credential (``secret_credential``, read from
``$CREDENTIALS_DIRECTORY``) — see ``read_secret``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from pbxcal.core.policy import (
    ANY_COUNTRY,
    DEFAULT_ALLOWED_TYPES,
    DEFAULT_EXTENSION_PATTERN,
    DEFAULT_MAX_TARGETS,
    NUMBER_TYPES,
    NumberPolicy,
)
from pbxcal.errors import ConfigError

T = TypeVar("T")

DEFAULT_REGION = "NL"
DEFAULT_TIMEZONE = "Europe/Amsterdam"
DEFAULT_LISTEN = "127.0.0.1:9640"
DEFAULT_SYNC_INTERVAL = 300.0
_PBX_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class PbxConfig:
    """One Asterisk reached over AMI."""

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


@dataclass(frozen=True)
class LinkConfig:
    """A calendar declared in the config file that drives one extension."""

    extension: str
    source: str
    pbx: str
    timezone: str | None = None
    owner_emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    region: str = DEFAULT_REGION
    timezone: str = DEFAULT_TIMEZONE
    policy: NumberPolicy = field(default_factory=lambda: NumberPolicy.default(DEFAULT_REGION))
    store_url: str | None = None
    listen: str = DEFAULT_LISTEN
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    sync_timeout: float = 30.0
    max_calendar_bytes: int = 20_000_000
    horizon_days: int = 14
    pbxes: dict[str, PbxConfig] = field(default_factory=dict)
    links: tuple[LinkConfig, ...] = ()
    source: str = "(defaults)"

    @classmethod
    def default(cls) -> Config:
        return cls()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raise ``ConfigError`` listing every problem."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError([f"{name}: file not found"]) from exc
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from exc
    return parse_config(raw, name)


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate an already parsed TOML document."""
    reader = _Reader(source)
    known = {"pbxcal", "policy", "store", "http", "sync", "pbx", "link"}
    for section in raw:
        if section not in known:
            reader.problem(section, None, f"unknown section (known: {', '.join(sorted(known))})")

    main = reader.table(raw, "pbxcal")
    region = reader.get(main, "pbxcal", "region", str, DEFAULT_REGION, _check_region).upper()
    timezone = reader.get(main, "pbxcal", "timezone", str, DEFAULT_TIMEZONE, _check_zone)
    pattern = reader.get(
        main, "pbxcal", "extension_pattern", str, DEFAULT_EXTENSION_PATTERN, _check_pattern
    )
    reader.unknown_keys(main, "pbxcal", {"region", "timezone", "extension_pattern"})

    pol = reader.table(raw, "policy")
    countries = reader.get(pol, "policy", "allowed_countries", list, [region], _check_countries)
    types = reader.get(
        pol, "policy", "allowed_types", list, sorted(DEFAULT_ALLOWED_TYPES), _check_types
    )
    allow_emergency = reader.get(pol, "policy", "allow_emergency", bool, False)
    max_targets = reader.get(pol, "policy", "max_targets", int, DEFAULT_MAX_TARGETS, _range(1, 50))
    reader.unknown_keys(
        pol, "policy", {"allowed_countries", "allowed_types", "allow_emergency", "max_targets"}
    )

    store = reader.table(raw, "store")
    store_url = reader.get(store, "store", "url", str, None, _check_store_url)
    reader.unknown_keys(store, "store", {"url"})

    http = reader.table(raw, "http")
    listen = reader.get(http, "http", "listen", str, DEFAULT_LISTEN, _check_listen)
    reader.unknown_keys(http, "http", {"listen"})

    sync = reader.table(raw, "sync")
    interval = reader.get(
        sync, "sync", "interval", float, DEFAULT_SYNC_INTERVAL, _range(1.0, 86400.0)
    )
    timeout = reader.get(sync, "sync", "timeout", float, 30.0, _range(1.0, 600.0))
    max_bytes = reader.get(sync, "sync", "max_bytes", int, 20_000_000, _range(1000, 10**9))
    horizon = reader.get(sync, "sync", "horizon_days", int, 14, _range(1, 366))
    reader.unknown_keys(sync, "sync", {"interval", "timeout", "max_bytes", "horizon_days"})

    pbxes = _read_pbxes(reader, raw.get("pbx", {}))
    links = _read_links(reader, raw.get("link", []), pbxes, pattern)

    if reader.problems:
        raise ConfigError(reader.problems)
    policy = NumberPolicy(
        region=region,
        allowed_countries=frozenset(c.upper() if c != ANY_COUNTRY else c for c in countries),
        allowed_types=frozenset(types),
        allow_emergency=allow_emergency,
        max_targets=max_targets,
        extension_pattern=pattern,
    )
    return Config(
        region=region,
        timezone=timezone,
        policy=policy,
        store_url=store_url,
        listen=listen,
        sync_interval=interval,
        sync_timeout=timeout,
        max_calendar_bytes=max_bytes,
        horizon_days=horizon,
        pbxes=pbxes,
        links=tuple(links),
        source=source,
    )


def read_secret(pbx: PbxConfig) -> str:
    """The AMI secret of ``pbx`` from its file or systemd credential (never from argv)."""
    if pbx.secret_credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                [
                    f"[pbx.{pbx.name}] secret_credential: $CREDENTIALS_DIRECTORY is not set "
                    "(use LoadCredential= in the service, or secret_file)"
                ]
            )
        path = Path(directory) / pbx.secret_credential
    elif pbx.secret_file:
        path = Path(pbx.secret_file)
    else:
        raise ConfigError([f"[pbx.{pbx.name}]: needs secret_file or secret_credential"])
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"[pbx.{pbx.name}] secret: cannot read {path}: {exc.strerror}"]) from exc
    if not secret or any(c in secret for c in "\r\n\0"):
        raise ConfigError([f"[pbx.{pbx.name}] secret: {path} is empty or has line breaks"])
    return secret


def _read_pbxes(reader: _Reader, raw: Any) -> dict[str, PbxConfig]:
    if not isinstance(raw, dict):
        reader.problem("pbx", None, "must be tables like [pbx.main]")
        return {}
    pbxes: dict[str, PbxConfig] = {}
    for name, table in raw.items():
        section = f"pbx.{name}"
        if not _PBX_NAME.fullmatch(name):
            reader.problem(section, None, "name must be 1-32 letters, digits, '-' or '_'")
        if not isinstance(table, dict):
            reader.problem(section, None, "must be a table")
            continue
        if "secret" in table:
            reader.problem(
                section,
                "secret",
                "secrets are not written in the config; use secret_file or secret_credential",
            )
        secret_file = reader.get(table, section, "secret_file", str, None)
        credential = reader.get(table, section, "secret_credential", str, None)
        if secret_file is None and credential is None:
            reader.problem(section, "secret_file", "set secret_file or secret_credential")
        pbxes[name] = PbxConfig(
            name=name,
            host=reader.get(table, section, "host", str, "127.0.0.1"),
            port=reader.get(table, section, "port", int, 5038, _range(1, 65535)),
            username=reader.get(table, section, "username", str, "pbxcal", _check_username),
            secret_file=secret_file,
            secret_credential=credential,
            action_timeout=reader.get(
                table, section, "action_timeout", float, 5.0, _range(0.1, 120.0)
            ),
            ping_interval=reader.get(
                table, section, "ping_interval", float, 10.0, _range(0.5, 600.0)
            ),
            ping_timeout=reader.get(table, section, "ping_timeout", float, 5.0, _range(0.1, 120.0)),
            backoff_max=reader.get(table, section, "backoff_max", float, 30.0, _range(0.5, 3600.0)),
            device_state=reader.get(table, section, "device_state", bool, True),
        )
        reader.unknown_keys(
            table,
            section,
            {
                "host",
                "port",
                "username",
                "secret",
                "secret_file",
                "secret_credential",
                "action_timeout",
                "ping_interval",
                "ping_timeout",
                "backoff_max",
            },
        )
    return pbxes


def _read_links(
    reader: _Reader, raw: Any, pbxes: dict[str, PbxConfig], pattern: str
) -> list[LinkConfig]:
    if not isinstance(raw, list):
        reader.problem("link", None, "must be an array of tables: [[link]]")
        return []
    links = []
    for index, table in enumerate(raw, start=1):
        section = f"link #{index}"
        if not isinstance(table, dict):
            reader.problem(section, None, "must be a table")
            continue
        extension = reader.get(table, section, "extension", str, None)
        if extension is None:
            reader.problem(section, "extension", "is required")
        elif re.fullmatch(pattern, extension) is None or not extension.isdigit():
            reader.problem(section, "extension", f"{extension!r} does not match {pattern!r}")
        source = reader.get(table, section, "source", str, None, _check_source)
        if source is None:
            reader.problem(section, "source", "is required (a file path or http(s)/webcal URL)")
        default_pbx = next(iter(pbxes), "")
        pbx = reader.get(table, section, "pbx", str, default_pbx)
        if pbx not in pbxes:
            known = ", ".join(pbxes) or "none configured"
            reader.problem(section, "pbx", f"unknown PBX {pbx!r} (known: {known})")
        timezone = reader.get(table, section, "timezone", str, None, _check_zone)
        owners = reader.get(table, section, "owner_emails", list, [], _check_strings)
        reader.unknown_keys(
            table, section, {"extension", "source", "pbx", "timezone", "owner_emails"}
        )
        if extension is not None and source is not None:
            links.append(LinkConfig(extension, source, pbx, timezone, tuple(owners)))
    return links


class _Reader:
    """Collects problems while reading typed values out of TOML tables."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, section: str, key: str | None, message: str) -> None:
        where = f"[{section}]" + (f" {key}" if key else "")
        self.problems.append(f"{self.source}: {where}: {message}")

    def table(self, raw: dict[str, Any], section: str) -> dict[str, Any]:
        value = raw.get(section, {})
        if not isinstance(value, dict):
            self.problem(section, None, "must be a table")
            return {}
        return value

    def unknown_keys(self, table: dict[str, Any], section: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.problem(section, key, f"unknown option (known: {', '.join(sorted(known))})")

    def get(
        self,
        table: dict[str, Any],
        section: str,
        key: str,
        kind: type[T],
        default: Any,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(section, key, f"must be {_KIND_NAMES[kind]}, got {value!r}")
            return default
        if check is not None and (message := check(value)) is not None:
            self.problem(section, key, message)
            return default
        return value


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


def _range(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None

    return check


def _check_region(value: str) -> str | None:
    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return f"{value!r} is not a region code like 'NL' or 'US'"
    return None


def _check_zone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{value!r} is not an IANA time zone like 'Europe/Amsterdam'"
    return None


def _check_pattern(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


def _check_strings(value: list[Any]) -> str | None:
    if not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def _check_countries(value: list[Any]) -> str | None:
    if (message := _check_strings(value)) is not None:
        return message
    bad = [v for v in value if v != ANY_COUNTRY and v.upper() not in phonenumbers.SUPPORTED_REGIONS]
    return f"unknown region codes: {', '.join(bad)}" if bad else None


def _check_types(value: list[Any]) -> str | None:
    if (message := _check_strings(value)) is not None:
        return message
    bad = [v for v in value if v not in NUMBER_TYPES]
    if bad:
        return f"unknown number types: {', '.join(bad)} (known: {', '.join(NUMBER_TYPES)})"
    return None


def _check_store_url(value: str) -> str | None:
    if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        return "must be a sqlite:/// or postgresql:// URL"
    return None


def _check_listen(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must be HOST:PORT like {DEFAULT_LISTEN!r}, got {value!r}"
    return None


def _check_username(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        return "may only hold letters, digits, '_', '.', '-'"
    return None


def _check_source(value: str) -> str | None:
    if "\n" in value or "\r" in value:
        return "must be one line"
    if re.match(r"[a-z][a-z0-9+.-]*://", value) and not value.startswith(
        ("http://", "https://", "webcal://", "webcals://", "file://")
    ):
        return "only file paths and http(s)/webcal URLs are supported"
    return None
