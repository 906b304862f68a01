"""Bringing a database's schema up to this pbxcal's head revision, or refusing to.

What it does: on one connection inside one transaction, reads the database's Alembic
revision; refuses (``SchemaTooNew``, nothing changed) a revision this code does not know,
i.e. one written by a newer pbxcal; otherwise upgrades to head. On PostgreSQL an advisory
lock serialises two processes migrating at once; on SQLite the caller's ``BEGIN
IMMEDIATE`` does. What it must not do: need an ``alembic.ini`` (the script location is
this package's ``migrations`` directory) or touch logging configuration.

Start reading at ``upgrade``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from pbxcal.errors import SchemaTooNew

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Any constant works; it only has to be the same in every pbxcal process.
_PG_MIGRATION_LOCK = 0x70627863616C  # "pbxcal"


def alembic_config() -> Config:
    """An Alembic config pointing at the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest revision this pbxcal knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision, or None for an empty database."""
    heads = MigrationContext.configure(connection).get_current_heads()
    return ",".join(sorted(heads)) if heads else None


def upgrade(connection: Connection) -> str:
    """Migrate the database behind ``connection`` (in a transaction) to head; return it.

    Raises ``SchemaTooNew`` before changing anything when the database's revision is not
    one of ours. The caller commits (or rolls back on error).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    head = head_revision()
    known = {script.revision for script in scripts.walk_revisions()}
    heads = MigrationContext.configure(connection).get_current_heads()
    for revision in heads:
        if revision not in known:
            raise SchemaTooNew(
                f"database schema {revision} is newer than this pbxcal ({head}); "
                "upgrade pbxcal or restore a backup"
            )
    if tuple(heads) != (head,):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head
