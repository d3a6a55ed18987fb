"""Reference catalogs: names, column mapping and the placement of rows in the chunked layout.

Plain pyarrow and numpy, no database driver. A loader reads a file as pyarrow record batches;
`plan_columns` maps its schema once to neutral column kinds, and `prepare_batch` turns each batch
into the rows to store: the chosen id/ra/dec columns renamed ``id``, ``ra``, ``dec``, each row's
``chunk_id`` and ``hpx29`` computed vectorised, the overlap pairs (row, neighbouring chunk) for
the halos, and the director shard of each id. Rows whose id is null or whose coordinates are
null, NaN or out of range are skipped and counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broker.domain.sky import Chunker, hpx29, overlap_chunks

#: Default overlap radius of reference catalogs: Rubin's production 1 arcmin.
DEFAULT_OVERLAP_DEG = 1.0 / 60.0

Kind = Literal["int64", "float64", "text", "bool"]

#: Columns every stored row carries; data columns never take these names.
RESERVED_COLUMNS = ("id", "ra", "dec", "chunk_id", "hpx29")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def validate_name(name: str) -> str:
    """The catalog name if it is a plain lower-case identifier of at most 31 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        msg = (f"catalog name {name!r} is not valid: use a lower-case letter followed by up to "
               "30 lower-case letters, digits or underscores")
        raise ValueError(msg)
    return name


def sanitise_column(name: str) -> str:
    """A column name made into a lower-case SQL identifier of at most 64 characters."""
    cleaned = re.sub(r"[^a-z0-9_]", "_", name.strip().lower()) or "_"
    if not re.match(r"^[a-z_]", cleaned):
        cleaned = "_" + cleaned
    cleaned = cleaned[:64]
    assert _COLUMN.match(cleaned)
    return cleaned


def kind_of(arrow_type: pa.DataType) -> Kind:
    """The neutral kind a pyarrow type is stored as (anything unusual is kept as text)."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float64"
    return "text"


@dataclass(frozen=True, slots=True)
class Column:
    """A stored column: its name in the catalog, its kind and its name in the input file."""

    name: str
    kind: Kind
    source: str


@dataclass(frozen=True, slots=True)
class CatalogColumns:
    """How an input schema maps to a catalog's stored columns."""

    id: Column
    ra_source: str
    dec_source: str
    data: tuple[Column, ...]

    @property
    def stored(self) -> list[tuple[str, Kind]]:
        """Every user-visible stored column in order: id, ra, dec, then the data columns."""
        return [("id", self.id.kind), ("ra", "float64"), ("dec", "float64"),
                *((c.name, c.kind) for c in self.data)]


#: What a reference catalog holds, which decides how an alert near one of its rows is read
#: (docs/context.md): stars, galaxies (with a shape), quasars, or anything else.
CatalogKind = Literal["star", "galaxy", "qso", "generic"]
CATALOG_KINDS: tuple[CatalogKind, ...] = ("star", "galaxy", "qso", "generic")

#: Arcseconds per unit of a shape column's axes.
AXIS_UNITS = {"arcmin": 60.0, "arcsec": 1.0, "deg": 3600.0}
#: Whether the axis columns give diameters (OpenNGC's MajAx, MinAx) or semi-axes.
AXIS_KINDS = ("diameter", "radius")


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """The shape columns of an input file, as the loader is told them (input column names).

    Defaults are OpenNGC's units: major and minor axis diameters in arcmin, position angle in
    degrees east of north.
    """

    major_col: str
    minor_col: str | None = None
    pa_col: str | None = None
    unit: str = "arcmin"
    axes: str = "diameter"


@dataclass(frozen=True, slots=True)
class CatalogShape:
    """Where a stored catalog keeps each row's ellipse: stored column names and their units.

    A row whose minor axis is missing is a circle of its major axis; a missing position angle
    is 0 (north) and matters only for ellipses.
    """

    major: str
    minor: str | None
    pa: str | None
    unit: str
    axes: str

    def semi_axes_arcsec(self, major: float | None,
                         minor: float | None) -> tuple[float | None, float | None]:
        """The semi-major and semi-minor axes in arcsec of one row's stored values."""
        if major is None or not np.isfinite(major) or major <= 0:
            return None, None
        scale = AXIS_UNITS[self.unit] * (0.5 if self.axes == "diameter" else 1.0)
        semi_major = float(major) * scale
        if minor is None or not np.isfinite(minor) or minor <= 0:
            return semi_major, semi_major
        return semi_major, min(float(minor) * scale, semi_major)

    def to_json(self) -> dict[str, str | None]:
        return {"major": self.major, "minor": self.minor, "pa": self.pa, "unit": self.unit,
                "axes": self.axes}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CatalogShape | None:
        if not data or not data.get("major"):
            return None
        return cls(major=str(data["major"]), minor=data.get("minor"), pa=data.get("pa"),
                   unit=str(data.get("unit") or "arcmin"),
                   axes=str(data.get("axes") or "diameter"))


