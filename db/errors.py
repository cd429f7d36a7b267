"""Translate database errors into STORM errors.  See docs/database.md ("Transactions and retries").

* serialization failures (SQLSTATE 40001, CockroachDB's "restart transaction") become
  :class:`SerializationFailure`, a retriable :class:`~storm.errors.Unavailable` that ``SqlStore.run``
  retries;
* unique violations become :class:`~storm.errors.Conflict` naming what already exists;
* foreign-key violations (a row of a workspace that does not exist) become
  :class:`~storm.errors.NotFound`;
* lost connections, refused connections and timeouts become :class:`~storm.errors.Unavailable`.

Anything else (a syntax error, a bad type) is our bug and propagates unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from sqlalchemy import exc as sa_exc

from storm.errors import Conflict, NotFound, Unavailable

SERIALIZATION_FAILURE = "40001"
_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"
# Class 08 (connection exception), server shutting down, cannot connect now, too many connections.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")

# constraint name (PostgreSQL/CockroachDB) or "table.column" list (SQLite's message) -> (message, field)
_CONFLICTS: dict[str, tuple[str, str]] = {
    "uq_workspaces_slug": ("a workspace with this slug already exists", "slug"),
    "workspaces.slug": ("a workspace with this slug already exists", "slug"),
    "pk_workspaces": ("a workspace with this id already exists", "id"),
    "workspaces.id": ("a workspace with this id already exists", "id"),
    "uq_users_subject": ("a user with this identity subject already exists", "subject"),
    "users.subject": ("a user with this identity subject already exists", "subject"),
    "pk_users": ("a user with this id already exists", "id"),
    "users.id": ("a user with this id already exists", "id"),
    "pk_memberships": ("the user is already a member of this workspace", "user_id"),
    "memberships.workspace_id, memberships.user_id": ("the user is already a member of this workspace",
                                                      "user_id"),
    "uq_channels_workspace_id_name": ("the workspace already has a channel of that name", "name"),
    "channels.workspace_id, channels.name": ("the workspace already has a channel of that name", "name"),
    "pk_channels": ("a channel with this id already exists", "id"),
    "channels.id": ("a channel with this id already exists", "id"),
}


class SerializationFailure(Unavailable):
    """The transaction lost a conflict with a concurrent one; running it again may succeed."""


class RetriesExhausted(Unavailable):
    """``SqlStore.run`` lost the serialization conflict on every attempt and gave up.  Still an
    ``Unavailable`` (code ``unavailable``, HTTP 503, retriable later), but no longer a serialization failure:
    an enclosing retry loop must not start the whole sequence of attempts again."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the DBAPI error SQLAlchemy wraps and their causes (asyncpg's originals)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([getattr(e, "orig", None), e.__cause__, e.__context__])


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE carried by the error or one it wraps (asyncpg: ``sqlstate``; psycopg: ``sqlstate``;
    psycopg2 and SQLAlchemy's asyncpg adapter: ``pgcode``)."""
    for e in _chain(exc):
        for attr in ("sqlstate", "pgcode"):
            code = getattr(e, attr, None)
            if isinstance(code, str) and code:
                return code
    return None


def is_serialization_failure(exc: BaseException) -> bool:
    """True when running the whole transaction again may succeed (SQLSTATE 40001 in any driver's shape)."""
    if isinstance(exc, RetriesExhausted):  # its cause is a 40001, but the retries are spent
        return False
    for e in _chain(exc):
        if isinstance(e, SerializationFailure):
            return True
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if code == SERIALIZATION_FAILURE:
            return True
        # CockroachDB asks clients to retry with this text, whatever the driver did with the code.
        if "restart transaction" in str(e).lower():
            return True
    return _driver_says_serialization(exc)


def _driver_says_serialization(exc: BaseException) -> bool:
    classes = _driver_serialization_classes()
    return bool(classes) and any(isinstance(e, classes) for e in _chain(exc))


@functools.cache
def _driver_serialization_classes() -> tuple[type[BaseException], ...]:
    """The drivers' own 40001 classes, looked up once: an optional driver that is not installed would
    otherwise be searched for on the import path at every translated error (a gateway under a pool
    shortage translates thousands a second)."""
    classes: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):  # optional drivers
        from asyncpg.exceptions import SerializationError

        classes.append(SerializationError)
    with contextlib.suppress(ImportError):
        from psycopg.errors import SerializationFailure as PsycopgSerializationFailure

        classes.append(PsycopgSerializationFailure)
    return tuple(classes)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    if code and code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
        return True
    classes: tuple[type[BaseException], ...] = (
        OSError, sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
        *_asyncpg_connection_errors(),
    )
    return any(isinstance(e, classes) for e in _chain(exc))


@functools.cache
def _asyncpg_connection_errors() -> tuple[type[BaseException], ...]:
    try:
        from asyncpg import exceptions
    except ImportError:  # asyncpg is an optional extra
        return ()
    return (exceptions.PostgresConnectionError, exceptions.InterfaceError)


def _constraint_name(exc: BaseException) -> str | None:
    for e in _chain(exc):
        name = getattr(e, "constraint_name", None)  # asyncpg
        if name:
            return str(name)
        diag = getattr(e, "diag", None)  # psycopg
        if diag is not None and getattr(diag, "constraint_name", None):
            return str(diag.constraint_name)
    return None


def _conflict(exc: sa_exc.IntegrityError) -> Conflict:
    name = _constraint_name(exc)
    if name and name in _CONFLICTS:
        message, field = _CONFLICTS[name]
        return Conflict(message, field=field)
    text = str(exc.orig)
    # SQLite: "UNIQUE constraint failed: channels.workspace_id, channels.name"
    _, _, columns = text.partition("constraint failed: ")
    if columns.strip() in _CONFLICTS:
        message, field = _CONFLICTS[columns.strip()]
        return Conflict(message, field=field)
    return Conflict(f"already exists ({name or text.splitlines()[0]})")


def translate(exc: BaseException) -> BaseException | None:
    """The STORM error ``exc`` stands for, or None when it should propagate unchanged."""
    if isinstance(exc, SerializationFailure | Conflict | NotFound | Unavailable):
        return None
    if is_serialization_failure(exc):
        return SerializationFailure(f"serialization failure, retry the transaction: {_first_line(exc)}")
    if isinstance(exc, sa_exc.IntegrityError):
        code = sqlstate(exc)
        text = str(exc.orig)
        if code == _FOREIGN_KEY_VIOLATION or "FOREIGN KEY constraint failed" in text:
            return NotFound("the workspace does not exist", field="workspace_id")
        if code == _UNIQUE_VIOLATION or "UNIQUE constraint failed" in text:
            return _conflict(exc)
        return None  # NOT NULL / CHECK violations: a bug in the caller, not a conflict
    if _is_connection_error(exc):
        return Unavailable(f"database unavailable: {_first_line(exc)}")
    return None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Run a block, re-raising database errors as STORM errors (the original is the ``__cause__``)."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:300]
