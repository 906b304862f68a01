"""Secrets at rest, the store's side (issue #9 item 5), backend-independent: every test
here runs on SQLite (this module) and again on a real PostgreSQL
(``tests/integration/test_secrets_postgres.py`` imports them and overrides ``store_url``).
What an SQLite file holds on disk is checked in ``test_secrets_sqlite.py``; key files,
``KeyRing`` and ``[secrets]`` in ``test_secrets_keys.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pbxcal.store import KeyRing, SecretStore, StateStore, Store, StoreError
from pbxcal.store.secrets import NO_KEY_MESSAGE, new_key

TOKEN = "1//0gRefreshTokenThatMustNeverBeSeen-7c1b9f"
PASSWORD = "correct horse battery staple ü"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([new_key()], "test keys")


@pytest.fixture
def store(store_url: str, ring: KeyRing) -> Iterator[Store]:
    opened = Store.open(store_url, keys=ring)
    yield opened
    opened.close()


def add_link(store: Store, extension: str = "100") -> int:
    return store.add_link(extension, "main", "google", f"google:{extension}@example.com").id


def raw_rows(url: str) -> list[sa.Row[tuple[int, str, str, bytes]]]:
    """The secrets table straight from the database (not through the store)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT link_id, kind, key_id, ciphertext FROM secrets ORDER BY link_id, kind"
            )
            return list(conn.execute(query))
    finally:
        engine.dispose()


def set_raw(url: str, link_id: int, kind: str, key_id: str, ciphertext: bytes) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE secrets SET key_id = :key_id, ciphertext = :ciphertext "
                    "WHERE link_id = :link_id AND kind = :kind"
                ),
                {"key_id": key_id, "ciphertext": ciphertext, "link_id": link_id, "kind": kind},
            )
    finally:
        engine.dispose()


def test_store_satisfies_the_secret_port(store: Store) -> None:
    port: SecretStore = store
    assert isinstance(port, SecretStore) and isinstance(store, StateStore)


def test_round_trip_bytes_and_text(store: Store) -> None:
    link = add_link(store)
    store.save_secret(link, "google-refresh-token", TOKEN)
    store.save_secret(link, "caldav-password", PASSWORD)
    store.save_secret(link, "service-account", b"\x00\xff binary \n")
    assert store.load_secret(link, "google-refresh-token") == TOKEN.encode()
    assert store.load_secret(link, "caldav-password") == PASSWORD.encode("utf-8")
    assert store.load_secret(link, "service-account") == b"\x00\xff binary \n"
    assert store.load_secret(link, "other") is None
    assert store.load_secret(add_link(store, "101"), "caldav-password") is None


def test_saving_again_replaces_and_empty_is_a_value(store: Store) -> None:
    link = add_link(store)
    store.save_secret(link, "caldav-password", "old")
    store.save_secret(link, "caldav-password", "new")
    assert store.load_secret(link, "caldav-password") == b"new"
    store.save_secret(link, "caldav-password", b"")
    assert store.load_secret(link, "caldav-password") == b""
    assert len(raw_rows_of(store)) == 1


def raw_rows_of(store: Store) -> list[tuple[object, ...]]:
    with store._db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text("SELECT * FROM secrets"))]


def test_the_database_holds_ciphertext_with_its_key_id(
    store: Store, store_url: str, ring: KeyRing
) -> None:
    link = add_link(store)
    store.save_secret(link, "google-refresh-token", TOKEN)
    store.save_secret(link, "google-refresh-token", TOKEN)
    [row] = raw_rows(store_url)
    assert (row.link_id, row.kind, row.key_id) == (link, "google-refresh-token", ring.current_id)
    stored = bytes(row.ciphertext)
    assert TOKEN.encode() not in stored
    # version byte + 12-byte nonce + ciphertext + 16-byte tag
    assert stored[:1] == b"\x01" and len(stored) == 1 + 12 + len(TOKEN) + 16
    # a fresh nonce every time: the same value never looks the same twice
    store.save_secret(link, "google-refresh-token", TOKEN)
    assert bytes(raw_rows(store_url)[0].ciphertext) != stored


