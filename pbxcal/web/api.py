"""The admin API (``/api/v1``): invitations and links as JSON, described by ``openapi.json``.

What it does: ``add_routes(app, ctx)`` registers the routes of the checked-in OpenAPI
3.1 document (``pbxcal/web/openapi.json``; a unit test fails when the two disagree).
Every call but ``GET /api/v1/openapi.json`` needs ``Authorization: Bearer <token>``
(``pbxcal admin-token create``; ``admin.tokens.authenticate``). A token scoped to PBXes
sees only their links and invitations: anything else is 404, exactly like a link that
does not exist, so a reseller cannot probe other tenants' ids. Every call, refused or
not, is one line in the audit log (actor = the token's name, the remote address),
queued and committed in batches every 50 ms (``pbxcal.web.audit``: a crash loses at
most that window). Verified tokens are kept 5 s (``admin.tokens.TOKENS``). Errors
are ``{"error": code, "detail": one line}``, also for unknown paths and methods under
``/api/v1`` and for bodies that are too large (``json_errors`` middleware).

Handlers are thin: they check the input against the document's rules, then call the
operation the CLI calls too (``pbxcal.admin.operations``/``invitations``) in a worker
thread (the store is blocking).

What it must not do: answer a secret (a link's source is redacted, an invitation's URL
is shown only in the answer that created it), or reveal whether an out-of-scope link
exists.

Start reading at ``add_routes``, then ``_call``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from pbxcal.admin import operations
from pbxcal.admin.invitations import create_invitation, invitation_record, mail_invitation
from pbxcal.admin.operations import LinkNotFound, LinkOverview
from pbxcal.admin.tokens import TOKENS, in_scope
from pbxcal.errors import InputError, StoreError
from pbxcal.store.portal import AdminToken
from pbxcal.web import WebContext
from pbxcal.web.audit import AuditWriter

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
_LINK_ID_MAX = 2**31 - 1
_EXTENSION = re.compile(r"[0-9]{1,15}")
_EMAIL = re.compile(r"[!-?A-~]+@[!-?A-~]+\.[!-?A-~]+")
_INVITATION_FIELDS = frozenset({"pbx", "extension", "email", "language"})

#: A handler of one operation, called with the authenticated request.
Handler = Callable[["_Call"], Awaitable[web.Response]]


class ApiError(Exception):
    """An answer other than success: status, code, one line."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class _Call:
    """One authenticated request: the token, its scope and the context."""

    def __init__(self, request: web.Request, ctx: WebContext, token: AdminToken) -> None:
        self.request = request
        self.ctx = ctx
        self.token = token
        self.pbxes = token.pbxes  # None: every PBX
        self.target = "-"
        self.detail: dict[str, Any] = {}

    def link_id(self) -> int:
        raw = self.request.match_info["link_id"]
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _LINK_ID_MAX:
            raise ApiError(400, "bad-request", "the link id must be a whole number from 1")
        self.target = f"link:{int(raw)}"
        return int(raw)

    def now(self) -> datetime:
        return self.ctx.clock.now()


def openapi_document() -> dict[str, Any]:
    """The checked-in OpenAPI document."""
    return dict(_document())


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    return loaded


def routes() -> list[tuple[str, str, str, Handler]]:
    """(method, path, action, handler) of every operation of the API."""
    from pbxcal.booking.api import routes as booking_routes

    link = f"{PREFIX}/links/{{link_id}}"
    return [
        ("POST", f"{PREFIX}/invitations", "invitation.create", _create_invitation),
        ("GET", f"{PREFIX}/invitations", "invitation.list", _list_invitations),
        ("GET", f"{PREFIX}/links", "link.list", _list_links),
        ("GET", link, "link.show", _show_link),
        ("DELETE", link, "link.delete", _delete_link),
        ("GET", f"{link}/sync-log", "link.sync-log", _sync_log),
        ("POST", f"{link}/sync", "link.sync", _sync_link),
        ("POST", f"{link}/enable", "link.enable", _enable_link),
        ("POST", f"{link}/disable", "link.disable", _disable_link),
        ("GET", f"{PREFIX}/cluster", "cluster.status", _cluster_status),
        *booking_routes(PREFIX),
    ]


def add_routes(app: web.Application, ctx: WebContext) -> None:
    """Register the admin API on ``app`` (the internal listener)."""
    app.middlewares.append(json_errors)
    app.router.add_get(f"{PREFIX}/openapi.json", _serve_document, allow_head=False)
    audit = AuditWriter(ctx.store, ctx.metrics.registry)
    app.on_startup.append(audit.start)
    app.on_cleanup.append(audit.close)  # the queued lines are committed on shutdown
    for method, path, action, handler in routes():
        app.router.add_route(method, path, _authenticated(ctx, action, handler, audit))


