"""The daemon's HTTP listener (loopback by default): /metrics, /healthz, /readyz, and
the providers' webhooks (``POST /webhooks/<provider>``) when push is configured.

``/healthz`` answers 200 while the reconciler loop has ticked recently (a stuck loop
turns it 503); ``/readyz`` answers 200 once the daemon is ready and every PBX is
connected, 503 with the reason otherwise. Both return a small JSON body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pbxcal.service.metrics import Metrics

#: () -> (ok, details)
Probe = Callable[[], tuple[bool, dict[str, object]]]
#: a provider's notification -> the answer (at once; the work happens outside the request)
Webhook = Callable[[web.Request], Awaitable[web.Response]]
#: A notification is small (Google's has no body); anything bigger is not one.
_WEBHOOK_MAX_BODY = 64 * 1024


def build_app(
    metrics: Metrics,
    health: Probe,
    ready: Probe,
    webhooks: Mapping[str, Webhook] | None = None,
) -> web.Application:
    async def get_metrics(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def probe(check: Probe) -> Callable[[web.Request], object]:
        async def handler(_: web.Request) -> web.Response:
            ok, details = check()
            return web.json_response({"ok": ok, **details}, status=200 if ok else 503)

        return handler

    app = web.Application(client_max_size=_WEBHOOK_MAX_BODY)
    for path, handle in (webhooks or {}).items():
        app.router.add_post(path, handle)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", probe(health))  # type: ignore[arg-type]
    app.router.add_get("/readyz", probe(ready))  # type: ignore[arg-type]
    return app


async def start_http(app: web.Application, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    return runner
