"""Invitations: a single-use, expiring URL that lets a customer link one extension.

What it does: ``create_invitation`` checks the PBX and extension with the rules of
``links add`` (``operations.checked_target``), makes a random token
(``secrets.token_urlsafe(32)``, 256 bits), stores only its SHA-256 and returns the URL
``{[portal] public_url}/i/{token}``; ``open_invitation`` finds the invitation behind a
token and refuses it (``InvitationRefused``) when it is unknown, expired or used. The
claim itself (``Store.use_invitation``) is atomic, so two browsers finishing at once
cannot both link.

What it must not do: store or log a token; say more than "unknown" for a token that is
not ours (no hint whether it ever existed).

Start reading at ``create_invitation``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pbxcal.admin.operations import checked_target
from pbxcal.admin.tokens import hash_token
from pbxcal.errors import InputError, PbxcalError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Store
    from pbxcal.store.portal import Invitation

#: Why ``open_invitation`` refuses (P1 words a page for each).
REFUSALS = ("unknown", "expired", "used")
_TOKEN_MAX = 100


class InvitationRefused(PbxcalError):
    """An invitation cannot be used; ``reason`` is one of ``REFUSALS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invitation {reason}")
        self.reason = reason


def create_invitation(
    store: Store,
    config: Config,
    pbx: str,
    extension: str,
    *,
    email: str | None = None,
    created_by: str,
) -> tuple[Invitation, str]:
    """A new invitation for ``extension`` on ``pbx`` and its URL (shown once)."""
    from pbxcal.config.checks import email as email_problem

    if config.portal is None:
        raise InputError("the customer portal is off: set [portal] public_url in the config")
    checked_target(config, pbx, extension)
    if email is not None:
        problem = email_problem(email)
        if problem is not None:
            raise InputError(f"email: {problem}")
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=config.portal.invitation_hours)
    invitation = store.add_invitation(
        pbx, extension, hash_token(token), email=email, expires_at=expires, created_by=created_by
    )
    return invitation, invitation_url(config, token)


def invitation_url(config: Config, token: str) -> str:
    """Where the customer opens an invitation."""
    if config.portal is None:
        raise InputError("the customer portal is off: set [portal] public_url in the config")
    return f"{config.portal.public_url.rstrip('/')}/i/{token}"


def open_invitation(store: Store, token: str, now: datetime) -> Invitation:
    """The usable invitation behind ``token``; ``InvitationRefused`` saying why not."""
    if not token or len(token) > _TOKEN_MAX:
        raise InvitationRefused("unknown")
    invitation = store.invitation_by_hash(hash_token(token))
    if invitation is None:
        raise InvitationRefused("unknown")
    if invitation.used_at is not None:
        raise InvitationRefused("used")
    if now >= invitation.expires_at:
        raise InvitationRefused("expired")
    return invitation


def invitation_state(invitation: Invitation, now: datetime) -> str:
    """``open``, ``used`` or ``expired``, for lists."""
    if invitation.used_at is not None:
        return "used"
    return "expired" if now >= invitation.expires_at else "open"


async def mail_invitation(
    config: Config, to: str, url: str, language: str | None, sender: Any = None
) -> tuple[bool, str | None]:
    """E-mail the invitation ``url`` to ``to``: (sent, why not). The invitation stands
    either way (the admin can pass the URL on). ``sender`` replaces
    ``pbxcal.mail.send_invitation`` (the web context's mailer)."""
    from pbxcal.mail import MailError, send_invitation

    if config.smtp is None:
        return False, "e-mail is off ([smtp] host is not set); pass the URL on yourself"
    portal = config.portal
    chosen = language or (portal.languages[0] if portal and portal.languages else "en")
    try:
        await (sender or send_invitation)(config.smtp, to, url, chosen)
    except MailError as exc:
        return False, str(exc)
    return True, None


def invitation_record(invitation: Invitation, now: datetime) -> dict[str, Any]:
    """An invitation as the CLI's ``--json`` and the admin API show it (never its token)."""
    return {
        "id": invitation.id,
        "pbx": invitation.pbx,
        "extension": invitation.extension,
        "email": invitation.email,
        "created_at": _when(invitation.created_at),
        "expires_at": _when(invitation.expires_at),
        "used_at": _when(invitation.used_at) if invitation.used_at else None,
        "link_id": invitation.link_id,
        "state": invitation_state(invitation, now),
        "created_by": invitation.created_by,
    }


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