async def _serve_document(_: web.Request) -> web.Response:
    return web.json_response(_document())


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413) and unexpected errors under ``/api/v1`` as
    JSON errors."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status, "bad-request"
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, code, exc.reason, headers)
    except Exception:  # the last line of defence: still one JSON line, never a traceback
        log.exception("admin API %s %s failed", request.method, request.path)
        return _error(500, "internal", "an unexpected error; the service log has the details")


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _authenticated(
    ctx: WebContext, action: str, handler: Handler, audit: AuditWriter
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        remote = request.remote
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        token = None
        try:
            if scheme.lower() == "bearer" and presented.strip():
                token = TOKENS.cached(ctx.store, presented.strip()) or await asyncio.to_thread(
                    TOKENS.authenticate, ctx.store, presented.strip(), ctx.clock.now()
                )
            if token is None:
                _audit(audit, "-", "auth.refused", request.path, {"action": action}, remote)
                return _error(
                    401,
                    "unauthorized",
                    "give a valid admin token: Authorization: Bearer <token>",
                    {"WWW-Authenticate": 'Bearer realm="pbxcal admin"'},
                )
            call = _Call(request, ctx, token)
            try:
                response = await handler(call)
            except ApiError as exc:
                response = _error(exc.status, exc.code, exc.detail)
            except LinkNotFound as exc:
                response = _error(404, "not-found", str(exc))
            except InputError as exc:
                response = _error(400, "bad-request", operations.shown_message(str(exc)))
            detail = {**call.detail, "status": response.status}
            _audit(audit, token.name, action, call.target, detail, remote)
            return response
        except StoreError as exc:
            log.warning("admin API %s: %s", action, exc)
            return _error(503, "store-unavailable", "the store cannot be used right now")

    return handle


def _audit(
    audit: AuditWriter,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any],
    remote: str | None,
) -> None:
    from pbxcal.core.redact import printable

    audit.record(
        printable(actor)[:100],
        action,
        printable(target)[:200],
        detail,
        printable(remote)[:100] if remote else None,
    )


# -- invitations ---------------------------------------------------------------------------


async def _create_invitation(call: _Call) -> web.Response:
    ctx = call.ctx
    body = await _json_object(call.request)
    unknown = sorted(set(body) - _INVITATION_FIELDS)
    if unknown:
        raise ApiError(400, "bad-request", f"unknown field {unknown[0]!r}")
    pbx = _string(body, "pbx", required=True, max_length=64)
    extension = _string(body, "extension", required=True, max_length=15)
    assert pbx is not None and extension is not None
    if not pbx:
        raise ApiError(400, "bad-request", "pbx must not be empty")
    if not _EXTENSION.fullmatch(extension):
        raise ApiError(400, "bad-request", "extension must be 1-15 digits")
    email = _string(body, "email", max_length=254)
    if email is not None and not _EMAIL.fullmatch(email):
        raise ApiError(400, "bad-request", "email is not an e-mail address")
    language = _string(body, "language", max_length=2)
    if language is not None and language not in ("en", "nl"):
        raise ApiError(400, "bad-request", "language must be en or nl")
    call.target = f"pbx:{pbx}"
    if not in_scope(call.token, pbx) or pbx not in ctx.config.pbxes:
        raise ApiError(404, "not-found", "no such PBX")
    call.target = f"pbx:{pbx}/extension:{extension}"
    if ctx.config.portal is None:
        raise ApiError(409, "conflict", "the customer portal is off ([portal] public_url)")
    try:
        operations.checked_target(ctx.config, pbx, extension)
    except InputError as exc:
        raise ApiError(404, "not-found", operations.shown_message(str(exc))) from None
    invitation, url = await asyncio.to_thread(
        create_invitation,
        ctx.store,
        ctx.config,
        pbx,
        extension,
        email=email,
        created_by=f"api:{call.token.name}",
    )
    call.target = f"invitation:{invitation.id}"
    emailed, mail_error = False, None
    if email is not None:
        emailed, mail_error = await mail_invitation(ctx.config, email, url, language, ctx.mailer)
        if mail_error:
            log.warning("invitation %d not e-mailed: %s", invitation.id, mail_error)
    call.detail = {"pbx": pbx, "extension": extension, "emailed": emailed}
    answer = {
        "invitation": invitation_record(invitation, call.now()),
        "url": url,
        "emailed": emailed,
        "mail_error": mail_error,
    }
    return web.json_response(answer, status=201)


async def _list_invitations(call: _Call) -> web.Response:
    found = await asyncio.to_thread(call.ctx.store.list_invitations, call.pbxes)
    now = call.now()
    return web.json_response({"invitations": [invitation_record(i, now) for i in found]})


# -- the processes sharing the store --------------------------------------------------------


async def _cluster_status(call: _Call) -> web.Response:
    read = call.ctx.cluster_status
    if read is None:
        raise ApiError(404, "not-found", "an SQLite store serves one process: there is no cluster")
    if call.pbxes is not None:  # hosts and every PBX's lease: not a tenant's business
        raise ApiError(404, "not-found", "the cluster is shown to tokens without a PBX scope")
    return web.json_response(await asyncio.to_thread(read))


