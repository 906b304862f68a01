"""The steps every way of linking shares: the session, the claim of the invitation, the
error pages. P2's OAuth pages use these too.

What it does: ``require_session(request)`` returns the customer's ``PortalSession`` or
raises ``NoSession`` (a 403 page that says to open the invitation link again);
``page(request, name, session, **values)`` renders a page with the session's CSRF field;
``finish_link(request, session, link)`` claims the invitation for a link that
``add_checked_link`` just made (``Store.use_invitation``, atomic) and sends the customer
to ``/status``, or removes that link again and shows "already used" when another browser
claimed the invitation first; ``error_pages`` turns ``CsrfRefused`` and ``NoSession``
into their 403 pages (nothing was changed: both are raised before any work).

What it must not do: keep anything secret in the session, or change anything before
the CSRF check passed.

Start at ``finish_link``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from pbxcal.admin.operations import remove_link
from pbxcal.core.redact import redact_url
from pbxcal.store import Link
from pbxcal.web import context
from pbxcal.web.cookies import (
    CsrfRefused,
    PortalSession,
    csrf_field,
    portal_session,
    set_session,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NoSession(Exception):
    """No (valid) portal session: the customer must open the invitation link again."""


async def require_session(request: web.Request) -> PortalSession:
    session = await portal_session(request)
    if session is None:
        raise NoSession
    return session


def page(
    request: web.Request,
    name: str,
    session: PortalSession | None = None,
    *,
    status: int = 200,
    **values: Any,
) -> web.Response:
    """``name`` in the customer's language, with the CSRF field of ``session``."""
    templates = context(request).templates
    return templates.render(
        request,
        name,
        status=status,
        session=session,
        csrf=csrf_field(session) if session is not None else "",
        **values,
    )


async def finish_link(
    request: web.Request, session: PortalSession, link: Link
) -> web.StreamResponse:
    """Claim the session's invitation for ``link`` and go to the status page."""
    ctx = context(request)
    claimed = await asyncio.to_thread(ctx.store.use_invitation, session.invitation_id, link.id)
    if not claimed:  # another browser linked this invitation first: undo ours
        await asyncio.to_thread(remove_link, ctx.store, ctx.config, link.id)
        return page(request, "invitation_refused.html", None, status=410, reason="used")
    if ctx.links_changed is not None:  # the running service follows the new link now
        await ctx.links_changed()
    if ctx.sync is not None:
        ctx.sync.sync_soon(link.id)
    log.info(
        "portal: link %d added for extension %s on %s (%s)",
        link.id, link.extension, link.pbx, link.provider,
    )  # fmt: skip
    response = see_other("/status")
    set_session(request, response, replace(session, link_id=link.id))
    return response


def calendar_name(link: Link) -> str:
    """The calendar as the customer knows it (no user info or query of a URL)."""
    name = link.settings.get("calendar_name")
    return str(name) if name else redact_url(link.source)


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` (a local path) that a handler returns with its cookies."""
    return web.Response(status=303, headers={"Location": location})


async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an operation: awaited when it is a coroutine function, else in a thread
    (the store and the blocking provider libraries must not hold the event loop)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 pages for a failed CSRF check and for a missing session."""
    try:
        return await handler(request)
    except CsrfRefused as refused:
        log.info("portal: %s %s refused (csrf: %s)", request.method, request.path, refused.why)
        return page(request, "refused.html", None, status=403, why=refused.why)
    except NoSession:
        return page(request, "refused.html", None, status=403, why="no-session")
