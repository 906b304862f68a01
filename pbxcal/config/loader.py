"""Reading a TOML file into a ``Config``: every problem at once, one line each.

``load_config(path)`` reads the file (at most ``MAX_CONFIG_BYTES``; a deeply nested
document is an error, not a ``RecursionError``) and ``parse_config(raw, source)``
validates it through the option tables of ``schema``. Problems are collected by
``_Reader`` as ``FILE: [section] key: what is wrong`` and raised together as one
``ConfigError``; risky but valid settings become ``Config.warnings``.

``read_secret(pbx)`` reads a PBX's AMI secret at run time. Must not print or log.
Start reading at ``parse_config``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pbxcal.config import checks, schema
from pbxcal.config.model import (
    ClusterConfig,
    Config,
    LinkConfig,
    PbxConfig,
    PortalConfig,
    PortalGoogle,
    PortalMicrosoft,
    SmtpConfig,
)
from pbxcal.config.schema import Option
from pbxcal.core.ical import ExpansionLimits
from pbxcal.core.policy import ANY_COUNTRY, NumberPolicy
from pbxcal.errors import ConfigError

T = TypeVar("T")

#: A config file larger than this is refused unread.
MAX_CONFIG_BYTES = 1_000_000
_PBX_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raise ``ConfigError`` listing every problem."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError([f"{name}: file not found"]) from exc
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{name}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: not valid TOML: nested too deeply"]) from None
    return parse_config(raw, name)


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate an already parsed TOML document."""
    reader = _Reader(source)
    for section in raw:
        if section not in schema.SECTIONS:
            known = ", ".join(schema.SECTIONS)
            reader.problem(checks.printable_key(section), None, f"unknown section (known: {known})")

    main = reader.table(raw, "pbxcal")
    region = reader.get(main, "pbxcal", schema.REGION).upper()
    timezone = reader.get(main, "pbxcal", schema.TIMEZONE)
    pattern = reader.get(main, "pbxcal", schema.EXTENSION_PATTERN)
    reader.done(main, "pbxcal", schema.SCHEMA["pbxcal"])
    compiled = checks.compile_pattern(pattern)
    regex = None if isinstance(compiled, str) else compiled
    if regex is not None:
        for warning in checks.pattern_warnings(regex):
            reader.warn("pbxcal", "extension_pattern", warning)

    pol = reader.table(raw, "policy")
    countries: list[str] = reader.optional(pol, "policy", schema.ALLOWED_COUNTRIES) or [region]
    types: list[str] = reader.get(pol, "policy", schema.ALLOWED_TYPES)
    allow_emergency = reader.get(pol, "policy", schema.ALLOW_EMERGENCY)
    max_targets = reader.get(pol, "policy", schema.MAX_TARGETS)
    reader.done(pol, "policy", schema.SCHEMA["policy"])

    store = reader.table(raw, "store")
    store_url = reader.optional(store, "store", schema.STORE_URL)
    reader.done(store, "store", schema.SCHEMA["store"])

    http = reader.table(raw, "http")
    listen = reader.get(http, "http", schema.LISTEN)
    public_url = reader.optional(http, "http", schema.PUBLIC_URL)
    reader.done(http, "http", schema.SCHEMA["http"])

    sync = reader.table(raw, "sync")
    interval = reader.get(sync, "sync", schema.SYNC_INTERVAL)
    timeout = reader.get(sync, "sync", schema.SYNC_TIMEOUT)
    max_bytes = reader.get(sync, "sync", schema.MAX_BYTES)
    horizon = reader.get(sync, "sync", schema.HORIZON_DAYS)
    limits = ExpansionLimits(
        max_events=reader.get(sync, "sync", schema.MAX_EVENTS),
        max_instances_per_event=reader.get(sync, "sync", schema.MAX_INSTANCES_PER_EVENT),
        max_instances_per_link=reader.get(sync, "sync", schema.MAX_INSTANCES_PER_LINK),
    )
    reader.done(sync, "sync", schema.SCHEMA["sync"])

    secrets = reader.table(raw, "secrets")
    key_file = reader.optional(secrets, "secrets", schema.KEY_FILE)
    key_credential = reader.optional(secrets, "secrets", schema.KEY_CREDENTIAL)
    reader.done(secrets, "secrets", schema.SCHEMA["secrets"])

    portal = _read_portal(reader, raw)
    admin = reader.table(raw, "admin")
    admin_listen = reader.optional(admin, "admin", schema.ADMIN_LISTEN)
    reader.done(admin, "admin", schema.SCHEMA["admin"])
    smtp = _read_smtp(reader, raw)
    cluster = reader.table(raw, "cluster")
    lease_ttl = reader.get(cluster, "cluster", schema.CLUSTER_TTL)
    lease_margin = reader.get(cluster, "cluster", schema.CLUSTER_MARGIN)
    lease_settle = reader.optional(cluster, "cluster", schema.CLUSTER_SETTLE)
    reader.done(cluster, "cluster", schema.SCHEMA["cluster"])
    if lease_margin >= lease_ttl / 2:
        reader.problem("cluster", "margin", f"must be below half of ttl ({lease_ttl:g} s)")

    pbxes = _read_pbxes(reader, raw.get("pbx", {}), regex)
    links = _read_links(reader, raw.get("link", []), pbxes, regex)

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
        public_url=public_url,
        sync_interval=interval,
        sync_timeout=timeout,
        max_calendar_bytes=max_bytes,
        horizon_days=horizon,
        limits=limits,
        secrets_key_file=key_file,
        secrets_key_credential=key_credential,
        portal=portal,
        admin_listen=admin_listen,
        smtp=smtp,
        cluster=ClusterConfig(lease_ttl, lease_margin, lease_settle),
        pbxes=pbxes,
        links=tuple(links),
        source=source,
        warnings=tuple(reader.warnings),
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
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([f"[pbx.{pbx.name}] secret: cannot read {path}: {why}"]) from None
    if not secret or any(c in secret for c in "\r\n\0"):
        raise ConfigError([f"[pbx.{pbx.name}] secret: {path} is empty or has line breaks"])
    return secret


