"""One Alembic revision per file; revision ids are the zero-padded file number."""
