"""Every Prometheus metric pbxcal exports (prefix ``pbxcal_``), in one registry.

Labels are bounded: PBX names come from the config, providers, results, reasons and
AMI actions are fixed sets. Nothing is labelled per user, extension or link.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_AMI_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class Metrics:
    """The metric objects, registered in their own registry (so tests can make many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.forwardings_active = Gauge(
            "pbxcal_forwardings_active", "Extensions with a forwarding applied now", registry=r
        )
        self.links = Gauge(
            "pbxcal_links",
            "Calendar links by provider and status (connected, pending, auth_failed, "
            "needs_relink, unreachable, invalid, disabled)",
            ["provider", "status"],
            registry=r,
        )
        self.ami_connected = Gauge(
            "pbxcal_ami_connected",
            "1 while the AMI session to a PBX is logged in",
            ["pbx"],
            registry=r,
        )
        self.forwarding_changes = Counter(
            "pbxcal_forwarding_changes_total",
            "Forwardings set or cleared on a PBX",
            ["change"],
            registry=r,
        )
        self.calendar_syncs = Counter(
            "pbxcal_calendar_syncs_total",
            "Calendar reads by provider and result",
            ["provider", "result"],
            registry=r,
        )
        self.rejected_events = Counter(
            "pbxcal_rejected_events_total",
            "Calendar events that are not forwardings, by reason",
            ["reason"],
            registry=r,
        )
        self.ami_actions = Counter(
            "pbxcal_ami_actions_total",
            "AMI actions by action and result",
            ["action", "result"],
            registry=r,
        )
        self.boundary_lag = Histogram(
            "pbxcal_boundary_lag_seconds",
            "Time a forwarding change was applied minus the boundary it served",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.sync_duration = Histogram(
            "pbxcal_sync_duration_seconds",
            "Duration of one calendar read",
            ["provider"],
            registry=r,
        )
        self.ami_action_duration = Histogram(
            "pbxcal_ami_action_duration_seconds",
            "Duration of one AMI action",
            ["action"],
            buckets=_AMI_BUCKETS,
            registry=r,
        )

        self.store_writable = Gauge(
            "pbxcal_store_writable",
            "1 while the last write to the store succeeded",
            registry=r,
        )
        self.store_write_failures = Counter(
            "pbxcal_store_write_failures_total",
            "Writes to the store that failed (retried later), by operation",
            ["operation"],
            registry=r,
        )
        self.links_unknown = Gauge(
            "pbxcal_links_unknown",
            "Active links whose events are not known yet (their extension is left as it is)",
            registry=r,
        )

        self.loop_lag = Histogram(
            "pbxcal_event_loop_lag_seconds",
            "How late the event loop woke a 50 ms timer (time it was blocked)",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "pbxcal_event_loop_lag_max_seconds",
            "Longest time the event loop was blocked since the start",
            registry=r,
        )

        self.webhook_notifications = Counter(
            "pbxcal_webhook_notifications_total",
            "Provider push notifications accepted (each triggers one sync of its link)",
            ["provider"],
            registry=r,
        )
        self.webhook_refused = Counter(
            "pbxcal_webhook_refused_total",
            "Provider push notifications refused (spoofed, replayed, malformed), by reason",
            ["provider", "reason"],
            registry=r,
        )

        # Several processes on one PostgreSQL (pbxcal.cluster); absent with SQLite.
        self.cluster_members = Gauge(
            "pbxcal_cluster_members",
            "Live pbxcal processes sharing this store, as of this process's last lease round",
            registry=r,
        )
        self.pbx_leases_held = Gauge(
            "pbxcal_pbx_leases_held",
            "PBX write leases this process holds now (summed over the group: the PBX count)",
            registry=r,
        )
        self.lease_takeovers = Counter(
            "pbxcal_lease_takeovers_total",
            "PBX write leases this process took from another member (dead, frozen or released)",
            registry=r,
        )
        self.leases_lost = Counter(
            "pbxcal_leases_lost_total",
            "PBX write leases this process stopped holding (lost, handed over, or on shutdown)",
            registry=r,
        )

    def observe_ami_action(self, action: str, result: str, seconds: float) -> None:
        """The ``on_action`` observer handed to ``AmiPbx``."""
        self.ami_actions.labels(action, result).inc()
        self.ami_action_duration.labels(action).observe(seconds)
