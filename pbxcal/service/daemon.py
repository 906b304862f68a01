"""``pbxcal run``: start-up order, readiness, signals and shutdown of the service.

Order on start: config (already validated by the caller) → store (migrations) → links
declared in the config written to the store → last known events restored → every PBX
contacted once (connected, or unreachable and retrying in the background; a refused
login is fatal: it is a configuration error) → HTTP listener → ``READY=1``. Restoring
is cheap: the store keeps every link's expanded instances, so nothing is parsed before
READY. Then three loops run: the reconciler (which also beats the watchdog), the
calendar sync, and a link watcher that polls the store's link counter
(``links_version``) and re-reads the links only when it changed; it also retries
store writes that failed (an unwritable store is reported in ``/readyz`` and the
metrics while the plan in memory keeps being applied).

SIGTERM/SIGINT stop within seconds, whatever is being computed (calendar workers are
abandoned at their next checkpoint), and leave the forwardings as they are (the next
start reconciles them). SIGHUP re-reads the config file: number policy, time zone and
static links take effect at once; PBX connection settings need a restart.

Start reading at ``Daemon.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import timedelta

import httpx

from pbxcal import __version__
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.health import LINK_STATUSES
from pbxcal.calendars.providers import SourceFactory
from pbxcal.cluster.connection import cluster_conninfo, is_postgres_url
from pbxcal.cluster.status import read_status, status_json
from pbxcal.cluster.writers import PbxWriters
from pbxcal.config import Config, load_config
from pbxcal.errors import ConfigError, LeaseLost, PbxAuthFailed, PbxUnavailable, StoreError
from pbxcal.pbx import ForwardingState, Pbx
from pbxcal.pbx.ami import AmiConfig, AmiPbx
from pbxcal.service.clock import Clock, SystemClock
from pbxcal.service.cluster_links import LinkShare
from pbxcal.service.ews_push import EwsPush
from pbxcal.service.metrics import Metrics
from pbxcal.service.notify import SystemdNotifier
from pbxcal.service.push import GOOGLE_WEBHOOK, GRAPH_WEBHOOK, GooglePush, GraphPush
from pbxcal.service.push_keeper import ChannelChanges
from pbxcal.service.reconciler import PbxSettings, Reconciler
from pbxcal.service.store_health import StoreHealth
from pbxcal.service.sync import CalendarSync
from pbxcal.store import Link, Store, load_key_ring
from pbxcal.store.process_lock import ServiceLock, lock_store_for_service
from pbxcal.web.server import Webhook, WebServer

log = logging.getLogger(__name__)

LINK_WATCH_INTERVAL = 5.0
#: The loop-lag probe's period (a timer this late means the loop was blocked).
LOOP_LAG_PROBE = 0.05


class Daemon:
    """The running service. See the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        store_url: str,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.store_url = store_url
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.metrics = Metrics()
        self.pbxes: dict[str, AmiPbx] = {}
        self.ready = False
        self._stop = asyncio.Event()
        self._last_tick = time.monotonic()
        self._tick_limit = 30.0
        self._last_beat = float("-inf")
        self._beat_every = 1.0
        self._last_status = ""
        self.store_health = StoreHealth(self.metrics)
        self._links_version: int | None = None
        #: PBX -> (lease epoch the changes were sent under, the changes) not stored yet
        self._unsaved_applied: dict[str, tuple[int | None, dict[str, tuple[str, ...]]]] = {}
        #: several processes on one PostgreSQL store (None with SQLite): pbxcal.cluster
        self.writers: PbxWriters | None = None
        self.link_share: LinkShare | None = None
        self._service_lock: ServiceLock | None = None
        self._disabled: Counter[str] = Counter()
        self._providers_seen: set[str] = set()
        self.push: GooglePush | None = None
        self.graph_push: GraphPush | None = None
        self.ews_push: EwsPush | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        keys = load_key_ring(self.config.secrets_key_file, self.config.secrets_key_credential)
        self.keys = keys
        self.store = await asyncio.to_thread(Store.open, self.store_url, keys)
        try:
            # one service per SQLite store (kept for the process's life; PostgreSQL: None)
            self._service_lock = lock_store_for_service(self.store_url)
            await self._run()
        finally:
            await asyncio.to_thread(self.store.close)

    async def _run(self) -> None:
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        await self._sync_config_links()
        self._links_version = await asyncio.to_thread(self.store.links_version)
        links = await asyncio.to_thread(self.store.list_links)
        for pbx_config in self.config.pbxes.values():
            self.pbxes[pbx_config.name] = AmiPbx(
                AmiConfig.from_config(pbx_config), on_action=self.metrics.observe_ami_action
            )
        watchdog = self.notifier.watchdog_interval
        tick = min(10.0, watchdog / 2) if watchdog else 10.0
        self._tick_limit = max(3 * tick, 15.0)
        self._beat_every = min(1.0, watchdog / 4) if watchdog else 1.0
        written: dict[str, Pbx] = dict(self.pbxes)
        if is_postgres_url(self.store_url):  # one writer per PBX among the processes
            cluster = self.config.cluster
            self.writers = PbxWriters(
                self.pbxes, cluster_conninfo(self.store_url),
                ttl=cluster.ttl, margin=cluster.margin, settle=cluster.settle,
            )  # fmt: skip
            written = dict(self.writers.fenced)
        self.reconciler = Reconciler(
            written,
            self.config.policy,
            self.clock,
            self.metrics,
            horizon=timedelta(days=self.config.horizon_days),
            on_tick=self._on_tick,
            tick_interval=tick,
            on_applied=self._save_applied,
            settings={
                name: PbxSettings(
                    extensions=pbx.extensions,
                    discover_extensions=pbx.discover_extensions,
                    readback_interval=timedelta(seconds=pbx.readback_interval),
                )
                for name, pbx in self.config.pbxes.items()
            },
        )
        if self.writers is not None:
            self._watch_cluster(self.writers)
        for name, pbx in self.pbxes.items():
            pbx.on_connected.append(self._connected_callback(name))
            pbx.on_disconnected.append(self._disconnected_callback(name))
        async with httpx.AsyncClient(
            timeout=self.config.sync_timeout, follow_redirects=True
        ) as client:
            self.provider_calls = BlockingCalls()
            self.sync = CalendarSync(
                self.store,
                self.reconciler,
                self.metrics,
                self.clock,
                self.config,
                client,
                store_health=self.store_health,
                source_factory=SourceFactory(
                    client,
                    self.config.max_calendar_bytes,
                    self.provider_calls,
                    self.store.load_secret,
                    timeout=self.config.sync_timeout,
                    allow_networks=self.config.portal.allow_networks if self.config.portal else (),
                ),
            )
            if self.config.public_url:
                self.push = GooglePush(self.sync, self.config.public_url, self.metrics, self.clock)
                self.graph_push = GraphPush(
                    self.sync, self.config.public_url, self.metrics, self.clock
                )
                google, graph = self.push, self.graph_push

                def sources_changed() -> None:
                    google.links_changed()
                    graph.links_changed()

                self.sync.on_sources_changed = sources_changed
            # EWS streaming needs no public URL: the connection goes out from pbxcal
            ews_push = self.ews_push = EwsPush(self.sync, self.metrics, self.clock)
            others = self.sync.on_sources_changed

            def sources_changed_ews() -> None:
                if others is not None:
                    others()
                ews_push.links_changed()

            self.sync.on_sources_changed = sources_changed_ews
            if self.writers is not None:
                self.link_share = LinkShare(
                    cluster_conninfo(self.store_url, application_name="pbxcal-listen"),
                    self.store, self.sync, self.writers.member_id,
                    backstop=self.config.sync_interval,
                )  # fmt: skip
                self.writers.keeper.on_members = self.link_share.members_changed
            active = [link for link in links if link.active]
            await self.sync.restore(active)
            self.sync.set_links(active)
            self._count_links(links)
            await self._first_contact()
            web_server = WebServer(
                self.config, self.store, self.keys, self.metrics, self.sync, self._webhooks(),
                self._health, self._readiness, clock=self.clock,
                links_changed=self._refresh_links,
            )  # fmt: skip
            if self.writers is not None:  # GET /api/v1/cluster
                conninfo = cluster_conninfo(self.store_url, application_name="pbxcal-api")
                web_server.context.cluster_status = lambda: status_json(read_status(conninfo))
            await web_server.start()  # ConfigError naming the option when it cannot listen
            tasks = [
                asyncio.create_task(self.reconciler.run(), name="reconciler"),
                asyncio.create_task(self.sync.run(), name="calendar-sync"),
                asyncio.create_task(self._watch_links(), name="link-watch"),
                asyncio.create_task(self._watch_loop_lag(), name="loop-lag"),
            ]
            if self.push is not None and self.graph_push is not None:
                tasks.append(asyncio.create_task(self.push.run(), name="google-push"))
                tasks.append(asyncio.create_task(self.graph_push.run(), name="graph-push"))
                if self.writers is not None:  # rows written by other processes: NOTIFY
                    changes = ChannelChanges(
                        cluster_conninfo(self.store_url, application_name="pbxcal-push"),
                        [self.push, self.graph_push],
                    )
                    tasks.append(asyncio.create_task(changes.run(), name="push-listen"))
            tasks.append(asyncio.create_task(ews_push.run(), name="ews-push"))
            from pbxcal.booking.reminders import reminder_loop

            tasks.append(
                asyncio.create_task(
                    reminder_loop(web_server.context, self._stop), name="booking-reminders"
                )
            )
            if self.writers is not None and self.link_share is not None:
                tasks.append(asyncio.create_task(self.writers.run(), name="lease-keeper"))
                tasks.append(asyncio.create_task(self.link_share.run(), name="link-listen"))
            self._install_signals()
            # READY: config, store (every link's last known instances restored) and the
            # first PBX contact are done; the first pass plans and applies from here on.
            self.ready = True
            self._last_status = self.status_line()
            self.notifier.ready(self._last_status)
            log.info(
                "pbxcal %s ready: %s; http on %s",
                __version__,
                self.status_line(),
                web_server.addresses,
            )
            stopper = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            self.notifier.stopping()
            log.info("stopping; forwardings stay as they are until the next start")
            self.sync.stop()
            for push in (self.push, self.graph_push, self.ews_push):  # (they expire anyway)
                if push is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(push.close(), 5.0)
            self.provider_calls.close()
            if isinstance(self.sync.source_factory, SourceFactory):  # customers' guarded client
                await self.sync.source_factory.aclose()
            for task in [stopper, *tasks]:
                task.cancel()
            results = await asyncio.gather(stopper, *tasks, return_exceptions=True)
            if self.writers is not None:  # stop writing, hand the leases back
                await self.writers.close()
            if self.link_share is not None:
                await self.link_share.close()
            await web_server.stop()
            await asyncio.gather(*(pbx.close() for pbx in self.pbxes.values()))
            for task, result in zip([stopper, *tasks], results, strict=True):
                if task in done and isinstance(result, BaseException) and task is not stopper:
                    raise result

    def stop(self) -> None:
        self._stop.set()

    async def _first_contact(self) -> None:
        """Contact every PBX once; a refused login stops the start (config error)."""

        async def contact(name: str, pbx: AmiPbx) -> None:
            try:
                await pbx.start(retry=True)
            except PbxUnavailable as exc:
                log.warning("PBX %s not reachable yet, retrying in the background: %s", name, exc)
            except PbxAuthFailed as exc:
                raise ConfigError([f"[pbx.{name}]: {exc}"]) from exc

        await asyncio.gather(*(contact(n, p) for n, p in self.pbxes.items()))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    async def reload(self) -> None:
        """SIGHUP: re-read the config file; policy, zone and static links apply at once."""
        if not self.config_path:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("SIGHUP: config not reloaded: %s", problem)
            return
        for warning in new.warnings:
            log.warning("SIGHUP: config: %s", warning)
        if new.pbxes != self.config.pbxes:
            log.warning("SIGHUP: [pbx] changes take effect after a restart")
            new = replace(new, pbxes=self.config.pbxes)
        try:
            keys = load_key_ring(new.secrets_key_file, new.secrets_key_credential)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("SIGHUP: keys not reloaded: %s", problem)
        else:
            self.store.use_keys(keys)
        self.config = new
        self.sync.config = new
        self.reconciler.set_policy(new.policy)
        await self._sync_config_links()
        await self._refresh_links()
        log.info("SIGHUP: configuration reloaded from %s", self.config_path)

    # -- loops and callbacks --------------------------------------------------------------

    async def _watch_links(self) -> None:
        """Follow ``pbxcal links`` changes (one cheap query unless something changed)."""
        while True:
            await asyncio.sleep(LINK_WATCH_INTERVAL)
            await self._retry_applied_writes()
            self._count_links()  # health moves with every sync
            try:
                version = await asyncio.to_thread(self.store.links_version)
            except StoreError as exc:
                log.warning("cannot read the links from the store: %s", exc)
                continue
            if version != self._links_version:
                await self._refresh_links(version)

    def _webhooks(self) -> dict[str, Webhook]:
        hooks: dict[str, Webhook] = {}
        if self.push is not None:
            hooks[GOOGLE_WEBHOOK] = self.push.webhook
        if self.graph_push is not None:
            hooks[GRAPH_WEBHOOK] = self.graph_push.webhook
        return hooks

    async def _watch_loop_lag(self) -> None:
        """Measure how long the event loop is blocked (nothing may hold it for long)."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            expected = loop.time() + LOOP_LAG_PROBE
            await asyncio.sleep(LOOP_LAG_PROBE)
            lag = max(0.0, loop.time() - expected)
            self.metrics.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.metrics.loop_lag_max.set(lag)

    async def _refresh_links(self, version: int | None = None) -> None:
        try:
            if version is None:
                version = await asyncio.to_thread(self.store.links_version)
            links = await asyncio.to_thread(self.store.list_links)
        except StoreError as exc:
            log.warning("cannot read the links from the store: %s", exc)
            return
        self._links_version = version
        self.sync.set_links([link for link in links if link.active])
        self._count_links(links)

    async def _sync_config_links(self) -> None:
        try:
            await asyncio.to_thread(self.store.sync_config_links, self._config_link_specs())
        except StoreError as exc:
            if not self.ready:
                raise
            self.store_health.failed("config-links", exc)

    def _count_links(self, links: Sequence[Link] | None = None) -> None:
        """``pbxcal_links{provider, status}``: active links by health, plus disabled ones."""
        if links is not None:
            self._disabled = Counter(link.provider for link in links if not link.active)
        counts = self.sync.health()
        for provider, number in self._disabled.items():
            counts[(provider, "disabled")] += number
        providers = {provider for provider, _ in counts} | self._providers_seen
        self._providers_seen = providers
        for provider in providers:
            for status in LINK_STATUSES:
                self.metrics.links.labels(provider, status).set(counts.get((provider, status), 0))

    def _on_tick(self) -> None:
        # The loop ticks on every wake-up (thousands during a first sync of many links):
        # beat at most every ``_beat_every`` and send STATUS only when it changed, so
        # systemd is not flooded and a full notify socket cannot stall the loop for long.
        now = time.monotonic()
        self._last_tick = now
        if now - self._last_beat >= self._beat_every:
            self._last_beat = now
            self.notifier.watchdog()
        if self.ready:
            status = self.status_line()
            if status != self._last_status:
                self._last_status = status
                self.notifier.status(status)

    def _connected_callback(self, name: str) -> Callable[[], Awaitable[None]]:
        async def connected() -> None:
            self.metrics.ami_connected.labels(name).set(1)
            self.reconciler.pbx_connected(name)

        return connected

    def _disconnected_callback(self, name: str) -> Callable[[], Awaitable[None]]:
        async def disconnected() -> None:
            self.metrics.ami_connected.labels(name).set(0)

        return disconnected

    async def _save_applied(self, pbx: str, changes: ForwardingState) -> None:
        """Record what a PBX now holds (changed rows only); kept for a retry on failure.

        With several processes the record carries the lease epoch the batch was sent
        under (read before any await), so a stale owner's record is refused.
        """
        epoch = self.writers.epoch_for_record(pbx) if self.writers is not None else None
        pending = self._unsaved_applied.get(pbx)
        if pending is not None and pending[0] == epoch:
            self._unsaved_applied[pbx] = (epoch, {**pending[1], **changes})
        else:  # an older epoch's unsaved changes would be refused anyway
            self._unsaved_applied[pbx] = (epoch, dict(changes))
        await self._retry_applied_writes()

    async def _retry_applied_writes(self) -> None:
        for pbx in list(self._unsaved_applied):
            epoch, changes = self._unsaved_applied.pop(pbx)
            try:
                await asyncio.to_thread(
                    self.store.save_applied_changes, pbx, changes, epoch=epoch
                )
            except LeaseLost as exc:  # a newer owner writes (and records) this PBX now
                log.info("PBX %s: applied state not recorded: %s", pbx, exc)
                continue
            except StoreError as exc:
                newer = self._unsaved_applied.get(pbx)
                if newer is None or newer[0] == epoch:
                    merged = {**changes, **(newer[1] if newer else {})}
                    self._unsaved_applied[pbx] = (epoch, merged)
                self.store_health.failed("applied-state", exc)
                return
            self.store_health.succeeded()

    def _watch_cluster(self, writers: PbxWriters) -> None:
        """Owned PBXes converge like a reconnect; leases and members in the metrics."""
        reconciler, metrics = self.reconciler, self.metrics

        def took_over(name: str, previous: str) -> None:
            metrics.lease_takeovers.inc()

        def released(name: str) -> None:
            metrics.leases_lost.inc()

        writers.on_owned = reconciler.pbx_connected
        writers.on_takeover = took_over
        writers.on_released = released
        metrics.cluster_members.set_function(lambda: len(writers.keeper.members))
        metrics.pbx_leases_held.set_function(lambda: len(writers.owned()))

    def _config_link_specs(self) -> list[tuple[str, str, str, str, dict[str, object]]]:
        specs = []
        for link in self.config.links:
            settings: dict[str, object] = {"owner_emails": list(link.owner_emails)}
            if link.timezone:
                settings["timezone"] = link.timezone
            specs.append((link.extension, link.pbx, "ics", link.source, settings))
        return specs

    # -- what operators see ---------------------------------------------------------------

    def status_line(self) -> str:
        connected = sum(1 for pbx in self.pbxes.values() if pbx.connected)
        store = "" if self.store_health.writable else ", STORE NOT WRITABLE"
        return (
            f"{connected}/{len(self.pbxes)} PBX connected, {self.sync.link_count} links, "
            f"{self.reconciler.active_forwardings} forwardings active{store}"
        )

    def _health(self) -> tuple[bool, dict[str, object]]:
        since = time.monotonic() - self._last_tick
        return since < self._tick_limit, {"reconciler_tick_age_seconds": round(since, 3)}

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        down = [name for name, pbx in self.pbxes.items() if not pbx.connected]
        details: dict[str, object] = {
            "status": self.status_line(),
            "pbx_down": down,
            "store_writable": self.store_health.writable,
            "links_not_read_yet": self.reconciler.unknown_links,
        }
        if not self.store_health.writable:
            details["store_error"] = self.store_health.last_error
        return self.ready and not down and self.store_health.writable, details
