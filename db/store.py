"""SqlStore: the SQL adapter of the Store port (:mod:`storm.ports.store`).  See docs/database.md.

One class for SQLite (dev, tests), PostgreSQL (tests) and CockroachDB (production), chosen by the URL.
Lifecycle as in aiokafka: no I/O in ``__init__``; ``start()`` builds the engine (and runs the migrations
when asked) and refuses a second call; ``stop()`` is idempotent.  Transactions are units of work
(cosmicpython): they roll back unless committed and collect events for publishing after commit.
PostgreSQL runs SERIALIZABLE like CockroachDB always does, so the 40001 retry path of :meth:`SqlStore.run`
is exercised by the PostgreSQL tests rather than only in production.
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Executable, Result, event, exc, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from db import migrate
from db.errors import RetriesExhausted, is_serialization_failure, translate, translated
from db.repositories import (
    SqlChannelRepository,
    SqlMembershipRepository,
    SqlMessageRepository,
    SqlReactionRepository,
    SqlReadMarkerRepository,
    SqlUserRepository,
    SqlWebhookRepository,
    SqlWorkspaceRepository,
)
from storm.config import ConfigError
from storm.errors import Unavailable
from storm.lifecycle import Lifecycle
from storm.ports.store import ReadOnlyError, UnitOfWork

if TYPE_CHECKING:
    from storm.ports.store import CountsRetries, Store

T = TypeVar("T")
log = logging.getLogger("storm.db")

# (backend, driver) -> isolation level the engine sets on every connection.  The URL picks the dialect:
# sqlalchemy-cockroachdb registers cockroachdb+asyncpg and cockroachdb+psycopg (its async psycopg 3 class).
# CockroachDB runs SERIALIZABLE by default; PostgreSQL is made to, so that both abort conflicting
# transactions with 40001 and run() is tested against real serialization failures.
DIALECTS: dict[tuple[str, str], str | None] = {
    ("sqlite", "aiosqlite"): None,  # one writer at a time (file lock): serialisable by construction
    ("postgresql", "asyncpg"): "SERIALIZABLE",
    ("postgresql", "psycopg"): "SERIALIZABLE",
    ("cockroachdb", "asyncpg"): "SERIALIZABLE",
    ("cockroachdb", "psycopg"): "SERIALIZABLE",
}


def parse_url(url: str) -> tuple[str, str]:
    """(backend, driver) of a supported async URL, else ConfigError naming STORM_DATABASE_URL."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError for a malformed URL
        raise ConfigError(f"STORM_DATABASE_URL is not a database URL: {exc}") from None
    key = (parsed.get_backend_name(), parsed.get_driver_name())
    if key not in DIALECTS:
        supported = ", ".join(f"{b}+{d}://" for b, d in DIALECTS)
        raise ConfigError(f"STORM_DATABASE_URL scheme {parsed.drivername!r} is not supported; use one of "
                          f"{supported}")
    return key


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts of a transaction that lost a serialization conflict: "full jitter"
    (uniform in [0, min(cap, base·2^attempt)]), so the losers of one conflict do not collide again."""

    base_s: float = 0.010
    cap_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2 ** attempt)))


class _Connection:
    """What a unit of work's repositories execute on: one of the engine's connections, checked out at the
    first statement (a unit of work that runs none checks out nothing) and given back by :meth:`close`.

    SQLAlchemy Core, not an ORM ``AsyncSession``: the repositories only execute Core statements, and the
    session's machinery around each of them (its transaction state, the ORM execution path, the session
    itself per unit of work) was about half of the CPU of a one-statement unit of work on PostgreSQL
    (≈ 470 µs against ≈ 230 µs: docs/benchmarks.md "The SQL around a connect").  The connection begins a
    transaction at its first statement (autobegin) and again after each commit, as the session did."""

    __slots__ = ("_conn", "_engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._engine.connect()
        return await conn.execute(statement, parameters)

    async def commit(self) -> None:
        if self._conn is not None:
            await self._conn.commit()

    async def rollback(self) -> None:
        if self._conn is not None:
            await self._conn.rollback()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()  # rolls back what was not committed and returns the connection to the pool


class SqlUnitOfWork:
    """One transaction.  Use as ``async with``; leaving without :meth:`commit` rolls back.  ``read_only``:
    no transaction on PostgreSQL/CockroachDB (the engine given runs its connections in ``AUTOCOMMIT`` and
    refuses statements that write: see :func:`_refuse_writes`), and :meth:`commit` raises ``ReadOnlyError``."""

    def __init__(self, engine: AsyncEngine, dialect: str, *, read_only: bool = False) -> None:
        self._engine = engine
        self._dialect = dialect
        self.read_only = read_only
        self._conn: _Connection | None = None
        self.events: list[Any] = []

    async def __aenter__(self) -> SqlUnitOfWork:
        if self._conn is not None:
            raise RuntimeError("this unit of work is already open")
        conn = self._conn = _Connection(self._engine)
        self.workspaces = SqlWorkspaceRepository(conn, self._dialect)
        self.users = SqlUserRepository(conn, self._dialect)
        self.memberships = SqlMembershipRepository(conn, self._dialect)
        self.channels = SqlChannelRepository(conn, self._dialect)
        self.messages = SqlMessageRepository(conn, self._dialect)
        self.reactions = SqlReactionRepository(conn, self._dialect)
        self.read_markers = SqlReadMarkerRepository(conn, self._dialect)
        self.webhooks = SqlWebhookRepository(conn, self._dialect)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.close()  # rolls back whatever was not committed and returns the connection
        except Exception as error:
            if exc is not None:  # do not hide the error that ended the block
                log.warning("closing a failed unit of work failed too: %s", error)
                return
            mapped = translate(error)
            if mapped is None:
                raise
            raise mapped from error

    def _open(self) -> _Connection:
        if self._conn is None:
            raise RuntimeError("use the unit of work inside 'async with'")
        return self._conn

    async def commit(self) -> None:
        conn = self._open()
        if self.read_only:
            raise ReadOnlyError("this unit of work was opened read_only: there is nothing to commit")
        with translated():  # SERIALIZABLE conflicts often surface only here
            await conn.commit()

    async def rollback(self) -> None:
        conn = self._open()
        with translated():
            await conn.rollback()


@dataclass(frozen=True, slots=True)
class PoolSize:
    """The connection pool of a PostgreSQL/CockroachDB store (SQLite uses its own pools):
    ``STORM_DB_POOL_SIZE``, ``STORM_DB_POOL_OVERFLOW``, ``STORM_DB_POOL_TIMEOUT_S`` (docs/database.md).
    A wait longer than ``timeout_s`` for a connection raises SQLAlchemy's ``TimeoutError``, which the
    store answers as ``Unavailable`` (clients retry) rather than holding a handshake past its deadline."""

    size: int = 10
    overflow: int = 10
    timeout_s: float = 10.0


class SqlStore:
    """The Store port over SQLAlchemy's asyncio engine.  ``url`` is an async SQLAlchemy URL
    (``sqlite+aiosqlite:///file.db``, ``postgresql+asyncpg://…``, ``cockroachdb+asyncpg://…``)."""

    def __init__(self, url: str, *, echo: bool = False, create_schema: bool = True,
                 pool: PoolSize | None = None) -> None:
        self._url = url
        self._pool = pool or PoolSize()
        self._dialect, self._driver = parse_url(url)  # parsing only: a malformed URL fails early
        self._echo = echo
        self._create_schema = create_schema
        self._engine: AsyncEngine | None = None
        self._reads: AsyncEngine | None = None  # the engine of unit_of_work(read_only=True): same pool
        self._life = Lifecycle("store")
        self.retry_policy = RetryPolicy()
        self.serialization_retries = 0  # a counter for tests and metrics: attempts run again after 40001
        self.serialization_gave_up = 0  # run() calls that ended in RetriesExhausted

    @property
    def dialect(self) -> str:
        """'sqlite', 'postgresql' or 'cockroachdb' (known before start: it comes from the URL)."""
        return self._dialect

    @property
    def driver(self) -> str:
        """'aiosqlite', 'asyncpg' or 'psycopg'."""
        return self._driver

    @property
    def isolation_level(self) -> str | None:
        """What every connection is set to ('SERIALIZABLE' on PostgreSQL and CockroachDB; None on SQLite,
        whose file lock admits one writer at a time)."""
        return DIALECTS[(self._dialect, self._driver)]

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not started")
        return self._engine

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._life.begin_start()
        engine = self._create_engine()
        try:
            if self._create_schema:
                async with engine.begin() as conn:
                    await conn.run_sync(migrate.upgrade)
        except BaseException as exc:
            await engine.dispose()
            self._life.start_failed(retry=True)  # e.g. the database was not up yet: start() may be tried again
            mapped = translate(exc) if isinstance(exc, Exception) else None
            if mapped is None:
                raise
            raise mapped from exc
        if not self._life.started():  # stop() ran while the migrations ran
            await engine.dispose()
            return
        self._engine = engine
        self._reads = self._read_engine(engine)

    def _read_engine(self, engine: AsyncEngine) -> AsyncEngine:
        """The engine of read-only units of work: the same pool, its connections in ``AUTOCOMMIT`` while
        they are checked out on PostgreSQL/CockroachDB (no ``BEGIN``/``ROLLBACK`` round trips; setting the
        level is no round trip with asyncpg or psycopg), every statement checked to be a read."""
        options: dict[str, Any] = {} if self._dialect == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
        reads = engine.execution_options(**options)
        event.listen(reads.sync_engine, "before_cursor_execute", _refuse_writes)  # this engine's only
        return reads

    async def stop(self) -> None:
        engine, self._engine, self._reads = self._engine, None, None
        self._life.begin_stop()
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> SqlStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if getattr(self, "_engine", None) is not None:  # __init__ may have refused the URL
            warnings.warn(f"SqlStore({self.dialect}) was started and never stopped", ResourceWarning,
                          stacklevel=1, source=self)

    def _create_engine(self) -> AsyncEngine:
        url = make_url(self._url)
        options: dict[str, Any] = {"echo": self._echo}
        backend = self._dialect
        if backend == "sqlite":
            if url.database in (None, "", ":memory:"):
                # An in-memory database lives in one connection: share it (one task at a time).
                options["poolclass"] = StaticPool
            else:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        else:  # postgresql, cockroachdb (see DIALECTS)
            options["isolation_level"] = self.isolation_level
            # SQLAlchemy's pre-ping on asyncpg is three round trips per checkout (BEGIN, ";", ROLLBACK: its
            # pgbouncer support); asyncpg reads every pooled socket, so a connection the server closed is
            # known closed without asking (_drop_closed).  psycopg does not watch idle sockets: it pings.
            options["pool_pre_ping"] = self._driver != "asyncpg"
            options["pool_size"] = self._pool.size
            options["max_overflow"] = self._pool.overflow
            options["pool_timeout"] = self._pool.timeout_s
        engine = create_async_engine(url, **options)
        if backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        elif self._driver == "asyncpg":
            event.listen(engine.sync_engine, "checkout", _drop_closed)
        return engine

    # -- units of work --------------------------------------------------------------------------------
    def unit_of_work(self, *, read_only: bool = False) -> SqlUnitOfWork:
        engine = self._reads if read_only else self._engine
        if engine is None:
            raise RuntimeError("the store is not started")
        return SqlUnitOfWork(engine, self.dialect, read_only=read_only)

    async def run(self, fn: Callable[[UnitOfWork], Awaitable[T]], *, retries: int = 5) -> T:
        """Run ``fn`` in a fresh unit of work and commit; on a serialization failure (SQLSTATE 40001) run it
        all again, up to ``retries`` more times with jittered exponential backoff, then raise
        :class:`~db.errors.RetriesExhausted` (an ``Unavailable``) naming the number of attempts.
        ``fn`` may therefore run more than once: it must not have side effects outside the unit of work
        (events go on ``uow.events`` and are published by the caller after this returns).  Every retry
        adds one to ``serialization_retries`` and logs an INFO line on ``storm.db``."""
        if retries < 0:
            raise ValueError("retries must be >= 0")
        attempt = 0
        while True:
            try:
                async with self.unit_of_work() as uow:
                    result = await fn(uow)
                    await uow.commit()
                return result
            except Exception as exc:
                if not is_serialization_failure(exc):
                    raise
                if attempt >= retries:
                    self.serialization_gave_up += 1
                    log.warning("serialization failure on all %d attempts; giving up: %s", attempt + 1, exc)
                    raise RetriesExhausted(
                        f"transaction still conflicting after {attempt + 1} attempts; try again later",
                        attempts=attempt + 1) from exc
                delay = self.retry_policy.delay(attempt)
                attempt += 1
                self.serialization_retries += 1
                log.info("serialization failure, retry %d/%d in %.3fs: %s", attempt, retries, delay, exc)
                await asyncio.sleep(delay)

    async def ping(self) -> None:
        if self._engine is None:
            raise Unavailable("the store is not started")
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise Unavailable(f"database unreachable: {exc}") from exc


def _drop_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pool ``checkout`` on asyncpg, instead of the pre-ping: a pooled connection whose socket the server
    closed (a restart, a failover, ``pg_terminate_backend``, an idle timeout) is thrown away and another
    checked out (SQLAlchemy's pessimistic disconnect handling by event).  asyncpg's protocol reads every
    idle socket, so the close is seen as soon as the event loop has run once after it; a connection that
    died silently (no FIN: a partition) fails its first statement instead, which the store answers as
    ``Unavailable`` and SQLAlchemy follows by recycling the pool (docs/database.md)."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise exc.DisconnectionError("the server closed this pooled connection")


_READS = ("SELECT", "SHOW")  # not WITH: a CTE may write (the messages' INSERT ... is one)


def _refuse_writes(_conn: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any,
                   _executemany: bool) -> None:
    """``before_cursor_execute`` of the read-only engine: in ``AUTOCOMMIT`` a write would commit at once,
    outside any unit of work, so it is refused before it reaches the database."""
    if not statement[:32].lstrip()[:6].upper().startswith(_READS):  # a slice: no copy of a long statement
        raise ReadOnlyError(f"a read-only unit of work does not write: {statement.split(None, 1)[0]!r}")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Enforce the foreign keys as PostgreSQL does, so both backends answer the contract suite alike.
    cursor.execute("PRAGMA foreign_keys=ON")
    # Readers do not wait for the writer (dev servers read history while they write messages).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)

    def _conforms(store: SqlStore, uow: SqlUnitOfWork) -> None:
        _store: Store = store
        _counts: CountsRetries = store
        _uow: UnitOfWork = uow
