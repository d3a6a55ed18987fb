"""TAP_SCHEMA, made by felis from the felis description of the archive.

felis (`felis.tap_schema`) knows the five TAP_SCHEMA tables (schemas, tables, columns, keys,
key_columns) and fills them from a felis schema: datatypes and array sizes as VOTable has
them, units, UCDs, descriptions, ``principal``, ``std`` and ``indexed`` (primary keys and
one-column indexes). Here it fills a SQLite file with the archive's public tables (`PUBLIC`,
schema ``lanner``) and with TAP_SCHEMA's own description, as TAP 1.1 asks; the TAP service
answers ADQL over TAP_SCHEMA from that file and checks every query's tables and columns
against what `TapSchema` read back from it. Tables a user owns (watchlist hits) and the
service's own bookkeeping (accounts, tokens, jobs, filters) are not in it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broker.storage import schema as felis_schema

#: The archive's tables a TAP query may read, all public.
PUBLIC = ("objects", "alert_rows", "object_context", "object_matches", "annotations")
#: TAP_SCHEMA's schema_index of the archive's schema (listed first) and of TAP_SCHEMA's own.
_INDEX = {"lanner": 0, "TAP_SCHEMA": 100_000}
#: ADQL 2.1's reserved words (its own and SQL-92's): a column so named is listed in
#: TAP_SCHEMA and /tables as a delimited identifier (``"size"``), as TAP 1.1 says.
RESERVED = frozenset("""
ABSOLUTE ACTION ADD ALL ALLOCATE ALTER AND ANY ARE AS ASC ASSERTION AT AUTHORIZATION AVG BEGIN
BETWEEN BIT BIT_LENGTH BOTH BY CASCADE CASCADED CASE CAST CATALOG CHAR CHARACTER CHAR_LENGTH
CHARACTER_LENGTH CHECK CLOSE COALESCE COLLATE COLLATION COLUMN COMMIT CONNECT CONNECTION
CONSTRAINT CONSTRAINTS CONTINUE CONVERT CORRESPONDING COUNT CREATE CROSS CURRENT CURRENT_DATE
CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATE DAY DEALLOCATE DECIMAL DECLARE DEFAULT
DEFERRABLE DEFERRED DELETE DESC DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT DISTINCT DOMAIN
DOUBLE DROP ELSE END END-EXEC ESCAPE EXCEPT EXCEPTION EXEC EXECUTE EXISTS EXTERNAL EXTRACT
FALSE FETCH FIRST FLOAT FOR FOREIGN FOUND FROM FULL GET GLOBAL GO GOTO GRANT GROUP HAVING HOUR
IDENTITY IMMEDIATE IN INDICATOR INITIALLY INNER INPUT INSENSITIVE INSERT INT INTEGER INTERSECT
INTERVAL INTO IS ISOLATION JOIN KEY LANGUAGE LAST LEADING LEFT LEVEL LIKE LOCAL LOWER MATCH MAX
MIN MINUTE MODULE MONTH NAMES NATIONAL NATURAL NCHAR NEXT NO NOT NULL NULLIF NUMERIC
OCTET_LENGTH OF ON ONLY OPEN OPTION OR ORDER OUTER OUTPUT OVERLAPS PAD PARTIAL POSITION
PRECISION PREPARE PRESERVE PRIMARY PRIOR PRIVILEGES PROCEDURE PUBLIC READ REAL REFERENCES
RELATIVE RESTRICT REVOKE RIGHT ROLLBACK ROWS SCHEMA SCROLL SECOND SECTION SELECT SESSION
SESSION_USER SET SIZE SMALLINT SOME SPACE SQL SQLCODE SQLERROR SQLSTATE SUBSTRING SUM
SYSTEM_USER TABLE TEMPORARY THEN TIME TIMESTAMP TIMEZONE_HOUR TIMEZONE_MINUTE TO TRAILING
TRANSACTION TRANSLATE TRANSLATION TRIM TRUE UNION UNIQUE UNKNOWN UPDATE UPPER USAGE USER USING
VALUE VALUES VARCHAR VARYING VIEW WHEN WHENEVER WHERE WITH WORK WRITE YEAR ZONE ABS ACOS AREA
ASIN ATAN ATAN2 BIT_AND BIT_NOT BIT_OR BIT_XOR BOX CEILING CENTROID CIRCLE CONTAINS COORD1
COORD2 COORDSYS COS COT DEGREES DISTANCE EXP FLOOR ILIKE INTERSECTS IN_UNIT LOG LOG10 MOD PI
POINT POLYGON POWER RADIANS REGION RAND ROUND SIN SQRT TOP TAN TRUNCATE
""".split())  # noqa: SIM905 - a list of words reads as one


def delimited(name: str) -> str:
    """A column's name as ADQL must write it: quoted if it is a reserved word."""
    return f'"{name}"' if name.upper() in RESERVED else name


@dataclass(frozen=True, slots=True)
class TapColumn:
    """A row of TAP_SCHEMA.columns."""

    name: str
    datatype: str
    arraysize: str | None
    xtype: str | None
    unit: str | None
    ucd: str | None
    utype: str | None
    description: str | None
    principal: bool
    indexed: bool
    std: bool


@dataclass(frozen=True, slots=True)
class TapKey:
    """A row of TAP_SCHEMA.keys from a table, with its key_columns (from, target)."""

    target: str
    description: str | None
    columns: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TapTable:
    """A row of TAP_SCHEMA.tables, with its columns in order and its foreign keys."""

    schema: str
    name: str  # qualified, as TAP_SCHEMA.tables has it: ``lanner.objects``
    description: str | None
    columns: tuple[TapColumn, ...]
    keys: tuple[TapKey, ...] = ()

    def column(self, name: str) -> TapColumn | None:
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)


