"""The portal's OAuth 2.0 sign-in (Google, Microsoft 365): start, callback, pick a calendar.

What it does, for a customer who opened an invitation (a ``PortalSession``):

* ``POST /oauth/{provider}/start`` (CSRF-checked): drops a grant still waiting for a
  calendar pick (revoking it at Google: this is also the "not you?" button), begins the
  provider's authorization code flow with ``state`` and PKCE S256
  (``oauth_providers``), files the flow sealed in ``portal_flows`` under the SHA-256 of
  ``state`` (``Store.add_flow``), binds it to this browser (a random value in the
  ``pbxcal_oauth`` cookie whose hash is in the flow) and redirects to the provider.
* ``GET /oauth/{provider}/callback`` (rate-limited per address): takes the flow once
  (``Store.take_flow``: an unknown, used or expired state is a clear page and nothing is
  stored), checks that it belongs to this session's invitation, this provider and this
  browser, shows a clear page for ``access_denied``, redeems the code with the PKCE
  verifier, reads whose account it is and its calendars, and files the grant sealed in
  ``portal_flows`` again (under the hash of a fresh random handle kept in the cookie)
  until the customer picks a calendar.
* ``GET /oauth/{provider}/calendars``: "You are linking anna@example.com — not you?" and
  the calendars to pick from. Taking a row is single use, so each showing files the
  grant again under a new handle (a reload works, an old handle does not).
* ``POST /oauth/{provider}/calendars`` (CSRF): takes the grant, ``add_checked_link``
  (provider ``google`` with settings ``auth=user``, or ``graph`` delegated; settings
  ``account`` = the e-mail), then P1's ``finish_link`` (claims the invitation, session
  link, ``/status``). A link that cannot be read is removed again and the grant revoked.

The grant never sits in the cookie (only a random handle; a Microsoft token cache would
not fit, and a cookie can be replayed); it lives at most ``GRANT_LIFETIME`` after the
sign-in. Nothing reaches a page, a log line or a URL but the account's e-mail and
calendar names.

What it must not do: store anything before the CSRF check and the flow/handle checks
passed, follow a ``state`` it did not file, or show a provider's error text verbatim.

Start at ``add_routes``, then ``callback``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarUnavailable,
    InputError,
    PbxcalError,
    StoreError,
)
from pbxcal.web import WebContext, context
from pbxcal.web.cookies import PortalSession, check_csrf
from pbxcal.web.portal.flow import call, finish_link, page, require_session
from pbxcal.web.portal.oauth_providers import Account, SignIn, sign_ins
from pbxcal.web.security import RateLimit

log = logging.getLogger(__name__)

#: The cookie with this browser's handle of its pending sign-in or grant (random).
FLOW_COOKIE = "pbxcal_oauth"
#: Callbacks per minute and address (a replayed or guessed callback stays slow).
CALLBACK_PER_MINUTE = 30
#: Seconds a grant may wait for the calendar pick after the sign-in. Shorter than the
#: store's 15 minutes for a flow row, so an unused grant is normally taken and revoked
#: (a row left longer than that can no longer be taken: its grant is not revoked).
GRANT_LIFETIME = 10 * 60
_SIGN_INS = web.AppKey("pbxcal.web.oauth.sign_ins", dict)
_LIMIT = web.AppKey("pbxcal.web.oauth.limit", RateLimit)
#: The handle cookie lives as long as the store keeps a flow row takeable.
_HANDLE_SECONDS = 15 * 60
_STAGE_SIGN_IN = "sign-in"
_STAGE_GRANT = "grant"


def add_routes(app: web.Application, ctx: WebContext) -> None:
    """The four routes of the module docstring, for every configured provider."""
    app[_SIGN_INS] = sign_ins(ctx.config)
    app[_LIMIT] = RateLimit(CALLBACK_PER_MINUTE)
    app.router.add_post("/oauth/{provider}/start", start)
    app.router.add_get("/oauth/{provider}/callback", callback)
    app.router.add_get("/oauth/{provider}/calendars", show_calendars)
    app.router.add_post("/oauth/{provider}/calendars", pick_calendar)


def sign_in_origins(config: Any) -> list[str]:
    """Origins the portal's pages send forms to through a sign-in redirect (CSP
    ``form-action``): Google's ``auth_uri`` from the client file, the Microsoft
    authority host. Unreadable client files give nothing (the start page says why)."""
    from urllib.parse import urlsplit

    from pbxcal.calendars.google.web_flow import GOOGLE_AUTH_URI, read_web_client

    origins: list[str] = []
    portal = getattr(config, "portal", None)
    if portal is None:
        return origins
    if portal.google is not None:
        try:
            from pathlib import Path

            auth_uri = read_web_client(Path(portal.google.client_file)).auth_uri
        except PbxcalError:
            auth_uri = GOOGLE_AUTH_URI
        parts = urlsplit(auth_uri)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    if portal.microsoft is not None:
        host = portal.microsoft.authority_host or "https://login.microsoftonline.com"
        parts = urlsplit(host if "//" in host else f"https://{host}")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


# -- handlers ------------------------------------------------------------------------------


async def start(request: web.Request) -> web.StreamResponse:
    """Begin a sign-in (also "not you?": a waiting grant is revoked first)."""
    session = await require_session(request)
    await check_csrf(request, session)
    sign_in = _sign_in(request)
    if sign_in is None:
        return _problem(request, session, "provider", status=404)
    ctx = context(request)
    refused = await _invitation_refused(request, session)
    if refused is not None:
        return refused
    await _discard_waiting_grant(request, session)
    redirect_uri = f"{_public_url(ctx)}/oauth/{sign_in.name}/callback"
    try:
        begun = await sign_in.begin(redirect_uri)
    except PbxcalError as exc:
        return _calendar_problem(request, session, sign_in, exc)
    browser = secrets.token_urlsafe(32)
    flow = {"stage": _STAGE_SIGN_IN, "flow": begun.flow, "browser": _digest(browser)}
    await call(
        ctx.store.add_flow, _digest(begun.state), session.invitation_id, sign_in.name,
        json.dumps(flow).encode(),
    )  # fmt: skip
    response = _see_other(begun.url)
    _set_handle(request, response, browser)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """The provider sends the browser back here with ``code`` and ``state``."""
    if not request.app[_LIMIT].allow(request):
        return page(request, "oauth_problem.html", None, status=429, problem="rate",
                    provider_label="", provider_name="", detail="")  # fmt: skip
    session = await require_session(request)
    sign_in = _sign_in(request)
    if sign_in is None:
        return _problem(request, session, "provider", status=404)
    query = {key: value for key, value in request.query.items() if len(value) <= 4096}
    state = query.get("state", "")
    if not state:
        return _problem(request, session, "state", status=400, provider=sign_in)
    ctx = context(request)
    taken = await call(ctx.store.take_flow, _digest(state), ctx.clock.now())
    flow = _opened(taken, session, sign_in, _STAGE_SIGN_IN, request)
    if flow is None:
        log.info("portal: %s callback with an unknown, used, expired or foreign state",
                 sign_in.name)  # fmt: skip
        return _problem(request, session, "state", status=400, provider=sign_in)
    if query.get("error"):
        denied = query["error"] == "access_denied"
        return _problem(request, session, "denied" if denied else "refused", status=403,
                        provider=sign_in, detail=_word(query["error"]))  # fmt: skip
    try:
        grant = await sign_in.finish(flow["flow"], query)
    except PbxcalError as exc:
        return _calendar_problem(request, session, sign_in, exc)
    try:
        account = await sign_in.account(grant)
    except PbxcalError as exc:
        await _discard(sign_in, grant)
        return _calendar_problem(request, session, sign_in, exc)
    response = _see_other(f"/oauth/{sign_in.name}/calendars")
    await _keep_grant(request, response, session, sign_in, account, _now(ctx))
    return response


async def show_calendars(request: web.Request) -> web.StreamResponse:
    """Whose account it is, and its calendars to pick from."""
    session = await require_session(request)
    sign_in = _sign_in(request)
    if sign_in is None:
        return _problem(request, session, "provider", status=404)
    waiting = await _take_grant(request, session, sign_in)
    if waiting is None:
        return _problem(request, session, "expired", status=410, provider=sign_in)
    _, account, signed_in = waiting
    response = _calendars_page(request, session, sign_in, account)
    await _keep_grant(request, response, session, sign_in, account, signed_in)
    return response


async def pick_calendar(request: web.Request) -> web.StreamResponse:
    """Link the picked calendar (checked by reading it once), then the status page."""
    session = await require_session(request)
    form = await check_csrf(request, session)
    sign_in = _sign_in(request)
    if sign_in is None:
        return _problem(request, session, "provider", status=404)
    waiting = await _take_grant(request, session, sign_in)
    if waiting is None:
        return _problem(request, session, "expired", status=410, provider=sign_in)
    _, account, signed_in = waiting
    chosen = form.get("calendar", "")
    if chosen not in {entry.id for entry in account.calendars}:
        response = _calendars_page(request, session, sign_in, account, status=400,
                                   error="choose")  # fmt: skip
        await _keep_grant(request, response, session, sign_in, account, signed_in)
        return response
    refused = await _invitation_refused(request, session)
    if refused is not None:
        await _discard(sign_in, account.grant)
        return refused
    ctx = context(request)
    new = sign_in.link(account.grant, chosen, account.email)
    from pbxcal.admin.operations import add_checked_link

    try:
        link = await call(
            add_checked_link, ctx.store, ctx.config, pbx=session.pbx,
            extension=session.extension, provider=new.provider, source=new.source,
            settings=new.settings, secret_kind=new.secret_kind, secret=new.secret,
        )  # fmt: skip
    except (InputError, StoreError) as exc:
        await _discard(sign_in, account.grant)
        return _problem(request, session, "link", status=400, provider=sign_in,
                        detail=_one_line(exc))  # fmt: skip
    finished = await finish_link(request, session, link)
    _clear_handle(request, finished)
    return finished


async def _invitation_refused(request: web.Request, session: PortalSession) -> web.Response | None:
    """P1's page for an invitation used or expired since the session began; else None."""
    ctx = context(request)
    invitation = await call(ctx.store.get_invitation, session.invitation_id)
    if invitation is None or invitation.used_at is not None:
        reason = "used" if invitation is not None else "unknown"
    elif ctx.clock.now() >= invitation.expires_at:
        reason = "expired"
    else:
        return None
    return page(request, "invitation_refused.html", session, status=410, reason=reason)


