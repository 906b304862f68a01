"""The link operations the CLI, the admin API and the customer portal share.

What it does, one function per operation:

* ``add_checked_link``: add a link switched off, store its secret, read its calendar once
  (``check_link_read``), then switch it on; on any failure nothing is left behind.
* ``link_overview`` / ``link_overviews``: status (``calendars.health``), last successful
  sync, last error, the forwardings coming up in the next 7 days and the appointments
  ignored with their reason code (the core's ``Reason``), planned by the core's
  ``plan_windows`` with the PBX's ``TitleParser`` exactly as ``pbxcal plan --link`` does.
  One link is expanded fresh from its stored events; a list uses the expansions the
  service saved (one query for all links).
* ``set_link_active``, ``sync_log``, ``request_sync`` (a running service's
  ``CalendarSync.sync_soon``).
* ``remove_link``: revoke the grant at the provider, then delete the secrets and the
  link. Google: the refresh token is POSTed to the revocation endpoint
  (``[portal.google] revoke_uri``, by ``calendars.google.web_flow.revoke``). Microsoft
  has no endpoint that revokes one app's refresh token (revoking a user's sign-in
  sessions logs them out everywhere, which is not ours to do), so the stored grant is
  deleted and ``Removal.note`` says the user can remove the app under
  myapps.microsoft.com. CalDAV/Exchange passwords and app-only grants (the admin's own
  client secret, service-account keys) are deleted, not revoked.
* ``checked_target``, ``visible_link``: the rules every caller applies first.

What it must not do: print, know HTTP requests or argparse, or put a secret or a
calendar URL's token into a message (messages go through ``shown_message``). Every
function is blocking; async callers use ``asyncio.to_thread``.

Start reading at ``add_checked_link``, then ``link_overview``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pbxcal.errors import InputError, PbxcalError, StoreError

if TYPE_CHECKING:
    import httpx

    from pbxcal.config import Config
    from pbxcal.core.ical import EventInstance
    from pbxcal.core.targets import TitleParser
    from pbxcal.service.sync import CalendarSync
    from pbxcal.store import Link, Store, SyncLogEntry

#: Seconds the check read may take.
CHECK_TIMEOUT = 30.0
#: How far ahead an overview looks.
OVERVIEW_DAYS = 7
#: Seconds a revocation call may take (the link is removed whatever it answers).
REVOKE_TIMEOUT = 10.0
#: Anything URL-shaped inside a stored message (older sync-log lines kept raw URLs).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
#: How far back a window that is running now may have started and still show its start.
_LOOK_BACK = timedelta(days=1)


class LinkNotFound(InputError):
    """No such link, or one the caller may not see (the same answer for both)."""

    def __init__(self, link_id: int) -> None:
        super().__init__(f"no link {link_id}")
        self.link_id = link_id


@dataclass(frozen=True)
class Forwarding:
    """From ``start`` to ``end`` (UTC) the extension rings ``targets`` in parallel."""

    start: datetime
    end: datetime
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Ignored:
    """An appointment that does not forward; ``reason`` is a core ``Reason`` code."""

    title: str
    start: datetime
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class LinkOverview:
    """What a link does: its health and its next week as pbxcal understood it."""

    link: Link
    status: str
    last_sync: datetime | None
    last_error: str | None
    upcoming: list[Forwarding]
    ignored: list[Ignored]
    account: str | None
    last_result: str | None = None
    last_attempt: datetime | None = None
    #: Why the week could not be planned (a calendar over a limit), else None.
    problem: str | None = None


@dataclass(frozen=True)
class Removal:
    """What ``remove_link`` did at the provider: ``revoked`` there, and a note why not."""

    link_id: int
    revoked: bool
    note: str = ""


# -- the rules every caller applies -------------------------------------------------------


def checked_target(config: Config, pbx: str, extension: str) -> None:
    """``InputError`` unless ``pbx`` is configured and ``extension`` is one of its."""
    from pbxcal.config.checks import show

    if pbx not in config.pbxes:
        known = ", ".join(config.pbxes) or f"none in {config.source}"
        raise InputError(f"pbx {show(pbx)}: not a configured PBX ({known})")
    if not config.policy.is_extension(extension):
        raise InputError(
            f"extension {show(extension)} is not an extension "
            f"(pattern {config.policy.extension_pattern!r})"
        )
    listed = config.pbxes[pbx].extensions
    if listed and extension not in listed:
        raise InputError(f"extension {show(extension)} is not one of {show(pbx)}'s extensions")


def visible_link(store: Store, link_id: int, pbxes: Collection[str] | None = None) -> Link:
    """The link, if it exists and its PBX is in ``pbxes`` (None: all); else ``LinkNotFound``.

    A link of another PBX is "not found", not "forbidden": a scoped caller cannot
    learn which ids other tenants' links have.
    """
    link = store.get_link(link_id)
    if link is None or (pbxes is not None and link.pbx not in pbxes):
        raise LinkNotFound(link_id)
    return link


def shown_message(message: str) -> str:
    """A stored message as it may be shown: URLs redacted, control codes escaped."""
    from pbxcal.core.redact import printable, redact_url

    return printable(_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message))


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


# -- looking ------------------------------------------------------------------------------


def default_parser(config: Config, pbx: str) -> TitleParser:
    """The PBX's title parser from the config (its listed extensions; none listed: every
    pattern match counts, as offline ``pbxcal plan``). The service passes its own, which
    also knows the extensions read from Asterisk."""
    from pbxcal.core.targets import TitleParser

    listed = config.pbxes[pbx].extensions if pbx in config.pbxes else frozenset()
    return TitleParser(config.policy, listed or None)


def link_overview(
    store: Store,
    config: Config,
    link_id: int,
    now: datetime,
    *,
    pbxes: Collection[str] | None = None,
    parser: TitleParser | None = None,
) -> LinkOverview:
    """One link's overview, its week expanded fresh from its stored events."""
    from pbxcal.calendars.snapshot import join_calendar
    from pbxcal.core.ical import OverLimit, expand_calendar

    link = visible_link(store, link_id, pbxes)
    log = store.sync_log(link_id, 200)
    events, state = store.load_events(link_id)
    instances: list[EventInstance] = []
    problem = None
    if state is not None:
        try:
            calendar = join_calendar(
                events, state.timezones, state.calendar_tz, source=f"link {link_id}"
            )
            expansion = expand_calendar(
                calendar,
                now - _LOOK_BACK,
                now + timedelta(days=OVERVIEW_DAYS),
                _zone(link, config),
                owner_emails=[str(o) for o in link.settings.get("owner_emails") or []],
                limits=config.limits,
            )
            instances = list(expansion.instances)
        except (OverLimit, InputError) as exc:
            problem = shown_message(str(exc))
    return _overview(link, log, instances, now, parser or default_parser(config, link.pbx), problem)


