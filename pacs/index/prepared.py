"""Core statements compiled once per dialect and run on the DB-API cursor.

The store path runs the same eight or nine statements for every instance. Through
``Connection.execute`` each costs SQLAlchemy's cache-key walk, execution context and result
wrapping: measured, SQLAlchemy was 45% of the Python time of a C-STORE under load. A
:class:`Prepared` statement is compiled by SQLAlchemy once per dialect and set of parameter
names (so the SQL text, parameter order and type conversions are SQLAlchemy's own), then
executed on the raw DB-API connection of the same transaction.

Only for statements whose results need no type conversion (ids, counts, text columns): the
DB-API values come back as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


class Prepared:
    """One Core statement (SELECT, INSERT, UPDATE with bound parameters), ready to run cheaply."""

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def _plan(self, conn: Connection, keys: tuple[str, ...]) -> tuple[str, Any]:
        dialect = conn.dialect
        key = (dialect.name, keys)
        plan = self._plans.get(key)
        if plan is None:
            # SQLCompiler internals (SQLAlchemy 2.0): bind processors, binds, positional order.
            compiled: Any = self.stmt.compile(dialect=dialect, column_keys=list(keys))
            processors = dict(compiled._bind_processors)
            # Values the statement carries itself (the 1 of "count + 1"), converted once.
            static = {}
            for name, bp in compiled.binds.items():
                if name not in keys:
                    value = bp.effective_value
                    static[name] = processors[name](value) if name in processors else value
            if dialect.positional:
                names = tuple(compiled.positiontup or ())

                def positional(params: Mapping[str, Any]) -> Sequence[Any]:
                    out = []
                    for n in names:
                        if n in static:
                            out.append(static[n])
                        else:
                            v = params[n]
                            out.append(processors[n](v) if n in processors else v)
                    return out

                convert: Any = positional
            else:

                def named(params: Mapping[str, Any]) -> Mapping[str, Any]:
                    out = dict(static)
                    for n, v in params.items():
                        out[n] = processors[n](v) if n in processors else v
                    return out

                convert = named
            plan = (compiled.string, convert)
            with self._lock:
                self._plans[key] = plan
        return plan

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run in ``conn``'s transaction; returns the DB-API cursor (``rowcount``, ``fetchone``)."""
        sql, convert = self._plan(conn, tuple(sorted(params)))
        dialect = conn.dialect
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        args = convert(params)
        try:
            cursor.execute(sql, args)
        except dialect.loaded_dbapi.Error as exc:
            cursor.close()
            # As Connection.execute raises it: IntegrityError, DataError, OperationalError ...
            raise DBAPIError.instance(sql, args, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        return cursor

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a SELECT, as a tuple (or None)."""
        cursor = self.execute(conn, params)
        try:
            return cursor.fetchone()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT or UPDATE; the number of rows it touched."""
        cursor = self.execute(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()