# -- the flow rows -------------------------------------------------------------------------


def _opened(
    taken: Any, session: PortalSession, sign_in: SignIn, stage: str, request: web.Request
) -> dict[str, Any] | None:
    """The flow's JSON when it is this session's, this provider's, this stage's and this
    browser's; else None (the row is used up either way)."""
    if taken is None or taken.provider != sign_in.name:
        return None
    if taken.invitation_id != session.invitation_id:
        return None
    try:
        flow = json.loads(taken.plaintext)
    except ValueError:
        return None
    handle = request.cookies.get(FLOW_COOKIE, "")
    if not isinstance(flow, dict) or flow.get("stage") != stage or not handle:
        return None
    if not hmac.compare_digest(str(flow.get("browser", "")), _digest(handle)):
        return None
    return flow


async def _keep_grant(
    request: web.Request, response: web.StreamResponse, session: PortalSession,
    sign_in: SignIn, account: Account, signed_in: float,
) -> None:
    """File the grant under a fresh handle (sealed) and put the handle in the cookie."""
    handle = secrets.token_urlsafe(32)
    row = {
        "stage": _STAGE_GRANT, "browser": _digest(handle), "grant": account.grant,
        "email": account.email, "signed_in": signed_in,
        "calendars": [list(entry) for entry in account.calendars],
    }  # fmt: skip
    ctx = context(request)
    await call(
        ctx.store.add_flow, _grant_key(handle), session.invitation_id, sign_in.name,
        json.dumps(row).encode(),
    )  # fmt: skip
    _set_handle(request, response, handle)


