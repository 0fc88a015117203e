"""Reading a ledger for a report, wherever it lives: a SQLite file (accounting.ledger.reading) or the store.
The report's queries are written once, in SQLite's words (no literal `?` in them: every value is a parameter);
on the store `%` is escaped, `?` becomes psycopg's `%s` and TOTAL()
is the aggregate the store's schema defines, so both give the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..accounting.ledger import SCHEMA_VERSION, reading as reading_file
from ..config.schema import StoreConfig
from ..errors import ConfigError
from .connect import UNREACHABLE, reason
from .runtime import Store
from .schema import newer, version_of


class StoreReader:
    """What the report asks of a connection: `execute(sql, args)` with rows by column name, and `columns`."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor:
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), args)

    def columns(self, table: str) -> set[str]:
        rows = self.conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                 "AND table_schema = current_schema()", (table,)).fetchall()
        return {row["column_name"] for row in rows}


@contextmanager
def reading(source: Path | Store | StoreConfig) -> Iterator[Any]:
    """A read-only view of the ledger at `source`; ConfigError (one sentence) when it cannot be read."""
    if isinstance(source, Path):
        with reading_file(source) as conn:
            yield conn
        return
    store = source if isinstance(source, Store) else Store(source)
    try:
        conn = psycopg.connect(store.conninfo, autocommit=True, row_factory=dict_row)
    except UNREACHABLE as exc:
        raise ConfigError(f"store.url: cannot reach the store {store.where} ({reason(exc)})") from None
    with closing(conn):
        conn.read_only = True
        version = version_of(conn)
        if version is None:
            raise ConfigError(f"store.url: the store {store.where} holds no ledger yet (a server creates it when "
                              "it first connects)")
        if version > SCHEMA_VERSION:
            raise newer(version, store.where)
        yield StoreReader(conn)