def _read_portal(reader: _Reader, raw: dict[str, Any]) -> PortalConfig | None:
    """``[portal]`` with its ``[portal.google]`` and ``[portal.microsoft]`` tables."""
    table = reader.table(raw, "portal")
    public_url = reader.optional(table, "portal", schema.PORTAL_PUBLIC_URL)
    listen = reader.optional(table, "portal", schema.PORTAL_LISTEN)
    networks: list[str] = reader.get(table, "portal", schema.ALLOW_NETWORKS)
    hours = reader.get(table, "portal", schema.INVITATION_HOURS)
    languages: list[str] = reader.get(table, "portal", schema.LANGUAGES)
    reader.done(table, "portal", schema.SCHEMA["portal"], also=set(schema.PORTAL_PROVIDERS))
    google_table = reader.table(table, "google")
    section = "portal.google"
    client_file = reader.optional(google_table, section, schema.GOOGLE_CLIENT_FILE)
    revoke_uri = reader.get(google_table, section, schema.GOOGLE_REVOKE_URI)
    api_endpoint = reader.optional(google_table, section, schema.GOOGLE_API_ENDPOINT)
    reader.done(google_table, section, schema.SCHEMA[section])
    google = None
    if client_file is not None:
        google = PortalGoogle(client_file, revoke_uri, api_endpoint)
    elif google_table:
        reader.problem(section, "client_file", "is required for Google sign-in")
    ms_table = reader.table(table, "microsoft")
    section = "portal.microsoft"
    client_id = reader.optional(ms_table, section, schema.MS_CLIENT_ID)
    tenant = reader.get(ms_table, section, schema.MS_TENANT)
    secret_file = reader.optional(ms_table, section, schema.MS_CLIENT_SECRET_FILE)
    microsoft = PortalMicrosoft(
        client_id or "",
        secret_file or "",
        tenant,
        reader.optional(ms_table, section, schema.MS_AUTHORITY_HOST),
        reader.optional(ms_table, section, schema.MS_GRAPH_URL),
        reader.optional(ms_table, section, schema.MS_CA_FILE),
    )
    reader.done(ms_table, section, schema.SCHEMA[section])
    if ms_table and (client_id is None or secret_file is None):
        reader.problem(section, None, "needs client_id and client_secret_file")
    if public_url is None:
        if any(key not in schema.PORTAL_PROVIDERS for key in table) or google_table or ms_table:
            reader.problem("portal", "public_url", "is required to switch the portal on")
        return None
    return PortalConfig(
        public_url=public_url.rstrip("/"),
        listen=listen,
        allow_networks=tuple(networks),
        invitation_hours=hours,
        languages=tuple(languages),
        google=google,
        microsoft=microsoft if ms_table and client_id and secret_file else None,
    )


