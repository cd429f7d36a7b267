"""CockroachDB multi-region DDL for the STORM schema.  See docs/database.md ("CockroachDB multi-region").

**Never run against a real CockroachDB cluster** (no package registry ships its server, so none was
available to this project); the statements follow CockroachDB's documented grammar and are checked as text
by tests/integration/test_db_multiregion.py.  docs/database.md lists what to verify on a real cluster.

The layout:

* the database gets a primary region (the first one given), the other regions, and a survival goal
  (``ZONE`` by default; ``REGION`` needs at least three regions);
* ``GLOBAL`` tables, read everywhere with low latency and written rarely: ``workspaces`` and ``users``
  (every authentication reads them; plans are code, :data:`storm.domain.PLANS`, not a table);
* ``REGIONAL BY ROW`` tables, every tenant-owned table: each row has a home region in the hidden
  ``crdb_region`` column that CockroachDB adds with ``SET LOCALITY REGIONAL BY ROW`` (type
  ``crdb_internal_region``, default: the region of the node that inserted the row, else the primary
  region).  Tables not listed stay ``REGIONAL BY TABLE`` in the primary region, CockroachDB's default.

These are not an Alembic revision: which regions a deployment has is not part of the schema's history.
:func:`apply` takes a SQLAlchemy ``Connection`` (what ``alembic.op.get_bind()`` returns and what
``AsyncConnection.run_sync`` passes), so it can be called from a revision or after ``upgrade``, which is
what ``storm migrate --regions eu-west1,eu-central1`` does (db/migrate.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

GLOBAL_TABLES = ("workspaces", "users")
REGIONAL_BY_ROW_TABLES = ("memberships", "channels", "channel_members", "messages", "reactions", "read_markers",
                          "webhooks", "incoming_webhooks", "webhook_deliveries")
SURVIVAL_GOALS = ("zone", "region")

# CockroachDB region names come from the nodes' --locality flags (e.g. "eu-west1", "aws-us-east-1").
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class MultiRegionError(ValueError):
    """Bad region list or survival goal, or multi-region DDL asked of a database that is not CockroachDB."""


def parse_regions(text: str) -> list[str]:
    """``"eu-west1, eu-central1"`` -> ``["eu-west1", "eu-central1"]`` (validated, order kept)."""
    regions = [part.strip() for part in text.split(",") if part.strip()]
    _check_regions(regions)
    return regions


def _check_regions(regions: Sequence[str]) -> None:
    if not regions:
        raise MultiRegionError("give at least one region (the first is the primary region)")
    for region in regions:
        if not _REGION.match(region):
            raise MultiRegionError(f"region {region!r} is not a CockroachDB region name "
                                   "(lower-case letters, digits and '-')")
    duplicates = sorted({r for r in regions if regions.count(r) > 1})
    if duplicates:
        raise MultiRegionError(f"region listed twice: {', '.join(duplicates)}")


def statements(database: str, regions: Sequence[str], *, survive: str = "zone") -> list[str]:
    """The DDL, in the order it must run, for ``database`` spread over ``regions`` (first = primary)."""
    _check_regions(regions)
    if not _DATABASE.match(database):
        raise MultiRegionError(f"database name {database!r} is not a plain identifier")
    if survive not in SURVIVAL_GOALS:
        raise MultiRegionError(f"survival goal {survive!r}: expected one of {', '.join(SURVIVAL_GOALS)}")
    if survive == "region" and len(regions) < 3:
        raise MultiRegionError("SURVIVE REGION FAILURE needs at least 3 regions")
    db = f'"{database}"'
    primary, *others = regions
    ddl = [f'ALTER DATABASE {db} SET PRIMARY REGION "{primary}"']
    ddl += [f'ALTER DATABASE {db} ADD REGION IF NOT EXISTS "{region}"' for region in others]
    ddl.append(f"ALTER DATABASE {db} SURVIVE {survive.upper()} FAILURE")
    ddl += [f"ALTER TABLE {table} SET LOCALITY GLOBAL" for table in GLOBAL_TABLES]
    ddl += [f"ALTER TABLE {table} SET LOCALITY REGIONAL BY ROW" for table in REGIONAL_BY_ROW_TABLES]
    return ddl


def apply(connection: Any, regions: Sequence[str], *, survive: str = "zone") -> list[str]:
    """Run :func:`statements` for the connection's current database, one statement at a time, and return
    them.  Refuses (MultiRegionError, nothing run) unless the connection's dialect is ``cockroachdb``.
    CockroachDB runs each schema change as a job; give it an AUTOCOMMIT connection so that no statement
    shares a transaction with another (what ``storm migrate`` does)."""
    from sqlalchemy import text

    name = connection.dialect.name
    if name != "cockroachdb":
        raise MultiRegionError(f"multi-region DDL is CockroachDB-only; this database is {name}")
    database = connection.execute(text("SELECT current_database()")).scalar_one()
    ddl = statements(str(database), regions, survive=survive)
    for statement in ddl:
        connection.execute(text(statement))
    return ddl
