"""The admin API's cache of verified tokens (``admin.tokens.TokenCache``) on a real
SQLite store, with a clock the test moves: a revoked token keeps working at most the
cache time in another process and stops at once where it was revoked; unknown and
revoked tokens are never kept; ``last_used_at`` is written at most once a minute."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pbxcal.admin import tokens
from pbxcal.admin.tokens import CACHE_SECONDS, TokenCache, create_admin_token, revoke_admin_token
from pbxcal.store import Store

NOW = datetime(2026, 3, 30, 9, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/s.db")
    yield opened
    opened.close()


def test_a_token_revoked_elsewhere_stops_working_within_the_cache_time(store: Store) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    _, token = create_admin_token(store, "ops", None, [])
    assert cache.cached(store, token) is None  # not verified yet
    verified = cache.authenticate(store, token, NOW)
    assert verified is not None and verified.name == "ops"
    store.revoke_admin_token("ops")  # another process (the CLI) revokes it
    clock.now += CACHE_SECONDS - 0.01
    assert cache.cached(store, token) == verified  # still believed, inside the cache time
    clock.now += 0.01
    assert cache.cached(store, token) is None  # the cache time is over: the store decides
    assert cache.authenticate(store, token, NOW) is None
    assert cache.cached(store, token) is None  # a revoked token is not kept


def test_revoking_in_this_process_takes_effect_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    monkeypatch.setattr(tokens, "TOKENS", cache)
    _, ops = create_admin_token(store, "ops", None, [])
    _, other = create_admin_token(store, "other", None, [])
    assert cache.authenticate(store, ops, NOW) is not None
    assert cache.authenticate(store, other, NOW) is not None
    assert revoke_admin_token(store, "ops").revoked_at is not None
    assert cache.cached(store, ops) is None and cache.authenticate(store, ops, NOW) is None
    assert cache.cached(store, other) is not None  # others stay cached


def test_unknown_tokens_are_not_kept_and_the_cache_is_bounded(store: Store) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, size=2)
    assert cache.authenticate(store, "pbxcal_" + "x" * 43, NOW) is None
    assert cache.cached(store, "pbxcal_" + "x" * 43) is None
    assert cache.cached(store, "not-a-token") is None
    made = [create_admin_token(store, f"t{n}", None, [])[1] for n in range(3)]
    for token in made:
        assert cache.authenticate(store, token, NOW) is not None
    assert [cache.cached(store, t) is not None for t in made] == [False, True, True]


def test_last_used_is_written_at_most_once_a_minute(store: Store) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    _, token = create_admin_token(store, "ops", None, [])

    def last_used() -> datetime | None:
        return store.list_admin_tokens()[0].last_used_at

    moment = NOW
    for _ in range(40):  # 40 calls over 2 minutes, each after the cache time
        if cache.cached(store, token) is None:
            assert cache.authenticate(store, token, moment) is not None
        clock.now += CACHE_SECONDS
        moment += timedelta(seconds=3)
        if moment == NOW + timedelta(seconds=30):
            assert last_used() == NOW
    assert last_used() == NOW + timedelta(seconds=60)  # touched at 0 s and at 60 s only
