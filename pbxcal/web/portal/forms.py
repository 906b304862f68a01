"""The CalDAV (iCloud, Nextcloud, ...) and Exchange forms: typed in, checked live, linked.

What it does: ``GET /link/caldav`` and ``GET /link/exchange`` show a form; the POST
checks the CSRF token, the fields (present, not too long, no control characters), the
URL with the SSRF guard (``pbxcal.net.guard.check_url``: https, public addresses only
unless ``[portal] allow_networks`` allows the range), then hands everything to
``add_checked_link``, which stores the link switched off, reads the calendar once and
switches it on, or removes everything and raises ``InputError`` with a one-line reason.
On any error the form comes back with that reason and everything typed except the
password; nothing is stored. On success ``flow.finish_link`` claims the invitation.

What it must not do: echo or log a password; contact a URL the guard refused; store a
link that was not read successfully.

Start at ``link_form``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from pbxcal.admin.operations import add_checked_link
from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD, SECRET_EWS_PASSWORD
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarNeedsRelink,
    CalendarUnavailable,
    InputError,
)
from pbxcal.net.guard import UrlRefused, check_url_async
from pbxcal.web import context
from pbxcal.web.cookies import PortalSession, check_csrf
from pbxcal.web.portal.flow import finish_link, page, require_session

log = logging.getLogger(__name__)


def _(message: str) -> str:
    """Marks a msgid for extraction; the template translates it."""
    return message


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"
    autocomplete: str = "off"
    hint: str = ""
    placeholder: str = ""
    required: bool = True
    secret: bool = False
    max_length: int = 500
    choices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LinkForm:
    """One provider's form and how its fields become a link."""

    provider: str
    path: str
    title: str
    intro: str
    fields: tuple[Field, ...]
    secret_kind: str


CALDAV = LinkForm(
    provider="caldav",
    path="/link/caldav",
    title=_("iCloud or another CalDAV calendar"),
    intro=_(
        "For iCloud: use https://caldav.icloud.com, your Apple ID e-mail address and an "
        "app-specific password (made at account.apple.com under Sign-In and Security)."
    ),
    fields=(
        Field(
            "url",
            _("Server or calendar address"),
            "url",
            "url",
            placeholder="https://caldav.icloud.com",
        ),
        Field("username", _("User name"), autocomplete="username"),
        Field(
            "password",
            _("App-specific password"),
            "password",
            "current-password",
            secret=True,
            max_length=1024,
        ),
        Field(
            "calendar",
            _("Calendar name"),
            required=False,
            hint=_("Needed when the address is the server's, not the calendar's."),
        ),
    ),
    secret_kind=SECRET_CALDAV_PASSWORD,
)
EXCHANGE = LinkForm(
    provider="ews",
    path="/link/exchange",
    title=_("Microsoft Exchange (on premises)"),
    intro=_("Your IT department knows the EWS address of your Exchange server."),
    fields=(
        Field(
            "url",
            _("EWS address"),
            "url",
            "url",
            placeholder="https://mail.example.com/EWS/Exchange.asmx",
        ),
        Field("mailbox", _("Mailbox (e-mail address)"), "email", "email"),
        Field(
            "username",
            _("User name"),
            autocomplete="username",
            hint=_("Often DOMAIN\\user or your e-mail address."),
        ),
        Field(
            "password", _("Password"), "password", "current-password", secret=True, max_length=1024
        ),
        Field(
            "auth",
            _("Sign-in method"),
            "select",
            choices=(("ntlm", _("Windows (NTLM)")), ("basic", _("Basic"))),
        ),
    ),
    secret_kind=SECRET_EWS_PASSWORD,
)
FORMS = {form.path: form for form in (CALDAV, EXCHANGE)}


def _show(
    request: web.Request,
    form: LinkForm,
    session: PortalSession,
    values: Mapping[str, str],
    error: str | None = None,
    detail: str = "",
) -> web.Response:
    kept = {f.name: values.get(f.name, "") for f in form.fields if not f.secret}
    return page(
        request,
        "link_form.html",
        session,
        status=200 if error is None else 400,
        form=form,
        values=kept,
        error=error,
        detail=detail,
    )


