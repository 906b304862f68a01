"""Secrets at rest in an SQLite store: the bytes on disk never hold a secret in clear text.

The database file and its rollback journal are read while each write transaction is
about to commit (the journal then holds the pages being replaced) and after it, through
saving, replacing, rotating and deleting secrets; a copy of the file opened without the
key, or with another key, reveals nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pbxcal.store import KeyRing, Store, StoreError
from pbxcal.store.secrets import new_key

SECRETS = (
    b"ya29.Refresh-Token-4f0c2a9e-do-not-leak",
    "Wachtwoord-met-ümlaut-91".encode(),
    b'{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----MIIEv"}',
)


class DiskWatch:
    """Snapshots of the database file and its journal, taken at every commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = Path(f"{path}-journal")
        self.snapshots: list[tuple[str, bytes]] = []

    def take(self, *_args: Any) -> None:
        for name, path in (("db", self.path), ("journal", self.journal)):
            if path.exists():
                self.snapshots.append((name, path.read_bytes()))

    def live_journal_seen(self) -> bool:
        return any(name == "journal" and data for name, data in self.snapshots)


def assert_no_secret(data: bytes, where: str) -> None:
    for secret in SECRETS:
        assert secret not in data, f"{where} holds a secret in clear text"
        # nor a long piece of it
        assert secret[4:20] not in data, f"{where} holds part of a secret in clear text"


def test_the_store_file_and_its_journal_never_hold_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old, new = new_key(), new_key()
    watch = DiskWatch(path)
    with Store.open(f"sqlite:///{path}", keys=KeyRing([old])) as store:
        sa.event.listen(store._db.engine, "commit", watch.take)
        links = [store.add_link(str(100 + n), "main", "google", f"g{n}").id for n in range(3)]
        for link, secret in zip(links, SECRETS, strict=True):
            store.save_secret(link, "credential", secret)
        for link, secret in zip(links, SECRETS, strict=True):
            store.save_secret(link, "credential", secret)  # replaced: old page in the journal
            assert store.load_secret(link, "credential") == secret
    with Store.open(f"sqlite:///{path}", keys=KeyRing([new, old])) as store:
        sa.event.listen(store._db.engine, "commit", watch.take)
        assert store.rotate_secrets() == len(SECRETS)
        assert store.delete_secrets(links[0]) == 1
        store.remove_link(links[1])
        assert store.load_secret(links[2], "credential") == SECRETS[2]
    watch.take()
    assert watch.live_journal_seen(), "no write transaction was observed with its journal"
    assert len(watch.snapshots) > 10
    for where, data in watch.snapshots:
        assert_no_secret(data, where)
    for leftover in tmp_path.iterdir():
        assert_no_secret(leftover.read_bytes(), leftover.name)


def test_a_copied_store_file_without_its_key_reveals_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(f"sqlite:///{path}", keys=KeyRing([new_key()])) as store:
        link = store.add_link("100", "main", "caldav", "https://dav.example/anna/").id
        store.save_secret(link, "caldav-password", SECRETS[1])
        # the bytes the grep looks for are really in the file, in their encrypted form
        with store._db.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT ciphertext FROM secrets")).scalar_one()
    copy = tmp_path / "stolen.db"
    shutil.copyfile(path, copy)
    assert bytes(stored) in copy.read_bytes()
    assert_no_secret(copy.read_bytes(), "the copy")
    with Store.open(f"sqlite:///{copy}") as keyless, pytest.raises(StoreError):
        keyless.load_secret(link, "caldav-password")
    guess = KeyRing([new_key()])
    with (
        Store.open(f"sqlite:///{copy}", keys=guess) as store,
        pytest.raises(StoreError, match="not in"),
    ):
        store.load_secret(link, "caldav-password")
