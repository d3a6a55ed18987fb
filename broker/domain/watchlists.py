"""Watchlists: users' cones, read from their uploads and matched against alerts in bulk.

Two parts, no storage and no Kafka:

- `parse_cones` reads an upload (CSV with a header, or JSON) into `Cones`, checking every row
  and reporting every bad one by line (or item) number and reason: coordinates missing, not
  numbers, NaN or out of range; a radius not positive or above `MAX_RADIUS_ARCSEC`; a name
  missing, too long or given twice; more rows than the caller's tier allows. Nothing is kept
  of an upload with a bad row.
- `ConeIndex` finds, for a batch of positions, every cone that contains each of them. A cone of
  radius r is filed under the HEALPix cell (nested) holding its centre at the deepest order
  whose cells are still wide enough that the whole cone lies in that cell and its eight
  neighbours (`order_for_radius`): so the index has one entry per cone, and looking a position
  up takes, for each order in use, its cell and the cell's neighbours, found by binary search
  in the sorted cells of that order. The candidates are then checked exactly (haversine).
  Everything is vectorised with numpy; cdshealpix gives the cells and neighbours.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cdshealpix import cdshealpix as _healpix
from cdshealpix.nested import neighbours

from broker.domain.sky import HPX_ORDER, SkyCells, hpx29, sky_cells

#: Largest cone radius (30 arcmin): a wider area is a watchmap (a MOC), not a cone.
MAX_RADIUS_ARCSEC = 1800.0
#: Longest cone name.
MAX_NAME_LENGTH = 64
#: Deepest order the index files cones at (cells of about 3.2 arcsec).
MAX_ORDER = 16
#: Errors listed in one answer; the count says how many there were.
MAX_ERRORS_SHOWN = 100

# A cell at order k is about 58.6 / 2**k degrees across; the narrowest cells (near the poles
# and the base cells' corners) are about half that. A cone whose radius is under 0.45 of the
# nominal width (0.9 of the narrowest) lies within its centre's cell and that cell's eight
# neighbours; the tests check it against brute force, cones at cell corners and poles included.
_CELL_DEG_AT_ORDER_0 = 58.6
_SAFETY = 0.45


@dataclass(frozen=True, slots=True)
class Cones:
    """Cones as columns: ``name``, ``ra``, ``dec`` (degrees), ``radius_arcsec``."""

    name: list[str]
    ra: np.ndarray
    dec: np.ndarray
    radius_arcsec: np.ndarray

    def __len__(self) -> int:
        return len(self.name)


@dataclass(frozen=True, slots=True)
class RowError:
    """One bad row of an upload: its line (CSV, counting the header as line 1) or item number
    (JSON, from 1) and what is wrong with it."""

    line: int
    reason: str


class UploadError(ValueError):
    """An upload that cannot be kept, with every bad row (`errors`) or one general reason."""

    def __init__(self, message: str, errors: Sequence[RowError] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


def _number(value: Any, what: str) -> tuple[float | None, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"{what} is missing"
    if isinstance(value, bool):
        return None, f"{what} {value!r} is not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{what} {value!r} is not a number"
    if not math.isfinite(number):
        return None, f"{what} is {value!r}, not a finite number"
    return number, None


def _check_row(name: Any, ra: Any, dec: Any, radius: Any, default_radius: float,
               seen: dict[str, int], line: int) -> tuple[tuple[str, float, float, float] | None,
                                                      list[str]]:
    problems: list[str] = []
    ra_value, error = _number(ra, "ra")
    if error:
        problems.append(error)
    elif ra_value is not None and not 0.0 <= ra_value <= 360.0:
        problems.append(f"ra {ra_value:g} is outside [0, 360]")
    dec_value, error = _number(dec, "dec")
    if error:
        problems.append(error)
    elif dec_value is not None and not -90.0 <= dec_value <= 90.0:
        problems.append(f"dec {dec_value:g} is outside [-90, 90]")
    radius_value: float | None = default_radius
    if radius is not None and not (isinstance(radius, str) and not radius.strip()):
        radius_value, error = _number(radius, "radius")
        if error:
            problems.append(error)
        elif radius_value is not None and not 0.0 < radius_value <= MAX_RADIUS_ARCSEC:
            problems.append(f"radius {radius_value:g} is not in (0, {MAX_RADIUS_ARCSEC:g}] arcsec")
    text = "" if name is None else str(name).strip()
    if not text:
        problems.append("name is missing")
    elif len(text) > MAX_NAME_LENGTH:
        problems.append(f"name is {len(text)} characters long, more than {MAX_NAME_LENGTH}")
    elif text in seen:
        problems.append(f"name {text!r} is also on line {seen[text]}")
    else:
        seen[text] = line
    if problems:
        return None, problems
    assert ra_value is not None
    assert dec_value is not None
    assert radius_value is not None
    return (text, ra_value % 360.0, dec_value, radius_value), []


def _rows_of_csv(body: str) -> Iterable[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(body))
    try:
        header = next(reader)
    except StopIteration:
        raise UploadError("the upload is empty: give a header line (ra,dec,name[,radius]) "
                          "and one line per cone") from None
    except csv.Error as exc:
        raise UploadError(f"line 1 is not CSV: {exc}") from None
    columns = [h.strip().lower() for h in header]
    missing = [c for c in ("ra", "dec", "name") if c not in columns]
    if missing:
        raise UploadError(f"the header line has no {', '.join(missing)} column "
                          f"(it has: {', '.join(columns) or 'nothing'}); the columns are "
                          "ra, dec, name and optionally radius (arcsec)")
    unknown = [c for c in columns if c not in ("ra", "dec", "name", "radius")]
    if unknown:
        raise UploadError(f"the header line has unknown columns {', '.join(unknown)}; the "
                          "columns are ra, dec, name and optionally radius (arcsec)")
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                yield line, {"_error": f"has {len(row)} fields, the header {len(columns)}"}
                continue
            yield line, dict(zip(columns, row, strict=True))
    except csv.Error as exc:
        raise UploadError(f"line {reader.line_num} is not CSV: {exc}") from None


def _rows_of_json(body: str) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise UploadError(f"the body is not JSON: {exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}") from None
    items = data.get("cones") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UploadError('the JSON body must be a list of cones, or {"cones": [...]}, each '
                          '{"ra": .., "dec": .., "name": .., "radius": ..}')
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            yield number, {"_error": "is not an object with ra, dec and name"}
            continue
        unknown = sorted(set(item) - {"ra", "dec", "name", "radius"})
        if unknown:
            yield number, {"_error": f"has unknown fields {', '.join(unknown)}"}
            continue
        yield number, item


def parse_cones(body: str, fmt: str, *, default_radius_arcsec: float,
                max_rows: int) -> Cones:
    """The cones of an upload, or `UploadError` listing every bad row.

    ``fmt`` is ``csv`` (a header line naming ra, dec, name and optionally radius, in any order;
    ``line`` numbers count the header as line 1) or ``json`` (a list of objects, or
    ``{"cones": [...]}``; ``line`` is the item's number from 1). A row without a radius gets
    ``default_radius_arcsec``.
    """
    if not 0.0 < default_radius_arcsec <= MAX_RADIUS_ARCSEC:
        msg = (f"the default radius {default_radius_arcsec:g} is not in "
               f"(0, {MAX_RADIUS_ARCSEC:g}] arcsec")
        raise UploadError(msg)
    if fmt == "csv":
        rows = _rows_of_csv(body)
    elif fmt == "json":
        rows = _rows_of_json(body)
    else:
        msg = f"format {fmt!r} is not csv or json"
        raise UploadError(msg)
    names: list[str] = []
    ras: list[float] = []
    decs: list[float] = []
    radii: list[float] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    count = 0
    for line, row in rows:
        count += 1
        if "_error" in row:
            errors.append(RowError(line, row["_error"]))
            continue
        good, problems = _check_row(row.get("name"), row.get("ra"), row.get("dec"),
                                    row.get("radius"), default_radius_arcsec, seen, line)
        if good is None:
            errors.append(RowError(line, "; ".join(problems)))
            continue
        names.append(good[0])
        ras.append(good[1])
        decs.append(good[2])
        radii.append(good[3])
    if count > max_rows:
        msg = (f"the upload has {count:,} cones, more than the {max_rows:,} your tier allows "
               "in one watchlist")
        raise UploadError(msg)
    if errors:
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise UploadError(f"{len(errors)} bad rows, nothing kept: {shown}{more}",
                          errors[:MAX_ERRORS_SHOWN])
    if count == 0:
        raise UploadError("the upload has no cones")
    return Cones(names, np.array(ras, dtype=np.float64), np.array(decs, dtype=np.float64),
                 np.array(radii, dtype=np.float64))


# ---- matching ---------------------------------------------------------------------------------


def order_for_radius(radius_arcsec: np.ndarray) -> np.ndarray:
    """The deepest order (at most `MAX_ORDER`) whose cells are wide enough that a cone of this
    radius lies within its centre's cell and that cell's eight neighbours."""
    radius_deg = np.maximum(np.asarray(radius_arcsec, dtype=np.float64), 1e-3) / 3600.0
    order = np.floor(np.log2(_CELL_DEG_AT_ORDER_0 * _SAFETY / radius_deg))
    return np.clip(order, 0, MAX_ORDER).astype(np.int8)


def max_cell_radius_deg(order: int) -> float:
    """The largest distance from a cell's centre to any of its points at ``order`` (degrees):
    HEALPix's ``max_pixrad`` (the centre-to-corner distance of the most distorted cell, near
    the polar caps' edge), plus 5 % for edges that bulge past their corners. The tests check
    it against random points, polar caps included."""
    nside = 2 ** order

    def unit(z: float, phi: float) -> np.ndarray:
        s = math.sqrt(max(0.0, 1.0 - z * z))
        return np.array([s * math.cos(phi), s * math.sin(phi), z])

    a = unit(2.0 / 3.0, math.pi / (4 * nside))
    b = unit(1.0 - (1.0 - 1.0 / nside) ** 2 / 3.0, 0.0)
    return 1.05 * math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(a @ b)))


def _cells(deep: np.ndarray, order: int) -> np.ndarray:
    """The nested cells at ``order`` of order-29 indices (a nested index's parent is the index
    shifted right by two bits per order)."""
    return deep >> (2 * (HPX_ORDER - order))


def separation_arcsec(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray,
                      dec2: np.ndarray) -> np.ndarray:
    """Angular separations (haversine, stable at small angles), arcsec."""
    r1, d1, r2, d2 = (np.radians(a) for a in (ra1, dec1, ra2, dec2))
    s = (np.sin((d2 - d1) / 2.0) ** 2
         + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2.0) ** 2)
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(s, 0.0, 1.0)))) * 3600.0


#: Deepest order whose every cell gets a slot in a dense offsets table (12 * 4**9 cells, 25 MB
#: of int64): a lookup there is one index, not a binary search.
DENSE_MAX_ORDER = 9
#: Cones whose own order is deeper than `DENSE_MAX_ORDER` are filed at that order instead while
#: they are sparse there (at most this many per occupied cell on average): a dense lookup is
#: cheaper than a binary search, and a few more candidates cost less than another level. A
#: crowded deep level (a field's worth of small cones) keeps its own order.
MERGE_OCCUPANCY = 2.0
#: Added to the radius in the float32 declination prefilter: far more than float32's rounding
#: of a declination (under 1e-5 degrees), so the prefilter never drops a cone's true match.
_PREFILTER_SLACK_DEG = 1e-4
#: Cones filed per build step: bounds the memory of their 9 candidate cells.
_BUILD_STEP = 262_144


@dataclass(frozen=True, slots=True)
class _Level:
    order: int
    cells: np.ndarray  # sorted cells the cones filed at this order overlap
    cones: np.ndarray  # the cone (position in the index's arrays) of each cell entry
    #: Dense levels: ``offsets[c]:offsets[c + 1]`` are the entries of cell c. Sparse levels:
    #: None, and `cells` is binary-searched.
    offsets: np.ndarray | None
    #: Each entry's cone's declination, and its radius plus `_PREFILTER_SLACK_DEG` (degrees,
    #: float32): the declination test reads them in entry order, not scattered over the cones.
    dec: np.ndarray
    reach: np.ndarray

    def lookup(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first entry and the number of entries of each wanted cell."""
        if self.offsets is not None:
            start = self.offsets[wanted]
            return start, self.offsets[wanted + 1] - start
        # Binary search of the distinct wanted cells only, in order (cache-friendly).
        distinct, back = np.unique(wanted, return_inverse=True)
        first = np.searchsorted(self.cells, distinct, side="left")
        last = np.searchsorted(self.cells, distinct, side="right")
        return first[back], (last - first)[back]


def _overlapped(ra: np.ndarray, dec: np.ndarray, radius_arcsec: np.ndarray, deep: np.ndarray,
                order: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells at ``order`` each cone may overlap, as (cone, cell) pairs: its centre's cell,
    and those of the eight neighbours whose centre is within the cone's radius plus
    `max_cell_radius_deg` of the cone's centre (no point of a farther cell can be in the
    cone). The caller guarantees the cones lie within their centre cell's 3 x 3 block."""
    centre = _cells(deep, order)
    near = neighbours(centre.astype(np.uint64), order)  # (n, 9): the cell itself included
    flat = near.ravel()
    valid = flat >= 0
    lon = np.zeros(flat.size)
    lat = np.zeros(flat.size)
    if valid.any():
        cells = flat[valid].astype(np.uint64)
        lon_v, lat_v = np.empty(cells.size), np.empty(cells.size)
        _healpix.healpix_to_lonlat(np.full(cells.size, order, dtype=np.uint8), cells, 0.5, 0.5,
                                   lon_v, lat_v, np.uint16(0))
        lon[valid], lat[valid] = np.degrees(lon_v), np.degrees(lat_v)
    cone = np.repeat(np.arange(ra.size), near.shape[1])
    # Haversine against the reach's, without the inverse trigonometry (the build is dominated
    # by these nine tests per cone).
    reach = np.radians(radius_arcsec / 3600.0 + max_cell_radius_deg(order))
    limit = np.sin(np.minimum(reach, math.pi) / 2.0) ** 2
    d1, d2 = np.radians(dec), np.radians(lat)
    cos1 = np.cos(d1)
    hav = (np.sin((d2 - d1[cone]) / 2.0) ** 2
           + cos1[cone] * np.cos(d2) * np.sin((np.radians(lon) - np.radians(ra)[cone]) / 2.0) ** 2)
    keep = valid & ((flat == np.repeat(centre, near.shape[1])) | (hav <= limit[cone]))
    return cone[keep], flat[keep]


class ConeIndex:
    """Cones (of any number of watchlists) to match batches of positions against; `match`
    answers with indices into the arrays it was built from.

    Each cone is filed at one order (see `order_for_radius` and `MERGE_OCCUPANCY`) in every
    cell of that order it may overlap, so a position looks up one cell per order: its own.
    """

    def __init__(self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: np.ndarray) -> None:
        self.ra = np.asarray(ra, dtype=np.float64) % 360.0
        self.dec = np.asarray(dec, dtype=np.float64)
        self.radius_arcsec = np.asarray(radius_arcsec, dtype=np.float64)
        orders = order_for_radius(self.radius_arcsec)
        deep = hpx29(self.ra, self.dec) if self.ra.size else np.zeros(0, dtype=np.int64)
        for order in np.unique(orders[orders > DENSE_MAX_ORDER]).tolist():
            members = orders == order
            occupied = np.unique(_cells(deep[members], DENSE_MAX_ORDER)).size
            if members.sum() <= MERGE_OCCUPANCY * occupied:
                orders[members] = DENSE_MAX_ORDER
        self.levels: list[_Level] = []
        for order in np.unique(orders).tolist():
            members = np.flatnonzero(orders == order)
            parts_cone, parts_cell = [], []
            for lo in range(0, members.size, _BUILD_STEP):
                part = members[lo:lo + _BUILD_STEP]
                cone, cell = _overlapped(self.ra[part], self.dec[part], self.radius_arcsec[part],
                                         deep[part], int(order))
                parts_cone.append(part[cone])
                parts_cell.append(cell)
            cells = np.concatenate(parts_cell)
            sort = np.argsort(cells, kind="stable")
            cells = cells[sort]
            cones = np.concatenate(parts_cone)[sort]
            offsets = None
            if order <= DENSE_MAX_ORDER:
                offsets = np.searchsorted(cells, np.arange(12 * 4 ** int(order) + 1))
            self.levels.append(_Level(
                int(order), cells, cones, offsets, self.dec[cones].astype(np.float32),
                (self.radius_arcsec[cones] / 3600.0 + _PREFILTER_SLACK_DEG).astype(np.float32)))

    def __len__(self) -> int:
        return int(self.ra.size)

    def cover(self) -> SkyCells:
        """Cells holding every position any cone can match (the cells the cones are filed in,
        at one order): what a retroactive match needs to read of the archive."""
        return sky_cells((level.order, level.cells) for level in self.levels)

    def match(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (position, cone) pair with the position inside the cone (distance <= radius):
        the positions' indices, the cones' indices and the separations in arcsec, ordered by
        position then cone."""
        ra = np.asarray(ra, dtype=np.float64) % 360.0
        dec = np.asarray(dec, dtype=np.float64)
        found_points: list[np.ndarray] = []
        found_cones: list[np.ndarray] = []
        deep = hpx29(ra, dec) if ra.size and self.levels else np.zeros(0, dtype=np.int64)
        every = np.arange(ra.size)
        dec32 = dec.astype(np.float32)
        for level in self.levels:
            start, counts = level.lookup(_cells(deep, level.order))
            hit = counts > 0
            if not hit.any():
                continue
            points, start, counts = every[hit], start[hit], counts[hit]
            total = int(counts.sum())
            # The entries start[i] .. start[i] + counts[i] - 1 of every hit, flattened.
            entries = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(total)
            points = np.repeat(points, counts)
            # Most candidates are far off in declination alone: a subtraction drops them
            # before the trigonometry.
            near = np.abs(dec32[points] - level.dec[entries]) <= level.reach[entries]
            found_points.append(points[near])
            found_cones.append(level.cones[entries[near]])
        points = np.concatenate(found_points) if found_points else np.zeros(0, dtype=np.int64)
        cones = np.concatenate(found_cones) if found_cones else np.zeros(0, dtype=np.int64)
        distance = separation_arcsec(ra[points], dec[points], self.ra[cones], self.dec[cones])
        inside = distance <= self.radius_arcsec[cones]
        points, cones, distance = points[inside], cones[inside], distance[inside]
        order = np.lexsort((cones, points))
        return points[order], cones[order], distance[order]