def check_fields(form: LinkForm, values: Mapping[str, str]) -> tuple[str, str] | None:
    """(error key, field label) of the first bad field, or None."""
    for spec in form.fields:
        value = values.get(spec.name, "")
        if not value.strip():
            if spec.required:
                return "missing", spec.label
            continue
        if len(value) > spec.max_length or any(ord(c) < 32 or ord(c) == 127 for c in value):
            return "invalid", spec.label
        if spec.choices and value not in {key for key, _label in spec.choices}:
            return "invalid", spec.label
    return None


def settings_of(form: LinkForm, values: Mapping[str, str]) -> dict[str, object]:
    """The link settings (no secrets) of a filled-in form. ``guarded``: a customer typed
    the address, so every connection of this link goes through ``pbxcal.net``'s guard."""
    username = values["username"].strip()
    if form is CALDAV:
        settings: dict[str, object] = {"username": username, "account": username,
                                       "guarded": True}  # fmt: skip
        calendar = values.get("calendar", "").strip()
        if calendar:
            settings["calendar_name"] = calendar
        return settings
    mailbox = values["mailbox"].strip()
    return {"mailbox": mailbox, "username": username, "auth": values["auth"],
            "account": mailbox, "guarded": True}  # fmt: skip


def why_unread(error: BaseException) -> str:
    """The page's plain reason for a failed first read: ``auth`` (user name or password
    refused), ``unreachable``, ``timeout`` or ``check`` (anything else; the detail says
    what). ``add_checked_link`` raises one ``InputError``; the adapter's error it
    replaced is still its ``__context__``."""
    seen: BaseException | None = error
    for _depth in range(5):
        if seen is None:
            break
        if isinstance(seen, CalendarAuthFailed | CalendarNeedsRelink):
            return "auth"
        if isinstance(seen, CalendarUnavailable):
            return "unreachable"
        if isinstance(seen, TimeoutError):
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return "check"


def link_form(form: LinkForm) -> tuple[web.RouteDef, web.RouteDef]:
    async def show(request: web.Request) -> web.StreamResponse:
        session = await require_session(request)
        if session.link_id is not None:
            raise web.HTTPSeeOther("/status")
        return _show(request, form, session, {"auth": "ntlm"})

    async def submit(request: web.Request) -> web.StreamResponse:
        session = await require_session(request)
        values = await check_csrf(request, session)
        if session.link_id is not None:  # one link per invitation; unlink first
            raise web.HTTPSeeOther("/status")
        ctx = context(request)
        invitation = await asyncio.to_thread(ctx.store.get_invitation, session.invitation_id)
        if invitation is None or invitation.used_at is not None:
            return page(request, "invitation_refused.html", None, status=410, reason="used")
        bad = check_fields(form, values)
        if bad is not None:
            return _show(request, form, session, values, error=bad[0], detail=bad[1])
        portal = ctx.config.portal
        allowed = portal.allow_networks if portal is not None else ()
        try:
            checked = await check_url_async(values["url"].strip(), allowed)
        except UrlRefused as refused:
            log.info("portal: %s URL refused: %s", form.provider, refused)
            return _show(request, form, session, values, error="url", detail=str(refused))
        try:
            link = await asyncio.to_thread(
                partial(
                    add_checked_link,
                    ctx.store,
                    ctx.config,
                    pbx=session.pbx,
                    extension=session.extension,
                    provider=form.provider,
                    source=checked.url,
                    settings=settings_of(form, values),
                    secret_kind=form.secret_kind,
                    secret=values["password"].encode(),
                )
            )
        except InputError as exc:
            log.info("portal: %s link refused: %s", form.provider, exc)
            return _show(request, form, session, values, error=why_unread(exc), detail=str(exc))
        return await finish_link(request, session, link)

    return web.get(form.path, show), web.post(form.path, submit)
