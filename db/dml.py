"""``INSERT … ON CONFLICT DO NOTHING`` that SQLAlchemy can cache (docs/database.md, "Idempotency").

SQLAlchemy 2.0's dialect inserts, which carry ON CONFLICT, are marked ``inherit_cache = False``: their
ON CONFLICT clause has no cache key, so every execution compiles the statement anew.  The persistence
worker inserts a batch per transaction, and at a few hundred messages per second in many channels its
batches are small: the compilation (``SQLCompiler.__init__`` under ``_compile_w_cache``) was an eighth of
the consumers process's CPU in ``storm bench e2e``.  A *target-less* ``DO NOTHING`` (skip the row on any
conflict) has no state at all, so it can take part in the cache key with an empty traversal; the insert
then inherits the standard INSERT's cache key, which includes that clause.  Statements with a conflict
target or ``DO UPDATE`` keep SQLAlchemy's own classes (uncached).  Guarded by tests/contract/
test_store_contract.py::test_insert_or_skip_is_cached_and_renders_like_sqlalchemys_own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import dml as pg_dml
from sqlalchemy.dialects.sqlite import dml as sqlite_dml


class _PgDoNothing(pg_dml.OnConflictDoNothing):
    inherit_cache = True
    _traverse_internals = []  # no target, no state: nothing for the cache key


class _PgInsert(pg_dml.Insert):
    inherit_cache = True


class _SqliteDoNothing(sqlite_dml.OnConflictDoNothing):
    inherit_cache = True
    _traverse_internals = []  # as above


class _SqliteInsert(sqlite_dml.Insert):
    inherit_cache = True


def insert_or_skip(dialect: str, table: Table) -> Any:
    """``INSERT INTO table … ON CONFLICT DO NOTHING`` for ``dialect`` (sqlite, postgresql, cockroachdb)."""
    if dialect == "sqlite":
        statement: Any = _SqliteInsert(table)
        statement._post_values_clause = _SqliteDoNothing()
    elif dialect in ("postgresql", "cockroachdb"):
        statement = _PgInsert(table)
        statement._post_values_clause = _PgDoNothing()
    else:
        raise NotImplementedError(f"the SQL store does not support the {dialect!r} dialect")
    return statement