class TapSchema:
    """TAP_SCHEMA in a SQLite file at ``path`` (made again on each start: felis is the
    source), and the tables and columns it describes.

    ``extra``: other felis schemas to describe after the archive's, each with its
    schema_index (the reference catalogs', made from their registry by
    `broker.tap.refcats`); ``catalogs``: what those tables are stored as, by TAP name
    (`broker.tap.refcats.Pinned`), for the engine."""

    def __init__(self, path: Path, extra: Sequence[tuple[Any, int]] = (),
                 catalogs: Mapping[str, Any] | None = None) -> None:
        from felis.db.database_context import create_database_context  # noqa: PLC0415
        from felis.tap_schema import DataLoader, TableManager  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.path = path
        #: sqlglot's schemas of sets of these tables (`broker.tap.adql`), made once each.
        self.qualify_cache: dict[frozenset[str], Any] = {}
        self.url = f"sqlite:///{path}"
        manager = TableManager(engine_url=self.url)
        context = create_database_context(self.url, manager.metadata)
        try:
            manager.initialize_database(context)
            described = felis_schema.described()
            archive = described.model_copy(update={
                "tables": [t for t in described.tables if t.name in PUBLIC]})
            DataLoader(archive, manager, context, tap_schema_index=_INDEX["lanner"]).load()
            for other, index in extra:
                DataLoader(other, manager, context, tap_schema_index=index).load()
            DataLoader(manager.schema, manager, context,
                       tap_schema_index=_INDEX["TAP_SCHEMA"]).load()
            self._amend(context.engine, manager)
            self.tables = self._read(context.engine, manager)
            self.catalogs = dict(catalogs or {})
        finally:
            context.close()

    @staticmethod
    def _amend(engine: sa.Engine, manager: object) -> None:
        """What TAP 1.1 asks of TAP_SCHEMA that felis leaves: every column of TAP_SCHEMA's
        own tables is standard (``std`` 1), and reserved words among the column names are
        quoted in TAP_SCHEMA.columns (and in key_columns, which name them too)."""
        columns_t = manager["columns"]  # type: ignore[index]
        with engine.begin() as connection:
            connection.execute(sa.update(columns_t).where(
                columns_t.c.table_name.like("TAP\\_SCHEMA.%", escape="\\")).values(std=1))
        for name in ("columns", "key_columns"):
            table = manager[name]  # type: ignore[index]
            fields = ["column_name"] if name == "columns" else ["from_column", "target_column"]
            with engine.begin() as connection:
                for field in fields:
                    column = table.c[field]
                    for value in connection.execute(sa.select(column).distinct()).scalars():
                        if value is not None and delimited(value) != value:
                            connection.execute(sa.update(table).where(column == value)
                                               .values({field: delimited(value)}))

    @staticmethod
    def _read(engine: sa.Engine, manager: object) -> dict[str, TapTable]:
        tables_t = manager["tables"]  # type: ignore[index]
        columns_t = manager["columns"]  # type: ignore[index]
        keys_t = manager["keys"]  # type: ignore[index]
        key_columns_t = manager["key_columns"]  # type: ignore[index]
        with engine.connect() as connection:
            tables = connection.execute(sa.select(tables_t)).mappings().all()
            keys = connection.execute(sa.select(keys_t)).mappings().all()
            key_columns = connection.execute(sa.select(key_columns_t).order_by(
                sa.literal_column("rowid"))).mappings().all()
            # felis inserts a table's columns in the description's order: rowid keeps it where
            # the description gives no column_index.
            columns = connection.execute(sa.select(columns_t).order_by(
                sa.literal_column("rowid"))).mappings().all()
        columns = sorted(columns, key=lambda c: (c["column_index"] is None,
                                                 c["column_index"] or 0))
        by_table: dict[str, list[TapColumn]] = {}
        for c in columns:
            by_table.setdefault(c["table_name"], []).append(TapColumn(
                c["column_name"].strip('"'), c["datatype"], c["arraysize"], c["xtype"], c["unit"],
                c["ucd"], c["utype"], c["description"], bool(c["principal"]),
                bool(c["indexed"]), bool(c["std"])))
        pairs: dict[str, list[tuple[str, str]]] = {}
        for k in key_columns:
            pairs.setdefault(k["key_id"], []).append((k["from_column"], k["target_column"]))
        by_from: dict[str, list[TapKey]] = {}
        for k in keys:
            by_from.setdefault(k["from_table"], []).append(TapKey(
                k["target_table"], k["description"], tuple(pairs.get(k["key_id"], ()))))
        return {t["table_name"].lower(): TapTable(t["schema_name"], t["table_name"],
                                                   t["description"],
                                                   tuple(by_table.get(t["table_name"], ())),
                                                   tuple(by_from.get(t["table_name"], ())))
                for t in tables}

    def with_tables(self, extra: Iterable[TapTable]) -> TapSchema:
        """This TAP_SCHEMA and ``extra`` tables (a request's uploads), for one query."""
        copied = copy.copy(self)
        copied.tables = {**self.tables, **{t.name.lower(): t for t in extra}}
        copied.qualify_cache = {}  # its tables are this request's
        return copied

    def table(self, name: str) -> TapTable | None:
        """A table by its qualified name, in any case (``lanner.objects``)."""
        return self.tables.get(name.lower())

    def __iter__(self) -> Iterator[TapTable]:
        return iter(self.tables.values())
