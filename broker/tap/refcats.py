"""The reference catalogs loaded into the archive, over TAP: described in TAP_SCHEMA as the
tables of the schema ``refcat`` (``refcat.hipparcos``), and read by ADQL like the archive's
chunked tables, near-neighbour joins with them included.

TAP_SCHEMA. Every catalog of the registry (`broker.storage.refcat`) with a current version is
a table of a felis schema made here (`felis_schema`), which felis loads into TAP_SCHEMA after
the archive's: the id, ``ra`` and ``dec``, the catalog's data columns with the VOTable types of
their stored kinds, then ``chunk_id`` and ``hpx29``. Units, UCDs and descriptions come from
what the load recorded in the registry (`broker.domain.described`); for a catalog loaded
before loads recorded them, or made by row-level changes (the data release's ``dr_objects``),
from the felis table of the same name if there is one, and for the fixed columns from the
felis template ``refcat_rows``.

Kept current (`TapSource`): the registry's versions are read on every request (one small read
on shard 0, `ReferenceCatalogs.versions`) and TAP_SCHEMA is made again, into a new file, when
they changed; a request keeps the engine it started with, so its check and its run see one
TAP_SCHEMA.

Reading. A catalog's current version ``k`` is the table ``rc_<name>_v<k>`` on every shard,
each row on the shard of its chunk, placed as the archive's rows are (the same shard set,
chunker and placement: `TapSource` describes no catalog otherwise). So a query of
``refcat.<name>`` runs as one of the archive's chunked tables does (`pinned`): its table
nodes are renamed to the version TAP_SCHEMA described (never by editing the query's text),
and the engine reads the renamed tables as chunked ones, with TAP_SCHEMA's columns, so cone
pruning on ``chunk_id`` and ``hpx29`` and the near-neighbour joins' halo
(`broker.tap.neighbours`) work on them unchanged. A catalog's rows lie in their chunk exactly
(no drift), well within the margin the halo allows.

A reload during a query. A load writes version ``k + 1``, makes it current, then drops the
tables of ``k``. A query that read ``k`` on every shard has a whole answer of version ``k``;
one that found a table of ``k`` gone on some shard (read as empty there, or failing) does not.
After the shards answer, the registry is read again: if a catalog the query read is no longer
at the version (and load time) it was pinned to, the answer is discarded and
`CatalogReloadedError` raised, which the service answers as an error asking to send the
query again (the next request sees the new version).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlglot import exp

from broker.exceptions import CatalogReloadedError
from broker.storage import schema as felis_schema
from broker.storage.refcat import table_names
from broker.tap.adql import ADQLError, Checked
from broker.tap.tapschema import TapSchema

if TYPE_CHECKING:
    from broker.storage.catalog import ChunkedCatalog
    from broker.storage.stores import ReferenceCatalogs
    from broker.tap.execute import Engine

log = structlog.get_logger(__name__)

#: The schema of the reference catalogs' tables in TAP_SCHEMA, and its schema_index (after
#: the archive's ``lanner``).
SCHEMA = "refcat"
SCHEMA_INDEX = 1
_DESCRIPTION = ("Reference catalogs loaded into the archive (lanner catalog load), one table "
                "per catalog at its current version, chunked as the archive's tables are.")
#: The felis datatype of each stored kind of a catalog's columns.
_DATATYPES = {"int64": "long", "float64": "double", "text": "text", "bool": "boolean"}
#: The fixed columns a catalog's table ends with (its id, ra and dec come first).
_PLACEMENT = ("chunk_id", "hpx29")


@dataclass(frozen=True, slots=True)
class Pinned:
    """What a table of ``refcat`` was described from: the catalog, its version and when that
    was made current, and the version's table on the shards."""

    name: str
    version: int
    loaded_at: str
    table: str


def _notes(entry: Mapping[str, Any], *, recorded: bool) -> dict[str, dict[str, str]]:
    """Every column's unit, UCD and description: the template's, then a felis table of the
    catalog's name (``dr_objects``), then (if ``recorded``) what the load recorded."""
    notes: dict[str, dict[str, str]] = {}
    sources = [felis_schema.column_docs("refcat_rows")]
    with contextlib.suppress(KeyError):  # most catalogs have no felis table of their own
        sources.append(felis_schema.column_docs(entry["name"]))
    for docs in sources:
        for name, doc in docs.items():
            notes[name] = {k: v for k, v in (("unit", doc.unit), ("ucd", doc.ucd),
                                             ("description", doc.description)) if v}
    for name, note in ((entry.get("metadata") or {}).get("columns", {}) if recorded
                       else {}).items():
        notes[name] = {**notes.get(name, {}), **note}
    return notes