@dataclass(frozen=True, slots=True)
class MotionSpec:
    """The proper-motion columns of an input file (mas/yr, ``pmra`` being ``μα·cos δ`` as in
    Hipparcos and Gaia) and the Julian epoch of its positions (Hipparcos: 1991.25)."""

    pmra_col: str
    pmdec_col: str
    epoch_jyear: float


@dataclass(frozen=True, slots=True)
class CatalogMotion:
    """Where a stored catalog keeps each row's proper motion, and its positions' epoch; kept
    in the registry's ``shape`` document under ``motion``."""

    pmra: str
    pmdec: str
    epoch_jyear: float

    def to_json(self) -> dict[str, Any]:
        return {"pmra": self.pmra, "pmdec": self.pmdec, "epoch_jyear": self.epoch_jyear}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CatalogMotion | None:
        motion = (data or {}).get("motion")
        if not motion:
            return None
        return cls(pmra=str(motion["pmra"]), pmdec=str(motion["pmdec"]),
                   epoch_jyear=float(motion["epoch_jyear"]))


def profile_json(shape: CatalogShape | None,
                 motion: CatalogMotion | None) -> dict[str, Any] | None:
    """The registry's ``shape`` document of a catalog: its shape columns and its motion."""
    if shape is None and motion is None:
        return None
    data: dict[str, Any] = shape.to_json() if shape else {}
    if motion is not None:
        data["motion"] = motion.to_json()
    return data


def _numeric_columns(what: str, named: dict[str, str],
                     columns: CatalogColumns) -> dict[str, Column]:
    """The planned data columns of the input, by input name, after checking that each of
    ``named`` (role -> input column) is one and numeric; ValueError naming those that are not."""
    stored = {c.source: c for c in columns.data}
    missing = [f"{role} {col!r}" for role, col in named.items() if col not in stored]
    if missing:
        shown = ", ".join(c.source for c in columns.data[:20])
        msg = (f"the {what} columns {', '.join(missing)} are not data columns of the input "
               f"(its data columns: {shown})")
        raise ValueError(msg)
    not_numeric = [f"{role} {col!r}" for role, col in named.items()
                   if stored[col].kind not in ("int64", "float64")]
    if not_numeric:
        msg = f"the {what} columns {', '.join(not_numeric)} are not numeric"
        raise ValueError(msg)
    return stored


def plan_motion(motion: MotionSpec | None, columns: CatalogColumns) -> CatalogMotion | None:
    """Check proper-motion columns against a catalog's planned columns: both must be numeric
    data columns of the input, the epoch a finite Julian year. Raises ValueError naming what
    is missing or wrong."""
    if motion is None:
        return None
    if not math.isfinite(motion.epoch_jyear) or not 1000.0 <= motion.epoch_jyear <= 3000.0:
        msg = f"epoch {motion.epoch_jyear} is not a Julian year (e.g. 1991.25, 2016.0)"
        raise ValueError(msg)
    stored = _numeric_columns("proper-motion", {"pmra": motion.pmra_col,
                                                "pmdec": motion.pmdec_col}, columns)
    return CatalogMotion(stored[motion.pmra_col].name, stored[motion.pmdec_col].name,
                         float(motion.epoch_jyear))


