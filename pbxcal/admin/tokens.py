"""Admin API bearer tokens: made once, shown once, stored only as a SHA-256 hash.

What it does: ``create_admin_token`` makes a random token (``pbxcal_`` + 43 URL-safe
characters, 256 bits), stores its hash with a name and an optional list of PBXes it may
see, and returns the token for the caller to show once; ``authenticate`` finds the
token a request presents; ``in_scope`` says whether a token may see a PBX.

``TokenCache`` (one per process: ``TOKENS``) keeps tokens it verified, by hash, for at
most ``CACHE_SECONDS`` (5 s), so the admin API checks a known token without a store
read or a thread hop. Revocation therefore takes effect in every process within 5 s,
and at once in the process that revoked through ``revoke_admin_token``. Unknown and
revoked tokens are never kept (each refusal reads the store). ``last_used_at`` is still
written at most once a minute (on a cache miss, by ``authenticate``).

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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
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


#: How long a verified token is believed without reading the store (seconds).
CACHE_SECONDS = 5.0


class TokenCache:
    """Verified tokens by (store, hash) for at most ``ttl`` seconds of ``clock``.

    ``cached`` answers from memory only (call it on the event loop); ``authenticate``
    reads the store (blocking: a worker thread) and keeps what it verified.
    """

    def __init__(
        self, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic,
        size: int = 1024,
    ) -> None:  # fmt: skip
        self.ttl = ttl
        self.clock = clock
        self.size = size
        self._entries: OrderedDict[tuple[int, str], tuple[float, AdminToken]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, store: Store, presented: str) -> AdminToken | None:
        """The token ``presented`` is, if verified less than ``ttl`` ago; else None
        (then ``authenticate``)."""
        if not presented.startswith(TOKEN_PREFIX) or len(presented) > 200:
            return None
        key = (id(store), hash_token(presented))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() - entry[0] >= self.ttl:
                del self._entries[key]
                return None
            return entry[1]

    def authenticate(self, store: Store, presented: str, now: datetime) -> AdminToken | None:
        """``authenticate`` (reads the store), keeping a valid token for ``ttl``."""
        verified_at = self.clock()
        token = authenticate(store, presented, now)
        if token is not None:
            with self._lock:
                self._entries[(id(store), hash_token(presented))] = (verified_at, token)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return token

    def forget(self, name: str | None = None) -> None:
        """Drop the token named ``name`` (every token: None) from the cache."""
        with self._lock:
            for key, (_, token) in list(self._entries.items()):
                if name is None or token.name == name:
                    del self._entries[key]


#: This process's cache of verified tokens (the admin API's).
TOKENS = TokenCache()


def revoke_admin_token(store: Store, name: str) -> AdminToken:
    """Revoke the token ``name`` in the store (every process within ``CACHE_SECONDS``)
    and at once in this process's cache; ``StoreError`` if unknown."""
    record = store.revoke_admin_token(name)
    TOKENS.forget(name)
    return record


def in_scope(token: AdminToken, pbx: str) -> bool:
    """Whether ``token`` may see links and invitations of ``pbx``."""
    return token.pbxes is None or pbx in token.pbxes