def _read_smtp(reader: _Reader, raw: dict[str, Any]) -> SmtpConfig | None:
    table = reader.table(raw, "smtp")
    host = reader.optional(table, "smtp", schema.SMTP_HOST)
    port = reader.get(table, "smtp", schema.SMTP_PORT)
    sender = reader.optional(table, "smtp", schema.SMTP_FROM)
    starttls = reader.get(table, "smtp", schema.SMTP_STARTTLS)
    username = reader.optional(table, "smtp", schema.SMTP_USERNAME)
    password_file = reader.optional(table, "smtp", schema.SMTP_PASSWORD_FILE)
    reader.done(table, "smtp", schema.SCHEMA["smtp"])
    if host is None:
        if table:
            reader.problem("smtp", "host", "is required to send e-mail")
        return None
    if sender is None:
        reader.problem("smtp", "from", "is required with host")
        return None
    return SmtpConfig(host, sender, port, starttls, username, password_file)


def _read_pbxes(
    reader: _Reader, raw: Any, regex: re.Pattern[str] | None
) -> dict[str, PbxConfig]:
    if not isinstance(raw, dict):
        reader.problem("pbx", None, "must be tables like [pbx.main]")
        return {}
    pbxes: dict[str, PbxConfig] = {}
    for name, table in raw.items():
        section = f"pbx.{checks.printable_key(name)}"
        if not _PBX_NAME.fullmatch(name):
            reader.problem(section, None, "name must be 1-32 letters, digits, '-' or '_'")
        if not isinstance(table, dict):
            reader.problem(section, None, "must be a table")
            continue
        if schema.FORBIDDEN_SECRET in table:
            reader.problem(
                section,
                schema.FORBIDDEN_SECRET,
                "secrets are not written in the config; use secret_file or secret_credential",
            )
        secret_file = reader.optional(table, section, schema.SECRET_FILE)
        credential = reader.optional(table, section, schema.SECRET_CREDENTIAL)
        if secret_file is None and credential is None:
            reader.problem(section, "secret_file", "set secret_file or secret_credential")
        listed: list[str] = reader.get(table, section, schema.EXTENSIONS)
        extensions, problems = checks.expand_extensions(listed, regex)
        for problem in problems:
            reader.problem(section, schema.EXTENSIONS.name, problem)
        pbxes[name] = PbxConfig(
            name=name,
            host=reader.get(table, section, schema.HOST),
            port=reader.get(table, section, schema.PORT),
            username=reader.get(table, section, schema.USERNAME),
            secret_file=secret_file,
            secret_credential=credential,
            action_timeout=reader.get(table, section, schema.ACTION_TIMEOUT),
            ping_interval=reader.get(table, section, schema.PING_INTERVAL),
            ping_timeout=reader.get(table, section, schema.PING_TIMEOUT),
            backoff_max=reader.get(table, section, schema.BACKOFF_MAX),
            device_state=reader.get(table, section, schema.DEVICE_STATE),
            extensions=extensions,
            discover_extensions=reader.get(table, section, schema.DISCOVER_EXTENSIONS),
            readback_interval=reader.get(table, section, schema.READBACK_INTERVAL),
        )
        reader.done(table, section, schema.SCHEMA["pbx.*"], also={schema.FORBIDDEN_SECRET})
    return pbxes


