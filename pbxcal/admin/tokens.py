"""Admin API bearer tokens: made once, shown once, stored only as a SHA-256 hash.

What it does: ``create_admin_token`` makes a random token (``pbxcal_`` + 43 URL-safe
characters, 256 bits), stores its hash with a name and an optional list of PBXes it may
see, and returns the token for the caller to show once; ``authenticate`` finds the
token a request presents; ``in_scope`` says whether a token may see a PBX.

Why the lookup by hash is safe: the store finds the row by the hash (an indexed
lookup whose timing may depend on the hash), then the hashes are compared with
``hmac.compare_digest``. Timing can at most reveal something about the *hash* of a
guess, and a 256-bit random token cannot be steered towards a hash prefix, so no
timing tells an attacker anything about a valid token. SHA-256 without a salt or
stretching is right for random tokens (nothing to brute-force, unlike passwords).

What it must not do: store, log or return a token after ``create_admin_token``.

Start reading at ``create_admin_token``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.store import Store
    from pbxcal.store.portal import AdminToken

#: What a token's name may look like (it is the actor in the audit log).
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
TOKEN_PREFIX = "pbxcal_"  # noqa: S105 - a prefix, not a secret
#: ``last_used_at`` is written at most this often per token (a write per call is waste).
TOUCH_EVERY = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """SHA-256 hex of a token (admin token, invitation token or OAuth state)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_admin_token(
    store: Store, name: str, pbxes: Collection[str] | None, known_pbxes: Collection[str]
) -> tuple[AdminToken, str]:
    """A new token named ``name`` (seeing ``pbxes``, None = all); (record, token)."""
    if not TOKEN_NAME.fullmatch(name):
        raise InputError(
            "--name must be 1-64 letters, digits or _.@- (it names the token in the audit log)"
        )
    if pbxes is not None:
        unknown = sorted(set(pbxes) - set(known_pbxes))
        if unknown:
            raise InputError(
                f"--pbx {unknown[0]!r}: not a configured PBX ({', '.join(known_pbxes) or 'none'})"
            )
        if not pbxes:
            raise InputError("give at least one --pbx, or none for a token that sees every PBX")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = store.add_admin_token(name, hash_token(token), pbxes)
    return record, token


def authenticate(store: Store, presented: str, now: datetime) -> AdminToken | None:
    """The valid (not revoked) token ``presented`` is, or None."""
    if not presented.startswith(TOKEN_PREFIX) or len(presented) > 200:
        return None
    digest = hash_token(presented)
    found = store.admin_token_by_hash(digest)
    if found is None:
        return None
    token, stored = found
    if not hmac.compare_digest(stored.encode("ascii"), digest.encode("ascii")):
        return None
    if token.revoked_at is not None:
        return None
    if token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY:
        store.touch_admin_token(token.id, now)
    return token


def in_scope(token: AdminToken, pbx: str) -> bool:
    """Whether ``token`` may see links and invitations of ``pbx``."""
    return token.pbxes is None or pbx in token.pbxes