def select_rows(batches: Iterable[pa.RecordBatch], column: str,
                values: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Only the rows whose ``column``, read as text, is one of ``values`` (``lanner catalog
    load --only``: OpenNGC's galaxies are its rows of type ``G``). Raises ValueError when the
    input has no such column."""
    wanted = pa.array([str(v) for v in values], type=pa.string())
    for batch in batches:
        if column not in batch.schema.names:
            shown = ", ".join(batch.schema.names[:20])
            msg = f"the --only column {column!r} is not in the input (its columns: {shown})"
            raise ValueError(msg)
        text = pc.cast(batch.column(column), pa.string())
        yield batch.filter(pc.fill_null(pc.is_in(text, value_set=wanted), False))


def plan_profile(kind: str, shape: ShapeSpec | None,
                 columns: CatalogColumns) -> tuple[CatalogKind, CatalogShape | None]:
    """Check a catalog's kind and shape columns against its planned columns.

    A galaxy catalog needs at least its major-axis column; every shape column must be a
    numeric column of the input. Raises ValueError naming what is missing or wrong.
    """
    if kind not in CATALOG_KINDS:
        msg = f"catalog kind {kind!r} is not one of {', '.join(CATALOG_KINDS)}"
        raise ValueError(msg)
    if shape is None:
        if kind == "galaxy":
            msg = ("a galaxy catalog needs its shape columns: give --major-col (the major "
                   "axis; --minor-col and --pa-col for an ellipse)")
            raise ValueError(msg)
        return kind, None
    if shape.unit not in AXIS_UNITS:
        msg = f"shape unit {shape.unit!r} is not one of {', '.join(AXIS_UNITS)}"
        raise ValueError(msg)
    if shape.axes not in AXIS_KINDS:
        msg = f"shape axes {shape.axes!r} is not one of {', '.join(AXIS_KINDS)}"
        raise ValueError(msg)
    named = {"major": shape.major_col, "minor": shape.minor_col, "pa": shape.pa_col}
    stored = _numeric_columns("shape", {r: c for r, c in named.items() if c is not None},
                              columns)
    return kind, CatalogShape(
        major=stored[shape.major_col].name,
        minor=stored[shape.minor_col].name if shape.minor_col else None,
        pa=stored[shape.pa_col].name if shape.pa_col else None,
        unit=shape.unit, axes=shape.axes)


def plan_columns(schema: pa.Schema, id_col: str, ra_col: str, dec_col: str) -> CatalogColumns:
    """Map an input schema to stored columns; raise ValueError naming a missing column."""
    names = list(schema.names)
    for role, column in (("id", id_col), ("ra", ra_col), ("dec", dec_col)):
        if column not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            msg = f"the {role} column {column!r} is not in the input (its columns: {shown})"
            raise ValueError(msg)
    if len({id_col, ra_col, dec_col}) < 3:
        msg = "the id, ra and dec columns must be three different columns"
        raise ValueError(msg)
    for role, column in (("ra", ra_col), ("dec", dec_col)):
        arrow_type = schema.field(column).type
        if not (pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)
                or pa.types.is_decimal(arrow_type) or pa.types.is_null(arrow_type)):
            msg = f"the {role} column {column!r} is not numeric (it is {arrow_type})"
            raise ValueError(msg)
    id_type = schema.field(id_col).type
    id_kind: Kind = "int64" if pa.types.is_integer(id_type) else "text"
    taken = set(RESERVED_COLUMNS)
    data = []
    for field in schema:
        if field.name in (id_col, ra_col, dec_col):
            continue
        base = sanitise_column(field.name)
        name, n = base, 2
        while name in taken:
            suffix = f"_{n}"
            name, n = base[: 64 - len(suffix)] + suffix, n + 1
        taken.add(name)
        data.append(Column(name, kind_of(field.type), field.name))
    return CatalogColumns(Column("id", id_kind, id_col), ra_col, dec_col, tuple(data))


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """The rows of one input batch, ready to store.

    ``table`` has the columns ``chunk_id, hpx29, id, ra, dec`` and the data columns, in that
    order and with storable types; ``overlap_index``/``overlap_chunk`` are the halo pairs
    (row of ``table``, chunk whose halo holds it).
    """

    table: pa.Table
    ids: pa.Array
    ra: np.ndarray
    dec: np.ndarray
    chunk_id: np.ndarray
    hpx29: np.ndarray
    overlap_index: np.ndarray
    overlap_chunk: np.ndarray
    skipped: int

    @property
    def rows(self) -> int:
        return self.table.num_rows


def _as_float(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    as_float = pc.cast(column, pa.float64(), safe=False)
    return np.asarray(pc.fill_null(as_float, np.nan).to_numpy(zero_copy_only=False),
                      dtype=np.float64)


def _storable(column: pa.Array | pa.ChunkedArray, kind: Kind) -> pa.Array | pa.ChunkedArray:
    arrow_type = column.type
    if kind == "bool":
        return pc.cast(column, pa.int8())
    if kind == "int64":
        return pc.cast(column, pa.int64(), safe=False)
    if kind == "float64":
        # float32 stays float32: its text form is the short one the file meant ("0.1").
        if pa.types.is_float32(arrow_type) or pa.types.is_float64(arrow_type):
            return column
        return pc.cast(column, pa.float64(), safe=False)
    if pa.types.is_string(arrow_type):
        return column
    return pc.cast(column, pa.string())


def prepare_batch(batch: pa.RecordBatch | pa.Table, columns: CatalogColumns, chunker: Chunker,
                  overlap_deg: float) -> PreparedBatch:
    """Rows to store for one input batch (vectorised), skipping and counting unplaceable rows."""
    ra_all = _as_float(batch.column(columns.ra_source))
    dec_all = _as_float(batch.column(columns.dec_source))
    ids_all = batch.column(columns.id.source)
    valid = (np.isfinite(ra_all) & np.isfinite(dec_all) & (ra_all >= 0.0) & (ra_all <= 360.0)
             & (dec_all >= -90.0) & (dec_all <= 90.0))
    if ids_all.null_count:
        valid &= np.asarray(pc.is_valid(ids_all).to_numpy(zero_copy_only=False), dtype=bool)
    skipped = int(len(valid) - np.count_nonzero(valid))
    if skipped:
        mask = pa.array(valid)
        batch = batch.filter(mask)
        ra, dec = ra_all[valid], dec_all[valid]
    else:
        ra, dec = ra_all, dec_all
    ra = np.where(ra >= 360.0, ra - 360.0, ra)
    ids = _storable(batch.column(columns.id.source), columns.id.kind)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    chunk_id = chunker.locate(ra, dec)
    cells = hpx29(ra, dec) if len(ra) else np.array([], dtype=np.int64)
    if overlap_deg > 0 and len(ra):
        overlap_index, overlap_chunk = halo_pairs(chunker, ra, dec, overlap_deg)
    else:
        overlap_index = overlap_chunk = np.array([], dtype=np.int64)
    arrays = [pa.array(chunk_id, pa.int64()), pa.array(cells, pa.int64()), ids,
              pa.array(ra, pa.float64()), pa.array(dec, pa.float64())]
    arrays += [_storable(batch.column(c.source), c.kind) for c in columns.data]
    names = ["chunk_id", "hpx29", "id", "ra", "dec", *(c.name for c in columns.data)]
    table = pa.Table.from_arrays(arrays, names=names)
    return PreparedBatch(table=table, ids=ids, ra=ra, dec=dec, chunk_id=chunk_id, hpx29=cells,
                         overlap_index=overlap_index, overlap_chunk=overlap_chunk,
                         skipped=skipped)


_STRIPE_CHUNKS: dict[tuple[int, int], np.ndarray] = {}


def _chunks_per_stripe(chunker: Chunker) -> np.ndarray:
    key = (chunker.num_stripes, chunker.num_sub_stripes)
    if key not in _STRIPE_CHUNKS:
        stripes = chunker.all_chunks // (2 * chunker.num_stripes)
        _STRIPE_CHUNKS[key] = np.bincount(stripes, minlength=chunker.num_stripes)
    return _STRIPE_CHUNKS[key]


def halo_pairs(chunker: Chunker, ra: np.ndarray, dec: np.ndarray,
               overlap_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """`overlap_chunks`, run only on the rows near a chunk edge (the same pairs, faster).

    Most rows lie well inside their chunk: farther than the overlap (with a 10 % margin) from
    their stripe's declination edges, and farther from their chunk's RA edges than the RA
    half-width of the overlap circle, bounded above by ``1.1 R / cos(|dec| + 2R)``. A point
    displaced by at most that much stays in its chunk, so such a row belongs to no halo and
    `overlap_chunks` would return nothing for it; only the others, and every row within two
    stripes of a pole, are handed to it. The tests check both give the same pairs.
    """
    radius = 1.1 * float(overlap_deg) + 1e-6
    height = 180.0 / chunker.num_stripes
    stripe = np.clip(np.floor((dec + 90.0) / height).astype(np.int64), 0,
                     chunker.num_stripes - 1)
    in_stripe = dec + 90.0 - stripe * height
    near = (in_stripe <= radius) | (height - in_stripe <= radius)
    width = 360.0 / _chunks_per_stripe(chunker)[stripe]
    in_chunk = np.mod(ra, width)
    cos_dec = np.cos(np.radians(np.clip(np.abs(dec) + 2 * radius, 0.0, 90.0)))
    d_ra = np.where(cos_dec > 1e-6, radius / np.maximum(cos_dec, 1e-6), 360.0)
    near |= (in_chunk <= d_ra) | (width - in_chunk <= d_ra)
    near |= np.abs(dec) + 2 * radius >= 90.0 - 2 * height
    candidates = np.nonzero(near)[0]
    if candidates.size == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    rows, chunks = overlap_chunks(chunker, ra[candidates], dec[candidates], overlap_deg)
    return candidates[rows], chunks