def _read_links(
    reader: _Reader, raw: Any, pbxes: dict[str, PbxConfig], regex: re.Pattern[str] | None
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
        extension = reader.optional(table, section, schema.LINK_EXTENSION)
        if extension is None:
            reader.problem(section, "extension", "is required")
        elif not checks.is_extension(extension, regex):
            shown = f" {regex.pattern!r}" if regex is not None else ""
            reader.problem(
                section, "extension", f"{checks.show(extension)} does not match{shown}"
            )
        source = reader.optional(table, section, schema.LINK_SOURCE)
        if source is None and "source" not in table:
            reader.problem(section, "source", "is required (a file path or http(s)/webcal URL)")
        pbx = reader.optional(table, section, schema.LINK_PBX) or next(iter(pbxes), "")
        if pbx not in pbxes:
            known = ", ".join(pbxes) or "none configured"
            reader.problem(section, "pbx", f"unknown PBX {checks.show(pbx)} (known: {known})")
        timezone = reader.optional(table, section, schema.LINK_TIMEZONE)
        owners: list[str] = reader.get(table, section, schema.OWNER_EMAILS)
        reader.done(table, section, schema.SCHEMA["link"])
        if extension is not None and source is not None:
            links.append(LinkConfig(extension, source, pbx, timezone, tuple(owners)))
    return links


class _Reader:
    """Collects problems while reading typed values out of TOML tables.

    Values are read only through ``Option`` objects; ``done`` reports the keys of a
    table that are in no option of its section, and raises ``AssertionError`` (a bug,
    caught by every test that loads a config) when an option of the section was not read.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._read: set[tuple[str, str]] = set()

    def problem(self, section: str, key: str | None, message: str) -> None:
        self.problems.append(f"{self.source}: {_where(section, key)}: {message}")

    def warn(self, section: str, key: str | None, message: str) -> None:
        self.warnings.append(f"{self.source}: {_where(section, key)}: {message}")

    def table(self, raw: dict[str, Any], section: str) -> dict[str, Any]:
        value = raw.get(section, {})
        if not isinstance(value, dict):
            self.problem(section, None, "must be a table")
            return {}
        return value

    def get(self, table: dict[str, Any], section: str, option: Option[T]) -> T:
        """The value of an option that has a default (the default when absent or bad)."""
        assert option.default is not None, f"{option.name} has no default: use optional()"
        value = self.optional(table, section, option)
        return option.default if value is None else value

    def optional(self, table: dict[str, Any], section: str, option: Option[T]) -> T | None:
        """The value, or the option's default (maybe ``None``) when absent or bad."""
        self._read.add((section, option.name))
        if option.name not in table:
            return option.default
        value: Any = table[option.name]
        kind: type[Any] = option.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            shown = checks.show(value) if isinstance(value, str) else _short(value)
            self.problem(section, option.name, f"must be {_KIND_NAMES[kind]}, got {shown}")
            return option.default
        if option.check is not None and (message := option.check(value)) is not None:
            self.problem(section, option.name, message)
            return option.default
        typed: T = value
        return typed

    def done(
        self,
        table: dict[str, Any],
        section: str,
        options: tuple[Option[Any], ...],
        *,
        also: set[str] | None = None,
    ) -> None:
        known = {o.name for o in options}
        unread = sorted(name for name in known if (section, name) not in self._read)
        assert not unread, f"options of [{section}] in the schema but never read: {unread}"
        for key in table:
            if key not in known and key not in (also or set()):
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = next(
                    (f"did you mean {o.name!r}: {o.doc}? " for o in options if [o.name] == close),
                    "",
                )
                self.problem(
                    section,
                    checks.printable_key(key),
                    f"unknown option ({hint}known: {', '.join(sorted(known))})",
                )


def _where(section: str, key: str | None) -> str:
    return f"[{section}]" + (f" {key}" if key else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}
