"""``Store``: the one object ``Store.open(url)`` returns, made of one mixin per table group.

What it does: opens the database (``engine.Database``), migrates it to this pbxcal's
schema (refusing a newer one), and offers every call of the tables' mixins on one
object: links (``links``), events with their sync state (``events``), applied state
(``applied``), sync history (``synclog``), saved expansions (``expansions``) and
encrypted link secrets (``secrets``), the push channels every process's webhook
checks (``push_channels``), and the portal's and admin API's invitations,
OAuth flows, admin tokens and audit log (``portal``). Every call runs in its own connection and
transaction, so a ``Store`` can be shared by threads (the daemon calls it from worker
threads, never from the event loop). Consumers should type against the small protocols
in ``ports`` rather than this class.

What it must not do: hold state of its own beyond the engine and the key ring (two
processes share the database), or add calls here that belong to one table group.

Start reading at ``Store.open``.
"""

from __future__ import annotations

from pbxcal.store import migrate
from pbxcal.store.applied import AppliedTable
from pbxcal.store.booking import BookingTable
from pbxcal.store.engine import Database
from pbxcal.store.events import EventTable
from pbxcal.store.expansions import ExpansionTable
from pbxcal.store.links import LinkTable
from pbxcal.store.portal import PortalTable
from pbxcal.store.push_channels import PushChannelTable
from pbxcal.store.secrets import KeyRing, SecretTable
from pbxcal.store.synclog import SyncLogTable


class Store(
    LinkTable,
    EventTable,
    AppliedTable,
    SyncLogTable,
    ExpansionTable,
    SecretTable,
    PortalTable,
    BookingTable,
    PushChannelTable,
):
    """The state store. Create with ``Store.open(url)``; every method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    def open(cls, url: str, keys: KeyRing | None = None) -> Store:
        """Open (or create) the store at ``url`` and migrate it to this pbxcal's schema.

        ``url`` is ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db`` or
        ``postgresql://user:pw@host/db`` (psycopg 3 is used for a bare ``postgresql``).
        Raises ``SchemaTooNew`` for a database written by a newer pbxcal (nothing is
        changed) and ``StoreError`` with a one-line reason for anything else. ``keys``
        encrypt and decrypt link secrets (``secrets``); without them the secret calls
        raise ``StoreError`` and everything else works.
        """
        database = Database.open(url)
        try:
            with database.transaction(write=True, action="cannot open store") as conn:
                migrate.upgrade(conn)
        except BaseException:
            database.close()
            raise
        store = cls(database)
        store.use_keys(keys)
        return store

    def close(self) -> None:
        """Close all pooled connections; the store cannot be used afterwards."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self._db.where}>"
