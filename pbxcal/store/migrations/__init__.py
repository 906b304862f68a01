"""Alembic migrations of the store's schema (run by ``pbxcal.store.migrate`` on open).

``env.py`` is Alembic's entry point; ``versions/`` holds one file per revision, oldest
``0001_initial``. A migration is a frozen snapshot: it spells its tables out instead of using
``schema.py``'s, which describe only the newest revision (column types such as
``UtcDateTime`` are shared and must stay importable).
"""