def test_without_a_key_secrets_are_refused_and_the_rest_works(store: Store, store_url: str) -> None:
    link = add_link(store)
    store.save_secret(link, "caldav-password", PASSWORD)
    with Store.open(store_url) as keyless:
        for call in (
            lambda: keyless.save_secret(link, "caldav-password", "x"),
            lambda: keyless.load_secret(link, "caldav-password"),
            keyless.rotate_secrets,
        ):
            with pytest.raises(StoreError) as info:
                call()
            assert str(info.value) == NO_KEY_MESSAGE
        assert [found.id for found in keyless.list_links()] == [link]
        # deleting needs no key
        assert keyless.delete_secrets(link) == 1
    assert "\n" not in NO_KEY_MESSAGE and "[secrets] key_file" in NO_KEY_MESSAGE


def test_a_store_opened_with_another_key_reveals_nothing(store: Store, store_url: str) -> None:
    link = add_link(store)
    store.save_secret(link, "google-refresh-token", TOKEN)
    other = KeyRing([new_key()], "/etc/pbxcal/other-keys")
    with Store.open(store_url, keys=other) as stranger, pytest.raises(StoreError) as info:
        stranger.load_secret(link, "google-refresh-token")
    message = str(info.value)
    used = raw_rows(store_url)[0].key_id
    assert message == (
        f"cannot decrypt secret 'google-refresh-token' of link {link}: it was encrypted "
        f"with key {used}, which is not in /etc/pbxcal/other-keys (keys: {other.current_id})"
    )
    assert TOKEN not in message


def test_a_ciphertext_copied_to_another_link_does_not_decrypt(store: Store, store_url: str) -> None:
    anna, bob = add_link(store, "100"), add_link(store, "101")
    store.save_secret(anna, "google-refresh-token", "anna's token")
    store.save_secret(bob, "google-refresh-token", "bob's token")
    anna_row = raw_rows(store_url)[0]
    # an attacker with write access to the database (not the key) gives bob anna's token
    set_raw(store_url, bob, "google-refresh-token", anna_row.key_id, bytes(anna_row.ciphertext))
    with pytest.raises(StoreError) as info:
        store.load_secret(bob, "google-refresh-token")
    assert str(info.value) == (
        f"cannot decrypt secret 'google-refresh-token' of link {bob} with key "
        f"{anna_row.key_id}: the stored value was altered or copied from another link or kind"
    )
    assert store.load_secret(anna, "google-refresh-token") == b"anna's token"


def test_a_ciphertext_copied_to_another_kind_does_not_decrypt(store: Store, store_url: str) -> None:
    link = add_link(store)
    store.save_secret(link, "caldav-password", PASSWORD)
    store.save_secret(link, "caldav-username", "anna")
    rows = {row.kind: row for row in raw_rows(store_url)}
    password = rows["caldav-password"]
    set_raw(store_url, link, "caldav-username", password.key_id, bytes(password.ciphertext))
    with pytest.raises(StoreError, match="altered or copied from another link or kind"):
        store.load_secret(link, "caldav-username")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # a flipped bit in the tag
        lambda b: b[:20] + bytes([b[20] ^ 0x80]) + b[21:],  # ... in the ciphertext
        lambda b: b[:5],  # truncated
        lambda b: b"\x02" + b[1:],  # an unknown format
    ],
)
def test_an_altered_ciphertext_is_a_clear_error(
    store: Store, store_url: str, damage: Callable[[bytes], bytes]
) -> None:
    link = add_link(store)
    store.save_secret(link, "caldav-password", PASSWORD)
    row = raw_rows(store_url)[0]
    set_raw(store_url, link, "caldav-password", row.key_id, damage(bytes(row.ciphertext)))
    with pytest.raises(StoreError) as info:
        store.load_secret(link, "caldav-password")
    assert str(info.value).startswith(f"cannot decrypt secret 'caldav-password' of link {link}")
    assert "damaged" in str(info.value) or "altered" in str(info.value)