async def _take_grant(
    request: web.Request, session: PortalSession, sign_in: SignIn | None
) -> tuple[SignIn, Account, float] | None:
    """The grant waiting for a pick in this browser (taken: file it again to keep it).
    ``sign_in`` None: whichever provider's it is (its grant is revoked when it is not
    ``sign_in``'s: a grant is never dropped without telling the provider)."""
    from pbxcal.calendars.google.calendars import CalendarEntry

    handle = request.cookies.get(FLOW_COOKIE, "")
    if not handle or len(handle) > 100:
        return None
    ctx = context(request)
    taken = await call(ctx.store.take_flow, _grant_key(handle), ctx.clock.now())
    owner = request.app[_SIGN_INS].get(taken.provider) if taken is not None else None
    if owner is None:
        return None
    row = _opened(taken, session, owner, _STAGE_GRANT, request)
    if row is None:
        return None
    signed_in = float(row.get("signed_in", 0))
    account = Account(
        str(row["email"]),
        [CalendarEntry(str(i), str(s), bool(p)) for i, s, p in row.get("calendars", [])],
        dict(row["grant"]),
    )
    too_old = _now(ctx) - signed_in > GRANT_LIFETIME
    if too_old or (sign_in is not None and owner.name != sign_in.name):
        await _discard(owner, account.grant)
        return None
    return owner, account, signed_in


