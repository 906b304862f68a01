"""The customer portal's and the admin API's tables: invitations, OAuth flows, admin
tokens and the audit log (``Store``'s ``PortalTable`` mixin; migration 0004).

What it does: keeps invitations (an expiring, single-use link to one extension on one
PBX, stored by the SHA-256 of its token), the portal's pending OAuth flows (the PKCE
verifier and friends, sealed with the key ring and bound to the ``state``'s hash),
admin bearer tokens (by hash, scoped to PBXes) and an append-only audit log. The two
single-use claims, ``use_invitation`` and ``take_flow``, are one conditional UPDATE
each (``... WHERE used_at IS NULL``), so of any number of concurrent claims, in threads
or processes, on SQLite or PostgreSQL, exactly one wins.

What it must not do: store a token, a state or a flow in plain, or put one into a
message; decide policy (expiry of invitations, scopes: ``pbxcal.admin`` does that).

Start reading at ``PortalTable.add_invitation`` and ``use_invitation``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database
from pbxcal.store.secrets import KeyRing
from pbxcal.store.times import require_utc

#: A pending OAuth flow older than this cannot be taken any more.
FLOW_LIFETIME = timedelta(minutes=15)
#: Largest flow accepted (a PKCE verifier, a nonce, an MSAL flow dict: well under 8 kB).
MAX_FLOW_BYTES = 16 * 1024
#: Audit lines kept: the newest ``AUDIT_KEEP`` (pruned every ``AUDIT_PRUNE_EVERY`` lines).
AUDIT_KEEP = 200_000
AUDIT_PRUNE_EVERY = 1000
_FLOW_KIND = "portal-flow:"  # the ':' keeps it apart from every secrets kind


@dataclass(frozen=True)
class Invitation:
    """An invitation to link a calendar to ``extension`` on ``pbx``."""

    id: int
    pbx: str
    extension: str
    email: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    link_id: int | None
    created_by: str = ""


@dataclass(frozen=True)
class Flow:
    """A pending OAuth flow, taken once (``take_flow``)."""

    invitation_id: int
    provider: str
    plaintext: bytes


@dataclass(frozen=True)
class AdminToken:
    """An admin API token (never the token itself); ``pbxes`` None = every PBX."""

    id: int
    name: str
    pbxes: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class AuditLine:
    """One audit line to write (``record_audit_lines``); ``at`` in UTC."""

    at: datetime
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any]
    remote: str | None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    remote: str | None


class PortalTable:
    """Invitation, flow, admin-token and audit calls of ``Store`` (a mixin)."""

    _db: Database
    _keys: KeyRing | None

    # -- invitations -------------------------------------------------------------------

    def add_invitation(
        self,
        pbx: str,
        extension: str,
        token_hash: str,
        *,
        email: str | None,
        expires_at: datetime,
        created_by: str,
    ) -> Invitation:
        """Store a new invitation; ``token_hash`` is the SHA-256 hex of its token."""
        require_utc(expires_at, "invitation expiry")
        values = {
            "token_hash": token_hash,
            "pbx": pbx,
            "extension": extension,
            "email": email,
            "created_at": datetime.now(UTC),
            "expires_at": expires_at,
            "created_by": created_by,
        }
        with self._db.transaction(write=True) as conn:
            new_id = conn.execute(
                insert(db.invitations).values(**values).returning(db.invitations.c.id)
            ).scalar_one()
            row = conn.execute(select(db.invitations).where(db.invitations.c.id == new_id)).one()
        return _invitation(row)

    def invitation_by_hash(self, token_hash: str) -> Invitation | None:
        """The invitation whose token hashes to ``token_hash``, or None."""
        query = select(db.invitations).where(db.invitations.c.token_hash == token_hash)
        with self._db.transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else _invitation(row)

    def get_invitation(self, invitation_id: int) -> Invitation | None:
        """The invitation with this id, or None."""
        query = select(db.invitations).where(db.invitations.c.id == invitation_id)
        with self._db.transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else _invitation(row)

    def list_invitations(
        self, pbxes: Collection[str] | None = None, limit: int = 200
    ) -> list[Invitation]:
        """The newest ``limit`` invitations (of ``pbxes`` only, if given), newest first."""
        query = select(db.invitations)
        if pbxes is not None:
            query = query.where(db.invitations.c.pbx.in_(list(pbxes)))
        query = query.order_by(db.invitations.c.id.desc()).limit(limit)
        with self._db.transaction() as conn:
            return [_invitation(row) for row in conn.execute(query)]

    def use_invitation(self, invitation_id: int, link_id: int) -> bool:
        """Mark the invitation used by ``link_id``; False when it was used already.

        One conditional UPDATE: of concurrent calls exactly one returns True.
        """
        statement = (
            update(db.invitations)
            .where(db.invitations.c.id == invitation_id, db.invitations.c.used_at.is_(None))
            .values(used_at=datetime.now(UTC), link_id=link_id)
        )
        with self._db.transaction(write=True) as conn:
            claimed = conn.execute(statement).rowcount
        return claimed == 1

    def reopen_invitation(self, link_id: int) -> int:
        """Make the invitation that made ``link_id`` usable again (the customer unlinked
        a wrong account and starts over); how many were reopened. Call it before the link
        is removed (removal forgets which invitation made it)."""
        statement = (
            update(db.invitations)
            .where(db.invitations.c.link_id == link_id)
            .values(used_at=None, link_id=None)
        )
        with self._db.transaction(write=True) as conn:
            return int(conn.execute(statement).rowcount or 0)

    # -- OAuth flows -------------------------------------------------------------------

    def add_flow(
        self, state_hash: str, invitation_id: int, provider: str, plaintext: bytes
    ) -> None:
        """Keep a pending OAuth flow, sealed with the key ring, until ``take_flow``."""
        keys = self._flow_keys()
        if len(plaintext) > MAX_FLOW_BYTES:
            raise StoreError(f"an OAuth flow is larger than {MAX_FLOW_BYTES} bytes")
        used_key, sealed = keys.seal(invitation_id, _FLOW_KIND + state_hash, bytes(plaintext))
        values = {
            "state_hash": state_hash,
            "invitation_id": invitation_id,
            "provider": provider,
            "key_id": used_key,
            "sealed": sealed,
            "created_at": datetime.now(UTC),
        }
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(insert(db.portal_flows).values(**values))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise StoreError(
                    "that OAuth state exists already (or the invitation is gone)"
                ) from None
            raise

    def take_flow(self, state_hash: str, now: datetime | None = None) -> Flow | None:
        """The flow of this state, once: None when unknown, taken already or too old.

        One conditional UPDATE ... RETURNING: of concurrent calls exactly one gets it.
        """
        keys = self._flow_keys()
        moment = now or datetime.now(UTC)
        require_utc(moment, "flow time")
        table = db.portal_flows
        statement = (
            update(table)
            .where(
                table.c.state_hash == state_hash,
                table.c.used_at.is_(None),
                table.c.created_at > moment - FLOW_LIFETIME,
            )
            .values(used_at=moment)
            .returning(table.c.invitation_id, table.c.provider, table.c.key_id, table.c.sealed)
        )
        with self._db.transaction(write=True) as conn:
            row = conn.execute(statement).first()
        if row is None:
            return None
        plaintext = keys.unseal(
            row.invitation_id, _FLOW_KIND + state_hash, row.key_id, bytes(row.sealed)
        )
        return Flow(row.invitation_id, row.provider, plaintext)

    def _flow_keys(self) -> KeyRing:
        if self._keys is None:
            from pbxcal.store.secrets import NO_KEY_MESSAGE

            raise StoreError(NO_KEY_MESSAGE)
        return self._keys

    # -- admin tokens ------------------------------------------------------------------

    def add_admin_token(
        self, name: str, token_hash: str, pbxes: Collection[str] | None
    ) -> AdminToken:
        """Store a new admin token by its hash; ``StoreError`` if the name is taken."""
        values = {
            "name": name,
            "token_hash": token_hash,
            "pbxes": None if pbxes is None else sorted(set(pbxes)),
            "created_at": datetime.now(UTC),
        }
        try:
            with self._db.transaction(write=True) as conn:
                new_id = conn.execute(
                    insert(db.admin_tokens).values(**values).returning(db.admin_tokens.c.id)
                ).scalar_one()
                row = conn.execute(
                    select(db.admin_tokens).where(db.admin_tokens.c.id == new_id)
                ).one()
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise StoreError(f"an admin token named {name!r} exists already") from None
            raise
        return _admin_token(row)

    def admin_token_by_hash(self, token_hash: str) -> tuple[AdminToken, str] | None:
        """(token, its stored hash) for ``token_hash``, revoked or not; None if unknown."""
        query = select(db.admin_tokens).where(db.admin_tokens.c.token_hash == token_hash)
        with self._db.transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else (_admin_token(row), str(row.token_hash))

    def touch_admin_token(self, token_id: int, at: datetime) -> None:
        """Note that the token was used at ``at``."""
        require_utc(at, "token use time")
        statement = (
            update(db.admin_tokens).where(db.admin_tokens.c.id == token_id).values(last_used_at=at)
        )
        with self._db.transaction(write=True) as conn:
            conn.execute(statement)

    def list_admin_tokens(self) -> list[AdminToken]:
        """Every admin token (revoked ones too), by name."""
        query = select(db.admin_tokens).order_by(db.admin_tokens.c.name)
        with self._db.transaction() as conn:
            return [_admin_token(row) for row in conn.execute(query)]

    def revoke_admin_token(self, name: str) -> AdminToken:
        """Revoke the token ``name`` (at once, every process); ``StoreError`` if unknown."""
        table = db.admin_tokens
        with self._db.transaction(write=True) as conn:
            conn.execute(
                update(table)
                .where(table.c.name == name, table.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(select(table).where(table.c.name == name)).first()
        if row is None:
            raise StoreError(f"no admin token named {name!r}")
        return _admin_token(row)

    # -- audit -------------------------------------------------------------------------

    def record_audit(
        self,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
        remote: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append one line to the audit log (never a secret in ``detail``); the oldest
        lines beyond ``AUDIT_KEEP`` go, so refused calls cannot fill the disk."""
        moment = at or datetime.now(UTC)
        require_utc(moment, "audit time")
        values = {
            "at": moment,
            "actor": actor,
            "action": action,
            "target": target,
            "detail": dict(detail or {}),
            "remote": remote,
        }
        with self._db.transaction(write=True) as conn:
            new_id = conn.execute(
                insert(db.audit_log).values(**values).returning(db.audit_log.c.id)
            ).scalar_one()
            if new_id % AUDIT_PRUNE_EVERY == 0:  # bounded, whoever floods the API
                conn.execute(delete(db.audit_log).where(db.audit_log.c.id <= new_id - AUDIT_KEEP))

    def record_audit_lines(self, lines: Sequence[AuditLine]) -> None:
        """Append ``lines`` to the audit log in one transaction (the admin API's batched
        writer, ``pbxcal.web.audit``); pruned like ``record_audit``."""
        if not lines:
            return
        for line in lines:
            require_utc(line.at, "audit time")
        rows = [
            {"at": line.at, "actor": line.actor, "action": line.action, "target": line.target,
             "detail": dict(line.detail), "remote": line.remote}
            for line in lines
        ]  # fmt: skip
        table = db.audit_log
        with self._db.transaction(write=True) as conn:
            conn.execute(insert(table), rows)
            newest = int(conn.execute(select(func.max(table.c.id))).scalar_one())
            if newest // AUDIT_PRUNE_EVERY != (newest - len(rows)) // AUDIT_PRUNE_EVERY:
                conn.execute(delete(table).where(table.c.id <= newest - AUDIT_KEEP))

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit lines, newest first."""
        query = select(db.audit_log).order_by(db.audit_log.c.id.desc()).limit(limit)
        with self._db.transaction() as conn:
            return [
                AuditEntry(r.id, r.at, r.actor, r.action, r.target, dict(r.detail), r.remote)
                for r in conn.execute(query)
            ]


def _invitation(row: Row[Any]) -> Invitation:
    return Invitation(
        id=row.id,
        pbx=row.pbx,
        extension=row.extension,
        email=row.email,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        link_id=row.link_id,
        created_by=row.created_by,
    )


def _admin_token(row: Row[Any]) -> AdminToken:
    return AdminToken(
        id=row.id,
        name=row.name,
        pbxes=None if row.pbxes is None else tuple(str(p) for p in row.pbxes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
