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
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pbxcal.errors import InputError, PbxcalError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Link, Store

#: Seconds the check read may take.
CHECK_TIMEOUT = 30.0


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
        try:
            parts = urlsplit(source)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError("--source must be the EWS URL, e.g. https://mail.example/EWS/Exchange.asmx")
        if not ns.mailbox or not ns.username:
            raise InputError("--mailbox and --username are required for an Exchange link")
        return source
    if ns.provider == "graph":
        if "@" not in source or len(source) > 256 or any(c.isspace() for c in source):
            raise InputError("--source must be the mailbox's address, e.g. anna@contoso.com")
        if not ns.tenant or not ns.client_id:
            raise InputError("--tenant and --client-id are required for a Microsoft 365 link")
        return source
    if not source or len(source) > 256 or any(c.isspace() or ord(c) < 32 for c in source):
        raise InputError("--source must be a Google calendar id such as primary")
    if not ns.credentials_file:
        raise InputError("--credentials-file is required for a Google link")
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
        SECRET_EWS_PASSWORD,
        SECRET_GOOGLE,
        SECRET_GRAPH_CLIENT,
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
            username=ns.username,
            auth=ns.auth,
            access="impersonation" if ns.impersonation else "delegate",
        )
        if ns.ca_bundle:
            settings["ca_bundle"] = str(Path(ns.ca_bundle).resolve())
        secret = read_secret_option(ns, "password", "the Exchange password").encode()
        kind = SECRET_EWS_PASSWORD
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
    link = store.add_link(extension, pbx, ns.provider, source, settings, active=False)
    try:
        store.save_secret(link.id, kind, secret)
        if not ns.no_check:
            _check(link, store, config)
    except BaseException:
        store.remove_link(link.id)
        raise
    return link if ns.disabled else store.set_link_active(link.id, True)


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


def _check(link: Link, store: Store, config: Config) -> None:
    """Read the calendar once (full); a refusal is a one-line error naming the cause."""
    import httpx

    from pbxcal.calendars.blocking import BlockingCalls
    from pbxcal.calendars.providers import SourceFactory

    async def read() -> None:
        calls = BlockingCalls(workers=2)
        try:
            async with httpx.AsyncClient(timeout=CHECK_TIMEOUT) as client:
                factory = SourceFactory(
                    client, config.max_calendar_bytes, calls, store.load_secret,
                    timeout=CHECK_TIMEOUT,
                )  # fmt: skip
                source: Any = await asyncio.to_thread(factory, link)
                await asyncio.wait_for(source.changes(None), CHECK_TIMEOUT)
        finally:
            calls.close()

    try:
        asyncio.run(read())
    except TimeoutError:
        raise InputError(f"the calendar did not answer within {CHECK_TIMEOUT:g}s") from None
    except PbxcalError as exc:
        raise InputError(f"the calendar cannot be read: {exc}") from None


def authorize_google(ns: argparse.Namespace) -> int:
    """``links authorize google``: the installed-app flow; writes the grant to a 0600 file."""
    import os
    import sys

    from pbxcal.calendars.google.authorize import read_client_config, run_installed_app_flow

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