# -- links ---------------------------------------------------------------------------------


async def _list_links(call: _Call) -> web.Response:
    ctx = call.ctx
    parser_for = ctx.sync.reconciler.parser_for if ctx.sync is not None else None
    found = await asyncio.to_thread(
        operations.link_overviews,
        ctx.store,
        ctx.config,
        call.now(),
        pbxes=call.pbxes,
        parser_for=parser_for,
    )
    return web.json_response({"links": [_link_json(o, call.now()) for o in found]})


async def _show_link(call: _Call) -> web.Response:
    ctx = call.ctx
    link_id = call.link_id()
    parser = None
    if ctx.sync is not None:
        link = await asyncio.to_thread(operations.visible_link, ctx.store, link_id, call.pbxes)
        parser = ctx.sync.reconciler.parser_for(link.pbx)
    overview = await asyncio.to_thread(
        operations.link_overview,
        ctx.store,
        ctx.config,
        link_id,
        call.now(),
        pbxes=call.pbxes,
        parser=parser,
    )
    return web.json_response(_link_json(overview, call.now()))


async def _sync_log(call: _Call) -> web.Response:
    link_id = call.link_id()
    raw = call.request.query.getall("limit", [])
    limit = 20
    if raw:
        value = raw[-1]
        if len(raw) > 1 or not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 200:
            raise ApiError(400, "bad-request", "limit must be one whole number from 1 to 200")
        limit = int(value)
    entries = await asyncio.to_thread(
        operations.sync_log, call.ctx.store, link_id, limit, pbxes=call.pbxes
    )
    return web.json_response(
        {
            "link_id": link_id,
            "entries": [
                {
                    "at": _when(e.at),
                    "result": e.result,
                    "accepted": e.accepted,
                    "rejected": e.rejected,
                    "message": e.message,
                }
                for e in entries
            ],
        }
    )


async def _sync_link(call: _Call) -> web.Response:
    link_id = call.link_id()
    queued = await asyncio.to_thread(
        operations.request_sync, call.ctx.store, call.ctx.sync, link_id, pbxes=call.pbxes
    )
    if not queued:
        raise ApiError(409, "conflict", "the link is disabled, or no service runs in this process")
    return web.json_response({"link_id": link_id, "queued": True}, status=202)


async def _enable_link(call: _Call) -> web.Response:
    return await _set_active(call, True)


async def _disable_link(call: _Call) -> web.Response:
    return await _set_active(call, False)


async def _set_active(call: _Call, active: bool) -> web.Response:
    ctx = call.ctx
    link_id = call.link_id()
    await asyncio.to_thread(
        operations.set_link_active, ctx.store, link_id, active, pbxes=call.pbxes
    )
    overview = await asyncio.to_thread(
        operations.link_overview, ctx.store, ctx.config, link_id, call.now(), pbxes=call.pbxes
    )
    return web.json_response(_link_json(overview, call.now()))


async def _delete_link(call: _Call) -> web.Response:
    ctx = call.ctx
    link_id = call.link_id()
    removal = await asyncio.to_thread(
        operations.remove_link, ctx.store, ctx.config, link_id, pbxes=call.pbxes
    )
    call.detail = {"revoked": removal.revoked}
    return web.json_response({"removed": link_id, "revoked": removal.revoked, "note": removal.note})


def _link_json(overview: LinkOverview, now: datetime) -> dict[str, Any]:
    from pbxcal.core.redact import printable, redact_url

    link = overview.link

    def forwarding(f: operations.Forwarding) -> dict[str, Any]:
        return {"start": _when(f.start), "end": _when(f.end), "targets": list(f.targets)}

    return {
        "id": link.id,
        "extension": printable(link.extension),
        "pbx": printable(link.pbx),
        "provider": printable(link.provider),
        "source": redact_url(link.source),
        "active": link.active,
        "origin": link.origin,
        "status": overview.status,
        "account": printable(overview.account) if overview.account else None,
        "last_sync": _when(overview.last_sync),
        "last_result": overview.last_result,
        "last_attempt": _when(overview.last_attempt),
        "last_error": overview.last_error,
        "active_forwardings": [forwarding(f) for f in overview.upcoming if f.start <= now],
        "upcoming_forwardings": [forwarding(f) for f in overview.upcoming if f.start > now],
        "ignored": [
            {
                "title": printable(i.title),
                "start": _when(i.start),
                "reason": i.reason,
                "detail": i.detail,
            }
            for i in overview.ignored
        ],
    }


# -- input ---------------------------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad-request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad-request", "the body must be a JSON object")
    return body


def _string(
    body: dict[str, Any], name: str, *, required: bool = False, max_length: int
) -> str | None:
    value = body.get(name)
    if value is None:
        if required or name in body:
            raise ApiError(400, "bad-request", f"{name} is required and must be a string")
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad-request", f"{name} must be a string")
    if len(value) > max_length:
        raise ApiError(400, "bad-request", f"{name} is longer than {max_length} characters")
    return value


def _when(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
