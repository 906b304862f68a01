"""The store's tables as SQLAlchemy Core metadata, and the UTC timestamp column type.

What it does: describes the schema the code expects *now*; the migrations in
``migrations/versions/`` build it step by step (a test checks that both agree). What it
must not do: create tables itself (only Alembic changes a database's schema).

``events.recurrence_id`` stores ``""`` for "no recurrence id" so that the primary key
``(link_id, uid, recurrence_id)`` also rejects a second master event (SQL treats NULLs as
distinct). ``sync_state.sync_token`` is always NULL today; it stays for the incremental
providers of the next issue. ``links_version`` holds one row whose ``version`` every link
change bumps in the same transaction (the daemon's link watcher polls it);
``expansions`` holds one compact row per link (see ``store.expansions``); ``secrets``
holds each link's credentials, encrypted (see ``store.secrets``). Start reading at
``links``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned tz-aware in UTC.

    PostgreSQL keeps it as ``timestamptz``; SQLite has no time zones and hands back naive
    values, which are UTC by construction because naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored; use UTC")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Stable constraint names, so later migrations can refer to them on every backend.
NAMING_CONVENTION: dict[str, Any] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

links = Table(
    "links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("extension", Text, nullable=False),
    Column("pbx", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("origin", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("extension", "pbx", "source"),
    Index(None, "origin"),
    # AUTOINCREMENT: never hand a removed link's id to a new link (ids appear in the CLI).
    sqlite_autoincrement=True,
)

events = Table(
    "events",
    metadata,
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", Text, primary_key=True),
    Column("recurrence_id", Text, primary_key=True),
    Column("ical", Text, nullable=False),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), primary_key=True),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("sync_token", Text),
    Column("calendar_tz", Text),
    Column("timezones", Text, nullable=False),
    Column("fetched_at", UtcDateTime, nullable=False),
    #: ``{"time_zone", "days", "start", "end"}`` as the provider reports them, or NULL
    Column("working_hours", JSON),
)

applied = Table(
    "applied",
    metadata,
    Column("pbx", Text, primary_key=True),
    Column("extension", Text, primary_key=True),
    Column("targets", JSON, nullable=False),
)

sync_log = Table(
    "sync_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("result", Text, nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("rejected", JSON, nullable=False),
    Column("message", Text, nullable=False),
    # sync_log(link) newest first, last_sync() and pruning all walk this index.
    Index(None, "link_id", "at", "id"),
)

links_version = Table(
    "links_version",
    metadata,
    # exactly one row, id 1, inserted by migration 0002
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

expansions = Table(
    "expansions",
    metadata,
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), primary_key=True),
    Column("range_start", UtcDateTime, nullable=False),
    Column("range_end", UtcDateTime, nullable=False),
    Column("computed_at", UtcDateTime, nullable=False),
    # JSON text written and read by store.expansions (not the JSON type: the encoding is
    # ours, compact, and decoded without SQLAlchemy's per-value processing)
    Column("instances", Text, nullable=False),
)

secrets = Table(
    "secrets",
    metadata,
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), primary_key=True),
    # what the secret is: "google-refresh-token", "caldav-password", ...
    Column("kind", Text, primary_key=True),
    # which key sealed it (store.secrets.key_id), so rotation knows what to rewrite
    Column("key_id", Text, nullable=False),
    # version byte + nonce + AES-GCM ciphertext and tag; never the plaintext
    Column("ciphertext", LargeBinary, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "key_id"),
)

# -- the customer portal and the admin API (store.portal; migration 0004) ------------------

invitations = Table(
    "invitations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 hex of the URL's token; the token itself is never stored
    Column("token_hash", Text, nullable=False, unique=True),
    Column("pbx", Text, nullable=False),
    Column("extension", Text, nullable=False),
    Column("email", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
    # the link it made; NULL again when that link is removed
    Column("link_id", Integer, ForeignKey("links.id", ondelete="SET NULL")),
    Column("created_by", Text, nullable=False),
    sqlite_autoincrement=True,
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    # SHA-256 hex of the bearer token; the token itself is never stored
    Column("token_hash", Text, nullable=False, unique=True),
    # list of PBX names the token may see; NULL = every PBX
    Column("pbxes", JSON),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("last_used_at", UtcDateTime),
    sqlite_autoincrement=True,
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("remote", Text),
    Index(None, "at"),
)

portal_flows = Table(
    "portal_flows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 hex of the OAuth ``state``
    Column("state_hash", Text, nullable=False, unique=True),
    Column(
        "invitation_id",
        Integer,
        ForeignKey("invitations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("provider", Text, nullable=False),
    # which key sealed it (like secrets.key_id)
    Column("key_id", Text, nullable=False),
    # the flow's JSON sealed with the key ring, bound to state_hash; never the plaintext
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
)

# -- several processes on one PostgreSQL (pbxcal.cluster; migration 0005) -------------------

members = Table(
    "members",
    metadata,
    # a uuid per running process, new on every start
    Column("member_id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    # all three by the database's clock: first beat, start of the current unbroken run
    # of beats (the settle time of ownership counts from it), latest beat
    Column("started_at", UtcDateTime, nullable=False),
    Column("alive_since", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime, nullable=False),
    # the member's lease ttl in seconds: its heartbeat older than this means dead
    Column("ttl", Float, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    # what is leased: "pbx:<name>"
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    # the fencing token: grows by one whenever the holder changes, never goes back
    Column("epoch", BigInteger, nullable=False),
    # by the database's clock
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("renewed_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

pbx_epochs = Table(
    "pbx_epochs",
    metadata,
    # the newest lease epoch that wrote state about this PBX (store.fencing)
    Column("pbx", Text, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("written_at", UtcDateTime, nullable=False),
)

# -- push channels any process's webhook checks (store.push_channels; migration 0008) --------

push_channels = Table(
    "push_channels",
    metadata,
    Column("provider", Text, primary_key=True),  # "google" or "graph"
    Column("channel_id", Text, primary_key=True),  # channel or subscription id
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    # SHA-256 of the channel token / clientState (push_token_digest); never the secret
    Column("token_digest", LargeBinary, nullable=False),
    Column("resource_id", Text, nullable=False),  # "" until the provider answered
    Column("expires_at", UtcDateTime),  # None until the provider answered
    Column("owner", Text, nullable=False),  # member id of the process that tends it
    Column("last_message", BigInteger),  # Google's highest message number seen
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "link_id"),
)

# -- agents and bookings (pbxcal.booking; migrations 0006, 0009) ----------------------------------

agents = Table(
    "agents",
    metadata,
    # a slug ("anna"), chosen by the admin
    Column("id", Text, primary_key=True),
    Column("pbx", Text, nullable=False),
    Column("extension", Text, nullable=False),
    Column("name", Text, nullable=False),
    # the organizer address of invitations
    Column("email", Text),
    # booking.settings as JSON (see pbxcal.booking.settings)
    Column("settings", JSON, nullable=False),
    Column("booking_link_id", Integer, ForeignKey("links.id", ondelete="SET NULL")),
    # the link ids whose events make the agent busy
    Column("conflict_link_ids", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

agent_groups = Table(
    "agent_groups",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    # the member agent ids, in round-robin order
    Column("members", JSON, nullable=False),
    # how many bookings the group has handed out: the next one starts at this member
    Column("rr_counter", BigInteger, nullable=False),
)

bookings = Table(
    "bookings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("agent_id", Text, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    # [start_at, end_at) of the meeting itself
    Column("start_at", UtcDateTime, nullable=False),
    Column("end_at", UtcDateTime, nullable=False),
    # [blocked_start, blocked_end): the meeting with the agent's buffers before and after
    # as they were when it was booked or moved (migration 0009: older rows the meeting);
    # two confirmed bookings of one agent never share a moment of it (an exclusion
    # constraint on PostgreSQL, triggers on SQLite)
    Column("blocked_start", UtcDateTime, nullable=False),
    Column("blocked_end", UtcDateTime, nullable=False),
    Column("subject", Text, nullable=False),
    Column("guest_name", Text, nullable=False),
    Column("guest_email", Text, nullable=False),
    Column("language", Text, nullable=False),
    # the iCalendar UID and SEQUENCE of the invitation
    Column("uid", Text, nullable=False, unique=True),
    Column("sequence", Integer, nullable=False),
    # "confirmed" | "cancelled"; only confirmed bookings block time
    Column("status", Text, nullable=False),
    # SHA-256 hex of the guest's manage token; never the token
    Column("manage_token_hash", Text, nullable=False, unique=True),
    Column("provider_event_id", Text),
    # the online meeting's join link the booking calendar added (Meet, Teams), or NULL
    Column("join_url", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("reminded_at", UtcDateTime),
    Index(None, "agent_id", "start_at"),
    CheckConstraint("blocked_start <= start_at AND end_at <= blocked_end", name="blocked_range"),
    sqlite_autoincrement=True,
)