async def _discard_waiting_grant(request: web.Request, session: PortalSession) -> None:
    """Drop (and revoke) a grant this browser still holds, whichever provider's."""
    waiting = await _take_grant(request, session, None)
    if waiting is not None:
        owner, account, _ = waiting
        await _discard(owner, account.grant)
        log.info("portal: a %s grant waiting for a calendar pick was discarded", owner.name)


async def _discard(sign_in: SignIn, grant: Mapping[str, Any]) -> None:
    """Revoke ``grant`` at the provider; a failure is logged (nothing keeps it here)."""
    try:
        await sign_in.discard(grant)
    except PbxcalError as exc:
        log.warning("portal: %s grant could not be revoked: %s", sign_in.name, _one_line(exc))


# -- pages and small parts -----------------------------------------------------------------


def _calendars_page(
    request: web.Request, session: PortalSession, sign_in: SignIn, account: Account,
    *, status: int = 200, error: str = "",
) -> web.Response:
    return page(
        request, "oauth_calendars.html", session, status=status,
        provider_name=sign_in.name, provider_label=sign_in.label, email=account.email,
        calendars=account.calendars, error=error,
    )  # fmt: skip


def _problem(
    request: web.Request, session: PortalSession | None, problem: str, *, status: int,
    provider: SignIn | None = None, detail: str = "",
) -> web.Response:
    """The clear page of a refused step (nothing was stored)."""
    return page(
        request, "oauth_problem.html", session, status=status, problem=problem,
        provider_name=provider.name if provider else "",
        provider_label=provider.label if provider else "", detail=detail,
    )  # fmt: skip


def _calendar_problem(
    request: web.Request, session: PortalSession, sign_in: SignIn, exc: PbxcalError
) -> web.Response:
    log.info("portal: %s sign-in failed: %s", sign_in.name, _one_line(exc))
    if isinstance(exc, CalendarUnavailable):
        return _problem(request, session, "unavailable", status=503, provider=sign_in)
    if isinstance(exc, CalendarError) and not isinstance(
        exc, (CalendarAuthFailed, CalendarNeedsRelink)
    ):  # the answer does not belong to this sign-in
        return _problem(request, session, "state", status=400, provider=sign_in)
    return _problem(request, session, "refused", status=403, provider=sign_in,
                    detail=_one_line(exc))  # fmt: skip


def _sign_in(request: web.Request) -> SignIn | None:
    found: SignIn | None = request.app[_SIGN_INS].get(request.match_info["provider"])
    return found


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _now(ctx: WebContext) -> float:
    return ctx.clock.now().timestamp()


def _public_url(ctx: WebContext) -> str:
    assert ctx.config.portal is not None  # the portal's routes exist only with [portal]
    return ctx.config.portal.public_url.rstrip("/")


def _set_handle(request: web.Request, response: web.StreamResponse, handle: str) -> None:
    response.set_cookie(
        FLOW_COOKIE, handle, path="/oauth/", httponly=True, samesite="Lax",
        secure=context(request).templates.secure_cookies, max_age=_HANDLE_SECONDS,
    )  # fmt: skip


def _clear_handle(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        FLOW_COOKIE, path="/oauth/", httponly=True, samesite="Lax",
        secure=context(request).templates.secure_cookies,
    )  # fmt: skip


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _grant_key(handle: str) -> str:
    return _digest(f"grant:{handle}")


def _word(value: str) -> str:
    ok = value.isascii() and value.replace("_", "").isalnum() and len(value) <= 40
    return value if ok else "?"


def _one_line(exc: BaseException) -> str:
    from pbxcal.admin.operations import shown_message

    return shown_message(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
