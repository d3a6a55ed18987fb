"""The relational tables, from the one felis description (``schemas/felis/lanner.yaml``).

felis validates the YAML and builds SQLAlchemy Core metadata from it; this module compiles that
metadata into the DDL of each SQL dialect the stores run on (MariaDB shards, embedded SQLite)
and gives the stores their column lists, so that no table is described anywhere else. SQLAlchemy
is used for DDL only: the stores' statements are plain SQL text (`broker.storage.dialect`), so a
hot query pays no per-call compile.

Reference catalogs are tables made at run time from templates (``refcat_rows`` and friends):
`refcat_table` copies a template under the catalog's table name, with the id column as BIGINT
or text and the catalog's data columns appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, MetaData, String, Table, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeEngine

#: The felis file, in the source tree (schemas/) or next to the installed package.
FELIS_NAME = "lanner.yaml"

#: SQL type of a reference catalog's data column, by its neutral kind.
_KIND_TYPES: dict[str, TypeEngine] = {
    "int64": BigInteger(), "float64": Float(precision=53), "text": Text(), "bool": Boolean(
        create_constraint=False),
}


def felis_path() -> Path:
    """The felis description: ``schemas/felis`` of the repository, which the package carries
    as ``broker/data/schemas`` (a link in the source tree, files in a wheel)."""
    return Path(str(resources.files("broker") / "data" / "schemas" / "felis" / FELIS_NAME))


@cache
def described() -> Any:
    """The felis schema itself (`felis.datamodel.Schema`, validated: ids, UCDs, units)."""
    from felis.datamodel import Schema  # noqa: PLC0415 - heavy; only where it is needed

    return Schema.from_uri(str(felis_path()), context={"id_generation": True})


@cache
def metadata() -> MetaData:
    """SQLAlchemy metadata of every table of the felis schema."""
    from felis.metadata import MetaDataBuilder  # noqa: PLC0415

    return MetaDataBuilder(described(), apply_schema_to_metadata=False).build()


#: Python and VOTable types of felis datatypes.
_PYTHON_TYPES: dict[str, type] = {
    "boolean": bool, "byte": int, "short": int, "int": int, "long": int, "float": float,
    "double": float, "char": str, "string": str, "unicode": str, "text": str,
    "binary": bytes, "timestamp": datetime,
}


@dataclass(frozen=True, slots=True)
class ColumnDoc:
    """What felis says of one column, for the API's models and VOTable fields."""

    name: str
    datatype: str
    votable_datatype: str
    python_type: type
    nullable: bool
    unit: str | None
    ucd: str | None
    description: str


@cache
def column_docs(name: str) -> dict[str, ColumnDoc]:
    """The columns of a felis table, by name, in order."""
    [found] = [t for t in described().tables if t.name == name] or [None]
    if found is None:
        table(name)  # the KeyError naming the known tables
    docs = {}
    for column in found.columns:
        datatype = str(column.datatype.value if hasattr(column.datatype, "value")
                       else column.datatype)
        votable = column.votable_datatype or {
            "string": "char", "text": "char", "timestamp": "char", "binary": "unsignedByte",
        }.get(datatype, datatype)
        docs[column.name] = ColumnDoc(
            name=column.name, datatype=datatype, votable_datatype=str(votable),
            python_type=_PYTHON_TYPES[datatype], nullable=bool(column.nullable),
            unit=column.fits_tunit, ucd=column.ivoa_ucd, description=column.description or "")
    return docs


def table(name: str) -> Table:
    """One table of the felis schema (KeyError naming the known ones if there is none)."""
    tables = metadata().tables
    if name not in tables:
        msg = f"no table {name!r} in the felis schema (tables: {', '.join(sorted(tables))})"
        raise KeyError(msg)
    return tables[name]


@cache
def columns(name: str) -> tuple[str, ...]:
    """The column names of a felis table, in order."""
    return tuple(column.name for column in table(name).columns)


def create_statements(tbl: Table, dialect: Dialect) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` and ``CREATE INDEX IF NOT EXISTS`` of one table."""
    statements = [str(CreateTable(tbl, if_not_exists=True).compile(dialect=dialect)).strip()]
    statements += [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip()
                   for index in sorted(tbl.indexes, key=lambda i: str(i.name))]
    return statements


def refcat_table(template: str, name: str, *, text_ids: bool,
                 data_columns: Sequence[tuple[str, str]] = ()) -> Table:
    """A reference-catalog table made from a felis template.

    ``template`` is ``refcat_rows``, ``refcat_overlap``, ``refcat_director`` or
    ``refcat_state``; ``name`` the table to make (``rc_<catalog>_v<k>...``). The id column
    becomes ``VARCHAR(191)`` (the longest indexable utf8mb4 key) when ``text_ids``; each
    ``(column, kind)`` of ``data_columns`` is appended as a nullable column. Index names are
    prefixed with the table name (SQLite's index names are global to a database).
    """
    source = table(template)
    target = MetaData()
    made = Table(name, target, *(
        Column(c.name, String(191) if (c.name == "id" and text_ids) else c.type,
               nullable=c.nullable, primary_key=c.primary_key, autoincrement=False,
               comment=c.comment)
        for c in source.columns), comment=source.comment, **source.kwargs)
    for column, kind in data_columns:
        made.append_column(Column(column, _KIND_TYPES[kind], nullable=True))
    for index in source.indexes:
        suffix = str(index.name).removeprefix(f"idx_{template}_")
        Index(f"{name}_{suffix}", *(made.c[c.name] for c in index.columns))
    return made


def check_notes(notes: dict[str, Any]) -> None:
    """Check the units and UCDs of a catalog's column notes (`broker.domain.described`) as
    felis checks those of its own tables (astropy's units, the IVOA's UCD vocabulary), so that
    TAP_SCHEMA can be made from them; ValueError naming the first column that is wrong."""
    from felis.datamodel import Column as FelisColumn  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    for name, note in notes.get("columns", {}).items():
        try:
            FelisColumn.model_validate({
                "name": name, "@id": f"#{name}", "datatype": "double",
                "fits:tunit": note.get("unit"), "ivoa:ucd": note.get("ucd")})
        except ValidationError as exc:
            reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ").split(".  ")[0]
                                for e in exc.errors())
            msg = f"column {name}: {reasons}"
            raise ValueError(msg) from None