def link_overviews(
    store: Store,
    config: Config,
    now: datetime,
    *,
    pbxes: Collection[str] | None = None,
    parser_for: Any = None,
) -> list[LinkOverview]:
    """Every link's overview (of ``pbxes`` only, if given), from the saved expansions.

    ``parser_for(pbx)`` gives a PBX's parser (the service's ``Reconciler.parser_for``);
    default ``default_parser``. Links without a saved expansion show no forwardings.
    """
    links = [link for link in store.list_links() if pbxes is None or link.pbx in pbxes]
    if not links:
        return []
    last = store.last_sync()
    successes = _last_successes(store, links, last)
    expansions = store.load_expansions()
    parsers: dict[str, TitleParser] = {}
    result = []
    for link in links:
        if link.pbx not in parsers:
            parsers[link.pbx] = (
                parser_for(link.pbx) if parser_for else default_parser(config, link.pbx)
            )
        record = expansions.get(link.id)
        instances = list(record.instances) if record is not None else []
        log = [e for e in (last.get(link.id), successes.get(link.id)) if e is not None]
        result.append(_overview(link, log, instances, now, parsers[link.pbx], None))
    return result


def _last_successes(
    store: Store, links: Iterable[Link], last: Mapping[int, SyncLogEntry]
) -> dict[int, SyncLogEntry]:
    """The newest successful entry of links whose newest entry is a failure."""
    from pbxcal.calendars.health import SUCCESS_RESULTS

    found = {}
    for link in links:
        newest = last.get(link.id)
        if newest is not None and newest.result not in SUCCESS_RESULTS:
            good = next((e for e in store.sync_log(link.id, 200) if e.result in SUCCESS_RESULTS),
                        None)  # fmt: skip
            if good is not None:
                found[link.id] = good
    return found


def _overview(
    link: Link,
    log: list[SyncLogEntry],
    instances: list[EventInstance],
    now: datetime,
    parser: TitleParser,
    problem: str | None,
) -> LinkOverview:
    from pbxcal.calendars.health import SUCCESS_RESULTS, link_status
    from pbxcal.core.windows import plan_windows

    log = sorted(log, key=lambda e: e.at, reverse=True)
    newest = log[0] if log else None
    success = next((e for e in log if e.result in SUCCESS_RESULTS), None)
    failure = next((e for e in log if e.result not in SUCCESS_RESULTS), None)
    end = now + timedelta(days=OVERVIEW_DAYS)
    current = [i for i in instances if i.end > now]
    plan = plan_windows(current, now - _LOOK_BACK, end, parser.policy, parser=parser)
    account = link.settings.get("account")
    return LinkOverview(
        link=link,
        status=link_status(newest.result if newest else None, active=link.active),
        last_sync=success.at if success else None,
        last_error=shown_message(failure.message or failure.result) if failure else None,
        upcoming=[Forwarding(w.start, w.end, w.targets) for w in plan.windows if w.end > now],
        ignored=[Ignored(r.title, r.start, r.reason.value, r.detail) for r in plan.rejected],
        account=str(account) if account else None,
        last_result=newest.result if newest else None,
        last_attempt=newest.at if newest else None,
        problem=problem,
    )


def _zone(link: Link, config: Config) -> Any:
    from zoneinfo import ZoneInfo

    name = link.settings.get("timezone")
    return ZoneInfo(str(name)) if name else config.zone


def sync_log(
    store: Store, link_id: int, limit: int = 20, *, pbxes: Collection[str] | None = None
) -> list[SyncLogEntry]:
    """A link's newest ``limit`` (1-200) sync log entries, newest first, messages shown."""
    from dataclasses import replace

    visible_link(store, link_id, pbxes)
    entries = store.sync_log(link_id, max(1, min(limit, 200)))
    return [replace(e, message=shown_message(e.message)) for e in entries]


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
