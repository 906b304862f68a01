"""The link operations the CLI, the admin API and the customer portal share.

What it does, one function per operation:

* ``add_checked_link``: add a link switched off, store its secret, read its calendar once
  (``check_link_read``), then switch it on; on any failure nothing is left behind.
* ``set_link_active``, ``request_sync`` (a running service's ``CalendarSync.sync_soon``).
* ``remove_link``: revoke the grant at the provider, then delete the secrets and the
  link. Google: the refresh token is POSTed to the revocation endpoint
  (``[portal.google] revoke_uri``, by ``calendars.google.web_flow.revoke``). Microsoft
  has no endpoint that revokes one app's refresh token (revoking a user's sign-in
  sessions logs them out everywhere, which is not ours to do), so the stored grant is
  deleted and ``Removal.note`` says the user can remove the app under
  myapps.microsoft.com. CalDAV/Exchange passwords and app-only grants (the admin's own
  client secret, service-account keys) are deleted, not revoked.

Beside it, and importable from here too: ``rules`` (``checked_target``,
``visible_link``, ``shown_message``: what every caller applies first) and ``overview``
(``link_overview`` / ``link_overviews``, ``sync_log``: looking at a link).

What it must not do: print, know HTTP requests or argparse, or put a secret or a
calendar URL's token into a message (messages go through ``shown_message``). Every
function is blocking; async callers use ``asyncio.to_thread``.

Start reading at ``add_checked_link``, then ``overview.link_overview``.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbxcal.admin.overview import (
    OVERVIEW_DAYS,
    Forwarding,
    Ignored,
    LinkOverview,
    default_parser,
    link_overview,
    link_overviews,
    sync_log,
)
from pbxcal.admin.rules import LinkNotFound, checked_target, shown_message, visible_link
from pbxcal.errors import InputError, PbxcalError, StoreError

if TYPE_CHECKING:
    import httpx

    from pbxcal.config import Config
    from pbxcal.service.sync import CalendarSync
    from pbxcal.store import Link, Store

__all__ = [
    "CHECK_TIMEOUT",
    "OVERVIEW_DAYS",
    "REVOKE_TIMEOUT",
    "Forwarding",
    "Ignored",
    "LinkNotFound",
    "LinkOverview",
    "Removal",
    "add_checked_link",
    "check_link_read",
    "checked_target",
    "default_parser",
    "link_overview",
    "link_overviews",
    "remove_link",
    "request_sync",
    "set_link_active",
    "shown_message",
    "sync_log",
    "visible_link",
]

#: Seconds the check read may take.
CHECK_TIMEOUT = 30.0
#: Seconds a revocation call may take (the link is removed whatever it answers).
REVOKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Removal:
    """What ``remove_link`` did at the provider: ``revoked`` there, and a note why not."""

    link_id: int
    revoked: bool
    note: str = ""


# -- adding --------------------------------------------------------------------------------


def add_checked_link(
    store: Store,
    config: Config,
    *,
    pbx: str,
    extension: str,
    provider: str,
    source: str,
    settings: Mapping[str, Any],
    secret_kind: str | None,
    secret: bytes | None,
    check: bool = True,
    active: bool = True,
) -> Link:
    """Add the link switched off, store its secret, read it once, then switch it on.

    A running service never sees a half-made link (it skips inactive ones). When the
    secret cannot be stored or the calendar cannot be read, the link and its secret are
    removed again and ``InputError`` says why in one line. ``check=False`` skips the
    read (``links add --no-check``); ``active=False`` leaves it off (``--disabled``).
    The store must have its key ring (``store.use_keys``) when there is a secret.
    """
    checked_target(config, pbx, extension)
    link = store.add_link(extension, pbx, provider, source, dict(settings), active=False)
    try:
        if secret is not None:
            if not secret_kind:
                raise InputError("a secret needs a kind")
            store.save_secret(link.id, secret_kind, secret)
        if check:
            check_link_read(link, store, config)
    except BaseException:
        store.remove_link(link.id)
        raise
    return store.set_link_active(link.id, True) if active else link


def check_link_read(link: Link, store: Store, config: Config) -> None:
    """Read the calendar once (full); a refusal is an ``InputError`` naming the cause.

    Runs its own event loop: call it from a thread, never from a running loop.
    """
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
                    allow_networks=config.portal.allow_networks if config.portal else (),
                )  # fmt: skip
                try:
                    source: Any = await asyncio.to_thread(factory, link)
                except BaseException:
                    await factory.aclose()
                    raise
                try:
                    first_read = (
                        source.changes(None)
                        if hasattr(source, "changes")
                        else (
                            source.fetch(None)  # an ICS file or URL: one full fetch
                        )
                    )
                    await asyncio.wait_for(first_read, CHECK_TIMEOUT)
                finally:  # a refresh token the read rotated (Microsoft) is the one to keep
                    update = getattr(source, "updated_secret", None)
                    renewed = await asyncio.to_thread(update) if update else None
                    if renewed is not None:
                        await asyncio.to_thread(store.save_secret, link.id, *renewed)
                    await factory.aclose()
        finally:
            calls.close()

    try:
        asyncio.run(read())
    except TimeoutError:
        raise InputError(f"the calendar did not answer within {CHECK_TIMEOUT:g}s") from None
    except PbxcalError as exc:
        raise InputError(f"the calendar cannot be read: {shown_message(str(exc))}") from None


# -- changing -------------------------------------------------------------------------------


def set_link_active(
    store: Store, link_id: int, active: bool, *, pbxes: Collection[str] | None = None
) -> Link:
    """Switch a link on or off (a running service follows within seconds)."""
    visible_link(store, link_id, pbxes)
    return store.set_link_active(link_id, active)


def request_sync(
    store: Store,
    sync: CalendarSync | None,
    link_id: int,
    *,
    pbxes: Collection[str] | None = None,
) -> bool:
    """Ask the running service (``sync``) to read the link now; False when it cannot
    (no service in this process, or the link is off or not followed yet). The CLI's
    ``links sync`` reads it in its own process instead."""
    link = visible_link(store, link_id, pbxes)
    if sync is None or not link.active:
        return False
    return sync.sync_soon(link_id)


def remove_link(
    store: Store,
    config: Config,
    link_id: int,
    *,
    pbxes: Collection[str] | None = None,
    reopen_invitation: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Removal:
    """Revoke the link's grant at the provider, then delete its secrets and the link.

    The link is removed whatever the provider answers (a grant the provider cannot be
    told about is at least gone here); ``Removal`` says whether it was revoked.
    ``reopen_invitation`` (the portal's "linked the wrong account?") makes the
    invitation that made this link usable again. ``transport`` is for tests.
    """
    link = visible_link(store, link_id, pbxes)
    removal = _revoke(store, config, link, transport)
    if reopen_invitation:
        store.reopen_invitation(link_id)
    store.delete_secrets(link_id)
    store.remove_link(link_id)
    return removal


def _revoke(
    store: Store, config: Config, link: Link, transport: httpx.AsyncBaseTransport | None
) -> Removal:
    from pbxcal.calendars.google.web_flow import GOOGLE_REVOKE_URI, revoke
    from pbxcal.calendars.providers import SECRET_GOOGLE

    if link.provider == "google":
        try:
            info = _json_object(store.load_secret(link.id, SECRET_GOOGLE))
        except StoreError as exc:
            return Removal(link.id, False, f"the grant could not be read to revoke it: {exc}")
        if not info.get("refresh_token"):
            return Removal(link.id, False, "no user grant to revoke (a service-account key)")
        google = config.portal.google if config.portal is not None else None
        if google is not None:
            uri = google.revoke_uri
        elif _issued_by_google(info):
            uri = GOOGLE_REVOKE_URI
        else:  # never hand a token to a server that did not issue it
            return Removal(link.id, False, "the grant was not issued by Google; not revoked")
        try:
            asyncio.run(revoke(info, uri, http_timeout=REVOKE_TIMEOUT, transport=transport))
        except PbxcalError as exc:
            return Removal(link.id, False, f"not revoked at Google: {shown_message(str(exc))}")
        return Removal(link.id, True, "revoked at Google")
    if link.provider == "graph" and link.settings.get("auth") == "delegated":
        return Removal(
            link.id,
            False,
            "Microsoft has no endpoint that revokes one app's grant; the stored grant is "
            "deleted (the user can remove the app at https://myapps.microsoft.com)",
        )
    return Removal(link.id, False)


def _issued_by_google(info: Mapping[str, Any]) -> bool:
    """Whether the grant's token endpoint is Google's (a grant without one is)."""
    from urllib.parse import urlsplit

    token_uri = info.get("token_uri")
    if not token_uri:
        return True
    host = urlsplit(str(token_uri)).hostname or ""
    return host in ("oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com")


def _json_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
