"""Link health: what the result of a link's last sync says about the link.

One table for the service (metrics ``pbxcal_links{provider,status}``), the CLI
(``pbxcal links list|show``) and later the portal: ``connected`` (read fine, changed or
not), ``pending`` (not read yet), ``auth_failed`` (credentials refused),
``needs_relink`` (grant revoked or expired), ``unreachable`` (network, 5xx, rate
limits, timeouts), ``invalid`` (the calendar or its source is unusable, over a limit,
or the store failed), ``disabled`` (switched off by an admin).

Pure data. Start reading at ``link_status``.
"""

from __future__ import annotations

#: The status a sync result gives its link.
STATUS_OF_RESULT: dict[str, str] = {
    "pending": "pending",
    "changed": "connected",
    "unchanged": "connected",
    "unavailable": "unreachable",
    "rate-limited": "unreachable",
    "auth-failed": "auth_failed",
    "needs-relink": "needs_relink",
    "invalid": "invalid",
    "over-limit": "invalid",
    "store-error": "invalid",
    "error": "invalid",
}
#: Every status a link can have.
LINK_STATUSES = (
    "connected", "pending", "auth_failed", "needs_relink", "unreachable", "invalid", "disabled"
)  # fmt: skip
#: Results that count as a successful sync.
SUCCESS_RESULTS = frozenset({"changed", "unchanged"})


def link_status(result: str | None, *, active: bool = True) -> str:
    """The status of a link whose last sync ended with ``result`` (None: never synced)."""
    if not active:
        return "disabled"
    return STATUS_OF_RESULT.get(result or "pending", "invalid")
