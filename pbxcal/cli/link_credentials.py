"""``pbxcal links add --provider caldav|google|graph|ews``: a link with credentials.

The password or the Google credentials are read from a file, standard input or a prompt
(``secret_input``; never from argv), stored encrypted with the ``[secrets]`` keys, and
the calendar is read once before the link is switched on, so a wrong password, URL or
grant is a plain one-line error now, not a silent status later (``--no-check`` skips
that). The link is added switched off and enabled only after the check, so a running
service never reads a half-made link; on failure nothing is left behind.

Start reading at ``add_provider_link``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pbxcal.errors import InputError, PbxcalError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Link, Store


def checked_provider_source(ns: argparse.Namespace) -> str:
    """``--source`` for caldav (an http(s) URL) or google (a calendar id)."""
    source = str(ns.source).strip()
    if ns.provider == "caldav":
        try:
            parts = urlsplit(source)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError("--source must be the http(s) URL of the calendar or server")
        if parts.username or parts.password:
            raise InputError("--source must not carry a user name or password (use --username)")
        if not ns.username:
            raise InputError("--username is required for a CalDAV link")
        return source
    if ns.provider == "ews":
        return _checked_ews_source(ns, source)
    if ns.provider == "graph" and ns.grant_file:
        given = [name for name, value in (("--tenant", ns.tenant), ("--client-id", ns.client_id),
                 ("--client-secret-file", ns.client_secret_file)) if value]  # fmt: skip
        if given:
            raise InputError(f"--grant-file holds the app and tenant; leave out {given[0]}")
        if source != "me":
            raise InputError("--source must be me with --grant-file (the signed-in mailbox)")
        return source
    if ns.provider == "graph":
        if "@" not in source or len(source) > 256 or any(c.isspace() for c in source):
            raise InputError("--source must be the mailbox's address, e.g. anna@contoso.com")
        if not ns.tenant or not ns.client_id:
            raise InputError(
                "--tenant and --client-id (app-only), or --grant-file (delegated), are "
                "required for a Microsoft 365 link"
            )
        return source
    if not source or len(source) > 256 or any(c.isspace() or ord(c) < 32 for c in source):
        raise InputError("--source must be a Google calendar id such as primary")
    if not ns.credentials_file:
        raise InputError("--credentials-file is required for a Google link")
    return source


def _checked_ews_source(ns: argparse.Namespace, source: str) -> str:
    """``--source`` (the EWS URL) or ``--autodiscover`` with ``--mailbox``, and the auth."""
    if not ns.mailbox or "@" not in ns.mailbox or any(c.isspace() for c in ns.mailbox):
        raise InputError("--mailbox, the mailbox's address, is required for an Exchange link")
    if ns.autodiscover:
        if source != ns.mailbox:
            raise InputError("--autodiscover finds the EWS URL from --mailbox; leave out --source")
        if ns.auth == "oauth":
            raise InputError("--autodiscover needs --auth ntlm or basic; with oauth give --source")
    else:
        try:
            parts = urlsplit(source)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                "--source must be the EWS URL, e.g. https://mail.example/EWS/Exchange.asmx "
                "(or use --autodiscover)"
            )
        if parts.username or parts.password:
            raise InputError("--source must not carry a user name or password (use --username)")
        if ns.auth == "oauth" and parts.scheme != "https":
            raise InputError("--auth oauth needs an https EWS URL")
    if ns.auth == "oauth":
        if not ns.tenant or not ns.client_id:
            raise InputError("--auth oauth needs --tenant and --client-id (the app registration)")
    elif not ns.username:
        raise InputError("--username is required for an Exchange link (or use --auth oauth)")
    return source


def add_provider_link(
    ns: argparse.Namespace,
    config: Config,
    store: Store,
    extension: str,
    pbx: str,
    source: str,
    settings: dict[str, Any],
) -> Link:
    """Add the link switched off, store its secret, read it once, then switch it on."""
    from pbxcal.calendars.providers import (
        SECRET_CALDAV_PASSWORD,
        SECRET_EWS_CLIENT,
        SECRET_EWS_PASSWORD,
        SECRET_GOOGLE,
        SECRET_GRAPH_CLIENT,
        SECRET_GRAPH_TOKEN_CACHE,
    )
    from pbxcal.cli.keys import key_ring
    from pbxcal.cli.secret_input import read_secret_option

    store.use_keys(key_ring(config))
    if ns.provider == "caldav":
        settings["username"] = ns.username
        if ns.calendar:
            settings["calendar_name"] = ns.calendar
        secret = read_secret_option(ns, "password", "the CalDAV password").encode()
        kind = SECRET_CALDAV_PASSWORD
    elif ns.provider == "ews":
        settings.update(
            mailbox=ns.mailbox,
            auth=ns.auth,
            access="impersonation" if ns.impersonation else "delegate",
        )
        if ns.ca_bundle:
            settings["ca_bundle"] = str(Path(ns.ca_bundle).resolve())
        if ns.autodiscover:
            settings["autodiscover"] = True
            if ns.dns_server:
                settings["dns_server"] = ns.dns_server
        if ns.auth == "oauth":
            settings.update(tenant=ns.tenant, client_id=ns.client_id)
            if ns.authority_host:
                settings["authority_host"] = ns.authority_host
            secret = read_secret_option(ns, "client-secret", "the client secret").encode()
            kind = SECRET_EWS_CLIENT
        else:
            settings["username"] = ns.username
            secret = read_secret_option(ns, "password", "the Exchange password").encode()
            kind = SECRET_EWS_PASSWORD
    elif ns.provider == "graph" and ns.grant_file:
        grant = _microsoft_grant(Path(ns.grant_file))
        settings.update(auth="delegated", client_id=grant.client_id, tenant=grant.tenant)
        if grant.authority_host:
            settings["authority_host"] = grant.authority_host
        for name in ("authority_host", "graph_url", "ca_file"):
            if getattr(ns, name, None):
                settings[name] = getattr(ns, name)
        secret = grant.token_cache.encode()
        kind = SECRET_GRAPH_TOKEN_CACHE
    elif ns.provider == "graph":
        settings.update(tenant=ns.tenant, client_id=ns.client_id)
        for name in ("authority_host", "graph_url", "ca_file"):
            if getattr(ns, name, None):
                settings[name] = getattr(ns, name)
        secret = read_secret_option(ns, "client-secret", "the client secret").encode()
        kind = SECRET_GRAPH_CLIENT
    else:
        info = _google_info(Path(ns.credentials_file))
        if ns.subject:
            settings.update(auth="service_account", subject=ns.subject)
        else:
            settings["auth"] = "user"
        if ns.api_endpoint:
            settings["api_endpoint"] = ns.api_endpoint
        secret = json.dumps(info).encode()
        kind = SECRET_GOOGLE
    from pbxcal.admin.operations import add_checked_link

    return add_checked_link(
        store, config, pbx=pbx, extension=extension, provider=ns.provider, source=source,
        settings=settings, secret_kind=kind, secret=secret, check=not ns.no_check,
        active=not ns.disabled,
    )  # fmt: skip


def _microsoft_grant(path: Path) -> Any:
    from pbxcal.calendars.graph.authorize import read_grant_file

    try:
        return read_grant_file(path)
    except PbxcalError as exc:
        raise InputError(f"--grant-file {exc}") from None


def _google_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--credentials-file {path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise InputError(f"--credentials-file {path}: not JSON") from None
    if not isinstance(info, dict):
        raise InputError(f"--credentials-file {path}: not a JSON object")
    return info


def authorize_google(ns: argparse.Namespace) -> int:
    """``links authorize google``: the installed-app flow; writes the grant to a 0600 file."""
    import os
    import sys

    from pbxcal.calendars.google.authorize import read_client_config, run_installed_app_flow

    if not ns.client_file:
        raise InputError("--client-file is required for Google (the Desktop app's JSON)")
    output = Path(ns.output)
    if output.exists():
        raise InputError(f"--output {output} exists; choose a new file")
    client = read_client_config(Path(ns.client_file))

    def show(url: str) -> None:
        print(f"Open this address in a browser on this machine and sign in:\n\n  {url}\n",
              file=sys.stderr, flush=True)  # fmt: skip

    try:
        info = run_installed_app_flow(client, show, timeout=ns.timeout, login_hint=ns.login_hint)
    except PbxcalError as exc:
        raise InputError(str(exc)) from None
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InputError(f"--output {output}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(info, handle)
    print(
        f"signed in; the grant is in {output} (mode 0600). Next: pbxcal links add "
        f"--provider google --source primary --credentials-file {output} --extension EXT"
    )
    return 0


def authorize_microsoft(ns: argparse.Namespace) -> int:
    """``links authorize microsoft``: the authorization code flow with PKCE (a public
    client, loopback redirect); writes the delegated grant to a new 0600 file."""
    import sys

    from pbxcal.calendars.graph.authorize import (
        run_installed_app_flow,
        valid_tenant,
        write_grant_file,
    )
    from pbxcal.calendars.graph.tokens import DEFAULT_AUTHORITY_HOST

    if not ns.client_id:
        raise InputError("--client-id is required for Microsoft (the app registration's id)")
    if not valid_tenant(ns.tenant):
        raise InputError("--tenant must be organizations, common, a tenant id or a domain")
    output = Path(ns.output)
    if output.exists():
        raise InputError(f"--output {output} exists; choose a new file")

    def show(url: str) -> None:
        print(f"Open this address in a browser on this machine and sign in:\n\n  {url}\n",
              file=sys.stderr, flush=True)  # fmt: skip

    try:
        grant = run_installed_app_flow(
            ns.client_id, show, tenant=ns.tenant, timeout=ns.timeout,
            login_hint=ns.login_hint, authority_host=ns.authority_host or DEFAULT_AUTHORITY_HOST,
            ca_file=ns.ca_file,
        )  # fmt: skip
    except PbxcalError as exc:
        raise InputError(str(exc)) from None
    try:
        write_grant_file(output, grant)
    except OSError as exc:
        raise InputError(f"--output {output}: cannot create: {exc.strerror}") from None
    print(
        f"signed in; the grant is in {output} (mode 0600). Next: pbxcal links add "
        f"--provider graph --grant-file {output} --extension EXT"
    )
    return 0