def test_rotation_re_encrypts_with_the_current_key(store_url: str) -> None:
    old_key, new = new_key(), new_key()
    old_ring = KeyRing([old_key], "keys v1")
    with Store.open(store_url, keys=old_ring) as first:
        links = [add_link(first, str(100 + n)) for n in range(3)]
        for link in links:
            first.save_secret(link, "google-refresh-token", f"token of {link}")
            first.save_secret(link, "caldav-password", f"password of {link}")
    both = KeyRing([new, old_key], "keys v2")
    with Store.open(store_url, keys=both) as during:
        # a secret saved after the new key was put first already uses it
        during.save_secret(links[0], "caldav-password", "changed meanwhile")
        assert during.rotate_secrets() == 5
        assert {row.key_id for row in raw_rows(store_url)} == {both.current_id}
        assert during.rotate_secrets() == 0  # nothing left to do
    # the old key removed: everything still decrypts with the new one alone
    with Store.open(store_url, keys=KeyRing([new], "keys v3")) as after:
        assert after.load_secret(links[0], "caldav-password") == b"changed meanwhile"
        for link in links:
            assert after.load_secret(link, "google-refresh-token") == f"token of {link}".encode()
        for link in links[1:]:
            assert after.load_secret(link, "caldav-password") == f"password of {link}".encode()
    # and the old key alone no longer can
    with Store.open(store_url, keys=old_ring) as stale, pytest.raises(StoreError):
        stale.load_secret(links[1], "google-refresh-token")


def test_rotation_that_meets_an_unreadable_secret_changes_nothing(store_url: str) -> None:
    lost, kept, new = new_key(), new_key(), new_key()
    with Store.open(store_url, keys=KeyRing([kept])) as first:
        readable = add_link(first, "100")
        first.save_secret(readable, "caldav-password", "readable")
    with Store.open(store_url, keys=KeyRing([lost])) as other:
        unreadable = add_link(other, "101")
        other.save_secret(unreadable, "caldav-password", "written with a lost key")
    before = raw_rows(store_url)
    with Store.open(store_url, keys=KeyRing([new, kept], "the key file")) as rotating:
        with pytest.raises(StoreError) as info:
            rotating.rotate_secrets()
        assert f"secret 'caldav-password' of link {unreadable}" in str(info.value)
        assert "not in the key file" in str(info.value)
    assert raw_rows(store_url) == before


def test_delete_secrets_and_removing_the_link_delete_them(store: Store) -> None:
    keep, drop, remove = (add_link(store, ext) for ext in ("100", "101", "102"))
    for link in (keep, drop, remove):
        store.save_secret(link, "caldav-password", PASSWORD)
        store.save_secret(link, "caldav-username", "user")
    assert store.delete_secrets(drop) == 2
    assert store.delete_secrets(drop) == 0
    assert store.load_secret(drop, "caldav-password") is None
    store.remove_link(remove)
    assert {(row[0], row[1]) for row in raw_rows_of(store)} == {
        (keep, "caldav-password"),
        (keep, "caldav-username"),
    }


def test_config_links_removed_by_sync_config_links_take_their_secrets(store: Store) -> None:
    [link] = store.sync_config_links([("100", "main", "ics", "https://example.test/a.ics", {})])
    store.save_secret(link.id, "http-password", PASSWORD)
    store.sync_config_links([])
    assert raw_rows_of(store) == []


def test_unknown_link_bad_kind_and_too_large_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="no link with id 999"):
        store.save_secret(999, "caldav-password", PASSWORD)
    link = add_link(store)
    for kind in ("", "Caldav", "caldav password", "-x", "x" * 65, "pässword"):
        with pytest.raises(StoreError, match="a secret's kind is"):
            store.save_secret(link, kind, PASSWORD)
    with pytest.raises(StoreError, match="larger than 65536 bytes"):
        store.save_secret(link, "service-account", b"x" * (64 * 1024 + 1))
    assert raw_rows_of(store) == []


def test_error_messages_never_hold_the_secret(store: Store, store_url: str) -> None:
    link = add_link(store)
    store.save_secret(link, "caldav-password", PASSWORD)
    row = raw_rows(store_url)[0]
    set_raw(store_url, link, "caldav-password", row.key_id, bytes(row.ciphertext)[:-1] + b"\0")
    messages = []
    with pytest.raises(StoreError) as altered:
        store.load_secret(link, "caldav-password")
    messages.append(str(altered.value))
    with Store.open(store_url, keys=KeyRing([new_key(), new_key()])) as stranger:
        with pytest.raises(StoreError) as unknown:
            stranger.load_secret(link, "caldav-password")
        messages.append(str(unknown.value))
        with pytest.raises(StoreError) as rotating:
            stranger.rotate_secrets()
        messages.append(str(rotating.value))
    for message in messages:
        assert PASSWORD not in message and "\n" not in message
    assert PASSWORD not in repr(store)
