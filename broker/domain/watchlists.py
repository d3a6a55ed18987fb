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
from cdshealpix.nested import neighbours

from broker.domain.sky import HPX_ORDER, hpx29

#: Largest cone radius (30 arcmin): a wider area is a watchmap (a MOC), not a cone.
MAX_RADIUS_ARCSEC = 1800.0
#: Longest cone name.
MAX_NAME_LENGTH = 64
#: Deepest order the index files cones at (cells of about 3.2 arcsec).
MAX_ORDER = 16
#: Errors listed in one answer; the count says how many there were.
MAX_ERRORS_SHOWN = 100

# A cell at order k is about 58.6 / 2**k degrees across; the narrowest cells (near the poles
# and the base cells' corners) are about half that. A cone whose radius is under a third of the
# nominal width lies within its centre's cell and that cell's eight neighbours.
_CELL_DEG_AT_ORDER_0 = 58.6
_SAFETY = 1.0 / 3.0


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
    """The order each cone is filed at: the deepest (at most `MAX_ORDER`) whose cells are wide
    enough that the cone lies in its centre's cell and that cell's eight neighbours."""
    radius_deg = np.maximum(np.asarray(radius_arcsec, dtype=np.float64), 1e-3) / 3600.0
    order = np.floor(np.log2(_CELL_DEG_AT_ORDER_0 * _SAFETY / radius_deg))
    return np.clip(order, 0, MAX_ORDER).astype(np.int8)


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


#: Deepest order whose every cell gets a slot in a dense offsets table (12 * 4**9 cells, 12 MB
#: of int32): a lookup there is one index, not a binary search.
DENSE_MAX_ORDER = 9


@dataclass(frozen=True, slots=True)
class _Level:
    order: int
    cells: np.ndarray  # sorted cells of the cones filed at this order
    cones: np.ndarray  # the cone (position in the index's arrays) of each cell entry
    #: Dense levels: ``offsets[c]:offsets[c + 1]`` are the entries of cell c. Sparse levels:
    #: None, and `cells` is binary-searched.
    offsets: np.ndarray | None

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


class ConeIndex:
    """Cones (of any number of watchlists) to match batches of positions against; `match`
    answers with indices into the arrays it was built from."""

    def __init__(self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: np.ndarray) -> None:
        self.ra = np.asarray(ra, dtype=np.float64)
        self.dec = np.asarray(dec, dtype=np.float64)
        self.radius_arcsec = np.asarray(radius_arcsec, dtype=np.float64)
        orders = order_for_radius(self.radius_arcsec)
        deep = hpx29(self.ra, self.dec) if self.ra.size else np.zeros(0, dtype=np.int64)
        self.levels: list[_Level] = []
        for order in np.unique(orders).tolist():
            members = np.flatnonzero(orders == order)
            cells = _cells(deep[members], int(order))
            sort = np.argsort(cells, kind="stable")
            cells = cells[sort]
            offsets = None
            if order <= DENSE_MAX_ORDER:
                offsets = np.searchsorted(cells, np.arange(12 * 4 ** int(order) + 1)).astype(
                    np.int64)
            self.levels.append(_Level(int(order), cells, members[sort], offsets))

    def __len__(self) -> int:
        return int(self.ra.size)

    def match(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (position, cone) pair with the position inside the cone (distance <= radius):
        the positions' indices, the cones' indices and the separations in arcsec, ordered by
        position then cone."""
        ra = np.asarray(ra, dtype=np.float64) % 360.0
        dec = np.asarray(dec, dtype=np.float64)
        found_points: list[np.ndarray] = []
        found_cones: list[np.ndarray] = []
        deep = hpx29(ra, dec) if ra.size and self.levels else np.zeros(0, dtype=np.int64)
        for level in self.levels:
            cells = _cells(deep, level.order)
            near = np.asarray(neighbours(cells.astype(np.uint64), level.order),
                              dtype=np.int64)  # (n, 9), the cell itself included; -1: none
            points = np.repeat(np.arange(ra.size), near.shape[1])
            wanted = near.ravel()
            keep = wanted >= 0
            points, wanted = points[keep], wanted[keep]
            start, counts = level.lookup(wanted)
            hit = counts > 0
            if not hit.any():
                continue
            points, start, counts = points[hit], start[hit], counts[hit]
            total = int(counts.sum())
            # The entries start[i] .. start[i] + counts[i] - 1 of every hit, flattened.
            offsets = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(total)
            found_points.append(np.repeat(points, counts))
            found_cones.append(level.cones[offsets])
        if not found_points:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float64)
        points = np.concatenate(found_points)
        cones = np.concatenate(found_cones)
        # Most candidates of the 3 x 3 cells are far off in declination alone: a subtraction
        # drops them before the trigonometry.
        near = np.abs(dec[points] - self.dec[cones]) * 3600.0 <= self.radius_arcsec[cones]
        points, cones = points[near], cones[near]
        distance = separation_arcsec(ra[points], dec[points], self.ra[cones], self.dec[cones])
        inside = distance <= self.radius_arcsec[cones]
        points, cones, distance = points[inside], cones[inside], distance[inside]
        order = np.lexsort((cones, points))
        return points[order], cones[order], distance[order]