def _table(entry: Mapping[str, Any], *, recorded: bool) -> dict[str, Any]:
    """The felis table of one catalog (with what its load recorded if ``recorded``)."""
    name = entry["name"]
    notes = _notes(entry, recorded=recorded)
    kinds = [tuple(c) for c in entry["columns"]]
    kinds += [(c, "int64") for c in _PLACEMENT]
    columns = []
    for column, kind in kinds:
        note = notes.get(column, {})
        made: dict[str, Any] = {"name": column, "@id": f"#{name}.{column}",
                                "nullable": column not in (
            "id", "ra", "dec", *_PLACEMENT)}
        if column == "id" and kind == "text":
            made.update(datatype="string", length=191)
        elif column == "chunk_id":
            made["datatype"] = "int"
        else:
            made["datatype"] = _DATATYPES[kind]
        if column in ("id", "ra", "dec"):
            made["tap:principal"] = 1
        made.update({key: note[field] for key, field in (
            ("fits:tunit", "unit"), ("ivoa:ucd", "ucd"), ("description", "description"))
            if note.get(field)})
        columns.append(made)
    told = (entry.get("metadata") or {}).get("description") if recorded else None
    if told is None:
        own = next((t for t in felis_schema.described().tables if t.name == name), None)
        told = own.description if own is not None else None
    about = (f"Reference catalog {name} ({entry.get('kind') or 'generic'}): "
             f"{int(entry['rows']):,} rows, version {entry['version']}, current since "
             f"{entry['loaded_at']} UTC.")
    return {"name": name, "@id": f"#{name}",
            "description": f"{told.strip()} {about}" if told else about,
            "primaryKey": f"#{name}.id", "columns": columns}


def felis_schema_of(entries: Sequence[Mapping[str, Any]]) -> Any:
    """The felis schema ``refcat`` of the registry's catalogs. A catalog whose recorded notes
    felis refuses (checked at load, so only a registry edited by hand) is described without
    them, and logged."""
    from felis.datamodel import Schema, Table  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    context = {"id_generation": True}
    tables = []
    for entry in entries:
        table = _table(entry, recorded=True)
        try:
            Table.model_validate(table, context=context)
        except ValidationError as exc:
            log.warning("reference catalog described without its notes", catalog=entry["name"],
                        error=str(exc).splitlines()[0])
            table = _table(entry, recorded=False)
        tables.append(table)
    return Schema.model_validate({"name": SCHEMA, "@id": f"#{SCHEMA}",
                                  "description": _DESCRIPTION, "tables": tables},
                                 context=context)


def build(path: Path, entries: Sequence[Mapping[str, Any]]) -> TapSchema:
    """TAP_SCHEMA of the archive and of the catalogs of ``entries`` (`ReferenceCatalogs.list`),
    in a SQLite file at ``path``."""
    pinned = {f"{SCHEMA}.{e['name']}": Pinned(e["name"], int(e["version"]),
                                              str(e["loaded_at"]),
                                              table_names(e["name"], e["version"])[0])
              for e in entries}
    # No catalog, no schema: VODataService's /tables lists a schema by its tables.
    extra = [(felis_schema_of(entries), SCHEMA_INDEX)] if entries else []
    return TapSchema(path, extra, catalogs=pinned)


# -- running a query that reads catalogs


def read_by(checked: Checked, tap: TapSchema) -> dict[str, Pinned]:
    """The catalogs a checked query reads, by TAP name."""
    return {t: tap.catalogs[t] for t in checked.tables if t in tap.catalogs}


@contextlib.contextmanager
def pinned(engine: Engine, checked: Checked) -> Iterator[tuple[Engine, Checked]]:
    """The engine and query to run a query of catalogs with, as one of chunked tables: each
    ``refcat.<name>`` renamed to its pinned version's table, which the engine given reads as
    chunked, with the catalog's columns. On leaving, the registry is read again and
    `CatalogReloadedError` raised if a catalog was reloaded meanwhile (module docstring)."""
    tap = engine.tap
    reads = read_by(checked, tap)
    others = set(checked.tables) - set(reads)
    schemas = {t.name: t.schema for t in tap}
    if any(schemas.get(t) == "TAP_SCHEMA" for t in others):
        raise ADQLError("a query reads either TAP_SCHEMA or the archive's tables, not both")
    refused = sorted(t for t in others if t not in engine.chunked)
    if refused:
        raise ADQLError(f"{', '.join(refused)} cannot be joined with the reference catalogs: "
                        "query it alone (docs/tap.md)")
    if engine.refcats is None:
        raise ADQLError("this service reads no reference catalogs")
    tree = checked.tree.copy()
    _refuse_object_id_links(tree, reads)
    physical = {}
    for table in tree.find_all(exp.Table):
        key = f"{table.db}.{table.name}".lower()
        if key in reads:
            if table.alias_or_name == table.name and not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name)))
            table.set("this", exp.to_identifier(reads[key].table))
            physical[f"{SCHEMA}.{reads[key].table}"] = key
    view = _view(engine, physical)
    try:
        yield view, Checked(tree, tuple(sorted(others | set(physical))))
    except Exception as exc:
        if engine.shards.dialect.is_missing_table(exc):
            _verify(engine, reads)  # the pinned version's tables were dropped: say which
        raise
    _verify(engine, reads)


