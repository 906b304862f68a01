"""The daemon's HTTP server: every route grouped by the address it listens on.

What it does: ``WebServer`` builds one aiohttp application per listen address and runs
them. Two groups of routes:

* **internal** on ``[admin] listen`` (default ``[http] listen``): ``/metrics``,
  ``/healthz``, ``/readyz`` and the admin API (``/api/v1``);
* **public** on ``[portal] listen`` (default ``[http] listen``): the customer portal
  (``/i/...``, ``/link/...``, ``/status``, ``/unlink``, ``/oauth/...``, ``/static``) and
  the providers' webhooks (``POST /webhooks/<provider>``).

When both addresses are the same (the default: everything on ``[http] listen``) they
are one site. Without ``[portal]`` there are no customer pages and the webhooks stay
on ``[http] listen`` as before. Every answer gets the security headers of
``security.security_headers``.

``/healthz`` answers 200 while the reconciler loop has ticked recently (a stuck loop
turns it 503); ``/readyz`` answers 200 once the daemon is ready and every PBX is
connected, 503 with the reason otherwise. Both return a small JSON body. A webhook
body over 64 KiB is refused (Google's notifications have none, Graph's are small).

What it must not do: put the admin API on the portal's address when they differ, or
start the portal without a key ring (its cookie and the customers' credentials are
sealed with it).

Start at ``WebServer.start``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pbxcal.config import Config
from pbxcal.errors import ConfigError
from pbxcal.service.clock import Clock, SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.service.sync import CalendarSync
from pbxcal.store import KeyRing, Store
from pbxcal.web import CONTEXT, WebContext
from pbxcal.web.cookies import CookieSealer, secure_cookies
from pbxcal.web.cookies import install as install_cookies
from pbxcal.web.i18n import Templates
from pbxcal.web.security import security_headers

log = logging.getLogger(__name__)

#: () -> (ok, details)
Probe = Callable[[], tuple[bool, dict[str, object]]]
#: a provider's notification -> the answer (at once; the work happens outside the request)
Webhook = Callable[[web.Request], Awaitable[web.Response]]
#: A notification or a portal form is small; anything bigger is not one.
MAX_BODY = 64 * 1024
#: Where customers' browsers post sign-in forms to besides this site (CSP form-action).
GOOGLE_SIGN_IN = "https://accounts.google.com"
MICROSOFT_SIGN_IN = "https://login.microsoftonline.com"
#: Modules that add their routes when they exist (the admin API, OAuth sign-in).
API_MODULE = "pbxcal.web.api"
OAUTH_MODULE = "pbxcal.web.portal.oauth"
BOOKING_MODULE = "pbxcal.web.booking"


@dataclass
class Listener:
    """One address and what it serves."""

    address: str
    option: str
    internal: bool = False
    public: bool = False
    app: web.Application | None = None
    runner: web.AppRunner | None = field(default=None, repr=False)


def listeners(config: Config) -> list[Listener]:
    """The listen addresses of ``config``, each with its group(s) of routes."""
    internal = config.admin_listen or config.listen
    internal_option = "[admin] listen" if config.admin_listen else "[http] listen"
    portal_listen = config.portal.listen if config.portal is not None else None
    public = portal_listen or config.listen
    public_option = "[portal] listen" if portal_listen else "[http] listen"
    if internal == public:
        return [Listener(internal, internal_option, internal=True, public=True)]
    return [
        Listener(internal, internal_option, internal=True),
        Listener(public, public_option, public=True),
    ]


def form_hosts(config: Config) -> list[str]:
    """Sign-in origins the portal's forms reach through a redirect (CSP ``form-action``):
    the OAuth part's ``sign_in_origins`` (it knows the client file's ``auth_uri``), or
    Google's and Microsoft's public sign-in hosts without it."""
    portal = config.portal
    hosts: list[str] = []
    if portal is None:
        return hosts
    oauth = _optional_module(OAUTH_MODULE)
    origins = getattr(oauth, "sign_in_origins", None)
    if callable(origins):
        return [str(origin) for origin in origins(config)]
    if portal.google is not None:
        hosts.append(GOOGLE_SIGN_IN)
    if portal.microsoft is not None:
        hosts.append(_origin(portal.microsoft.authority_host) or MICROSOFT_SIGN_IN)
    return hosts


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url if "//" in url else f"https://{url}")
    return f"{parts.scheme}://{parts.netloc}"


class WebServer:
    """All of pbxcal's HTTP; see the module docstring."""

    def __init__(
        self,
        config: Config,
        store: Store,
        keys: KeyRing | None,
        metrics: Metrics,
        sync: CalendarSync | None,
        webhooks: Mapping[str, Webhook],
        health: Probe,
        ready: Probe,
        *,
        clock: Clock | None = None,
        links_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.webhooks = dict(webhooks)
        self.health = health
        self.ready = ready
        portal = config.portal
        if portal is not None and keys is None:
            raise ConfigError(
                [
                    f"{config.source}: [portal] needs [secrets] key_file or key_credential "
                    "(customers' credentials and the portal's cookie are encrypted with it)"
                ]
            )
        secure = secure_cookies(portal.public_url) if portal is not None else True
        self.context = WebContext(
            config=config,
            store=store,
            keys=keys,
            sync=sync,
            clock=clock or SystemClock(),
            metrics=metrics,
            templates=Templates(portal.languages if portal else ("en",), secure_cookies=secure),
            links_changed=links_changed,
        )
        self.sealer = CookieSealer(keys, secure=secure) if keys is not None else None
        self.listeners = listeners(config)

    def build(self) -> list[Listener]:
        """Make the application of every listener (``start`` calls this)."""
        for listener in self.listeners:
            listener.app = self._app(listener)
        return self.listeners

    def _app(self, listener: Listener) -> web.Application:
        portal = self.config.portal
        app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[
                security_headers(portal.public_url if portal else None, form_hosts(self.config))
            ],
        )
        app[CONTEXT] = self.context
        if self.sealer is not None:
            install_cookies(app, self.sealer)
        if listener.public:
            for path, handle in self.webhooks.items():
                app.router.add_post(path, handle)
            if portal is not None:
                from pbxcal.web import portal as portal_pages

                portal_pages.add_routes(app, self.context)
                _add_optional_routes(OAUTH_MODULE, app, self.context)
                _add_optional_routes(BOOKING_MODULE, app, self.context)
        if listener.internal:
            app.router.add_get("/metrics", self._metrics)
            app.router.add_get("/healthz", self._probe(self.health))
            app.router.add_get("/readyz", self._probe(self.ready))
            _add_optional_routes(API_MODULE, app, self.context)
        return app

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.context.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(check: Probe) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            ok, details = check()
            return web.json_response({"ok": ok, **details}, status=200 if ok else 503)

        return handler

    async def start(self) -> None:
        """Listen on every address; ``ConfigError`` naming the option when one cannot."""
        try:
            for listener in self.build():
                assert listener.app is not None
                runner = web.AppRunner(listener.app, access_log=None)
                await runner.setup()
                listener.runner = runner
                host, _, port = listener.address.rpartition(":")
                try:
                    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
                except OSError as exc:  # port taken, address not local: the operator acts
                    raise ConfigError(
                        [
                            f"{self.config.source}: {listener.option}: cannot listen on "
                            f"{listener.address}: {exc.strerror or exc}"
                        ]
                    ) from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for listener in self.listeners:
            runner, listener.runner = listener.runner, None
            if runner is not None:
                await runner.cleanup()

    @property
    def addresses(self) -> str:
        """The listen addresses, for the log line ("http on ...")."""
        return ", ".join(listener.address for listener in self.listeners)


def _optional_module(module_name: str) -> Any:
    """The module, or None when that part of the server is not installed."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None


def _add_optional_routes(module_name: str, app: web.Application, ctx: WebContext) -> None:
    """``module.add_routes(app, ctx)`` when that part of the server is installed."""
    module = _optional_module(module_name)
    if module is not None:
        module.add_routes(app, ctx)
