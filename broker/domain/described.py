"""What a reference catalog's load is told of the catalog and its columns (units, UCDs,
descriptions), which TAP_SCHEMA shows of its table (`broker.tap.refcats`).

A load gathers them in this order, a later source replacing an earlier one field by field:
what the input file's schema says of each column (Arrow field metadata ``unit``, ``ucd`` and
``description``, as a Parquet file written with them keeps them), then what the caller gives
(`CatalogDescription`, by input column name). The identifier and the position are the
catalog's main ones whatever is given: the id's UCD is ``meta.id;meta.main``, RA's and
declination's ``pos.eq.ra;meta.main`` and ``pos.eq.dec;meta.main`` in degrees (the store keeps
ICRS degrees); only their descriptions may be given. The result is the JSON the registry keeps
(`plan_description`); the UCDs and units in it are checked by felis before anything is
written (`broker.storage.schema.check_notes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from broker.domain.catalogs import CatalogColumns

#: The fields of a column's note, as the registry's JSON names them.
NOTE_FIELDS = ("unit", "ucd", "description")


@dataclass(frozen=True, slots=True)
class ColumnDescription:
    """A column's unit (as VOUnit or FITS write it), UCD and description."""

    unit: str | None = None
    ucd: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogDescription:
    """A catalog's description and its columns', by the columns' names in the input file."""

    description: str | None = None
    columns: Mapping[str, ColumnDescription] = field(default_factory=dict)


def _main(columns: CatalogColumns) -> dict[str, dict[str, str]]:
    """The id's and the position's notes, which no source changes but the descriptions."""
    return {
        "id": {"ucd": "meta.id;meta.main",
               "description": f"The catalog's identifier (input column {columns.id.source})."},
        "ra": {"unit": "deg", "ucd": "pos.eq.ra;meta.main",
               "description": f"ICRS right ascension (input column {columns.ra_source})."},
        "dec": {"unit": "deg", "ucd": "pos.eq.dec;meta.main",
                "description": f"ICRS declination (input column {columns.dec_source})."},
    }


def _from_arrow(schema: pa.Schema, name: str) -> dict[str, str]:
    if name not in schema.names:
        return {}
    metadata = schema.field(name).metadata or {}
    found = {}
    for key in NOTE_FIELDS:
        value = metadata.get(key.encode())
        if value:
            found[key] = value.decode("utf-8", "replace").strip()
    return {k: v for k, v in found.items() if v}


def plan_description(given: CatalogDescription | None, columns: CatalogColumns,
                     schema: pa.Schema) -> dict[str, Any]:
    """The registry's JSON of a load: ``{"description": ..., "columns": {stored name: {"unit",
    "ucd", "description"}}}`` (fields with no value left out); ValueError for a given column
    that the input does not have."""
    given = given or CatalogDescription()
    by_source = {columns.id.source: "id", columns.ra_source: "ra",
                 columns.dec_source: "dec", **{c.source: c.name for c in columns.data}}
    unknown = sorted(set(given.columns) - set(by_source))
    if unknown:
        msg = (f"the description names columns the input does not have: {', '.join(unknown)} "
               f"(its columns: {', '.join(list(by_source)[:20])})")
        raise ValueError(msg)
    main = _main(columns)
    notes: dict[str, dict[str, str]] = {}
    for source, stored in by_source.items():
        note = _from_arrow(schema, source)
        told = given.columns.get(source)
        if told is not None:
            note.update({k: v.strip() for k in NOTE_FIELDS
                         if isinstance(v := getattr(told, k), str) and v.strip()})
        if stored in main:
            note = {**main[stored], **({"description": note["description"]}
                                       if "description" in note else {})}
        if note:
            notes[stored] = note
    out: dict[str, Any] = {"columns": notes}
    if given.description and given.description.strip():
        out["description"] = given.description.strip()
    return out


def description_from(data: Any) -> CatalogDescription:
    """A description from JSON data (a ``lanner catalog load --describe`` file):
    ``{"description": text, "columns": {input column: {"unit", "ucd", "description"}}}``;
    ValueError naming what is wrong."""
    if not isinstance(data, dict) or set(data) - {"description", "columns"}:
        msg = 'a description is {"description": ..., "columns": {column: {...}}}'
        raise ValueError(msg)
    columns = data.get("columns") or {}
    if not isinstance(columns, dict):
        msg = "a description's columns are an object: {column: {unit, ucd, description}}"
        raise ValueError(msg)
    found = {}
    for name, note in columns.items():
        if not isinstance(note, dict) or set(note) - set(NOTE_FIELDS) or not all(
                isinstance(v, str) or v is None for v in note.values()):
            msg = (f"column {name}: give a unit, ucd and description as text, no other field")
            raise ValueError(msg)
        found[str(name)] = ColumnDescription(**note)
    about = data.get("description")
    if about is not None and not isinstance(about, str):
        msg = "a description's description is text"
        raise ValueError(msg)
    return CatalogDescription(about, found)