def _view(engine: Engine, physical: Mapping[str, str]) -> Engine:
    """The engine for one query: TAP_SCHEMA with the versions' tables (under their physical
    names, for this query only), read as chunked tables."""
    tap = engine.tap
    view = copy.copy(engine)
    view.tap = tap.with_tables(dataclasses.replace(tap.tables[logical], name=name)
                               for name, logical in physical.items())
    view.chunked = frozenset(engine.chunked | set(physical))
    return view


def _verify(engine: Engine, reads: Mapping[str, Pinned]) -> None:
    assert engine.refcats is not None
    now = engine.refcats.versions()
    for pin in reads.values():
        current = now.get(pin.name)
        if current != (pin.version, pin.loaded_at):
            raise CatalogReloadedError(pin.name, pin.version,
                                       None if current is None else current[0])


def _refuse_object_id_links(tree: exp.Select, reads: Mapping[str, Pinned]) -> None:
    """A catalog's own ``object_id`` column (any data column may be so named) is not the
    archive's: an equality on it would pass for the archive's shard-local link
    (`broker.tap.neighbours`) and lose pairs split between shards."""
    aliases = {t.alias_or_name for t in tree.find_all(exp.Table)
               if f"{t.db}.{t.name}".lower() in reads}
    for eq in tree.find_all(exp.EQ):
        for side in (eq.this, eq.expression):
            if isinstance(side, exp.Column) and side.name.lower() == "object_id" \
                    and side.table in aliases:
                raise ADQLError("a reference catalog's object_id is its own column, not the "
                                "archive's object identifier: join a catalog to the archive "
                                "by position (docs/tap.md)")


# -- TAP_SCHEMA kept current


class TapSource:
    """The TAP engine of a process, with TAP_SCHEMA current with the catalogs' registry.

    `engine` reads the registry's versions (one small read on shard 0) and, when they
    changed since TAP_SCHEMA was made, makes it again into a new file of ``folder``; the
    previous file is kept for the requests still using it and removed at the next change, and
    every file when the process exits. The catalogs must be on the archive's shards, chunked
    alike; otherwise (never so in a deployment) none is described, and that is logged.
    """

    def __init__(self, *, folder: Path, catalog: ChunkedCatalog,
                 refcats: ReferenceCatalogs | None) -> None:
        self.folder = folder
        self.catalog = catalog
        same = (refcats is not None and getattr(refcats, "shards", None) is catalog.shards
                and getattr(refcats, "chunker", None) == catalog.chunker)
        if refcats is not None and not same:
            log.warning("reference catalogs not on the archive's shards: TAP describes none")
        self.refcats = refcats if same else None
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._seen: dict[str, tuple[int, str]] | None = None
        self._files: list[Path] = []
        self._made = 0
        atexit.register(self.close)

    def engine(self) -> Engine:
        """The engine over the current TAP_SCHEMA (made again if the registry changed)."""
        versions = self.refcats.versions() if self.refcats is not None else {}
        with self._lock:
            if self._engine is None or versions != self._seen:
                self._engine = self._make()
                self._seen = versions
            return self._engine

    def _make(self) -> Engine:
        from broker.tap.execute import Engine  # noqa: PLC0415 - execute imports this module

        entries = self.refcats.list() if self.refcats is not None else []
        self._made += 1
        path = self.folder / f"tap_schema-{os.getpid()}-{self._made}.db"
        tap = build(path, entries)
        self._files.append(path)
        while len(self._files) > 2:
            self._files.pop(0).unlink(missing_ok=True)
        log.info("TAP_SCHEMA made", catalogs=[e["name"] for e in entries])
        return Engine(tap, self.catalog, refcats=self.refcats)

    def close(self) -> None:
        """Remove the TAP_SCHEMA files."""
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
