"""Sky indexing: Qserv-style chunks and HEALPix order-29 indices.

Chunk ids follow Qserv's partitioning (lsst/sphgeom ``Chunker``): the sphere is cut into ``S``
declination stripes, each into ``SS`` sub-stripes; each stripe is cut in RA into as many chunks as
keep any two points more than a chunk apart in RA at least a stripe height apart on the sky; the
chunk id is ``2 * S * stripe + chunk``. Locating a point is pure arithmetic, so it is vectorised
here in numpy (lsst-sphgeom only locates one point at a time through its region API); the tests
check it against ``lsst.sphgeom.Chunker`` on random points, edges and poles. Regions (a cone's
chunks, a chunk's bounding box) are answered by lsst-sphgeom itself.

Every positional row also carries ``hpx29``, its HEALPix nested index at order 29 (the HATS
``_healpix_29`` convention): order ``k`` is ``hpx29 >> 2 * (29 - k)``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cdshealpix
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy import units as u
from astropy.coordinates import Latitude, Longitude
from cdshealpix import cdshealpix as _cdshealpix_rs

#: HEALPix order of the ``hpx29`` column.
HPX_ORDER = 29


def _num_segments(lat_lo: float, lat_hi: float, width: float) -> int:
    """How many RA segments of at least ``width`` radians a latitude band is cut into.

    The same rule as sphgeom's ``computeNumSegments``: the segment count is fixed by the band
    edge nearest the pole, and is 1 when the band touches a pole.
    """
    if width > math.pi:
        return 1
    max_abs_lat = max(abs(lat_lo), abs(lat_hi))
    if max_abs_lat > 0.5 * math.pi - 4.85e-6:
        return 1
    cos_width = math.cos(width)
    sin_lat = math.sin(max_abs_lat)
    cos_lat = math.cos(max_abs_lat)
    x = cos_width - sin_lat * sin_lat
    u_ = cos_lat * cos_lat
    y = math.sqrt(abs(u_ * u_ - x * x))
    return math.floor(2.0 * math.pi / abs(math.atan2(y, x)))


@dataclass(frozen=True)
class Chunker:
    """Qserv's chunking with ``num_stripes`` stripes of ``num_sub_stripes`` sub-stripes."""

    num_stripes: int
    num_sub_stripes: int
    _tables: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False,
                                                               compare=False)

    def __post_init__(self) -> None:
        if self.num_stripes < 1 or self.num_sub_stripes < 1:
            msg = ("stripes and sub-stripes must be positive, not "
                   f"{self.num_stripes}/{self.num_sub_stripes}")
            raise ValueError(msg)
        stripe_height = math.pi / self.num_stripes
        total_sub = self.num_stripes * self.num_sub_stripes
        sub_height = math.pi / total_sub
        chunks_per_stripe = np.empty(self.num_stripes, dtype=np.int64)
        sub_chunks_per_chunk = np.empty(total_sub, dtype=np.int64)
        sub_chunk_width = np.empty(total_sub, dtype=np.float64)
        for i in range(self.num_stripes):
            n_chunks = _num_segments(i * stripe_height - 0.5 * math.pi,
                                     (i + 1) * stripe_height - 0.5 * math.pi, stripe_height)
            chunks_per_stripe[i] = n_chunks
            for j in range(i * self.num_sub_stripes, (i + 1) * self.num_sub_stripes):
                nss = _num_segments(j * sub_height - 0.5 * math.pi,
                                    (j + 1) * sub_height - 0.5 * math.pi, sub_height)
                per_chunk = nss // n_chunks
                sub_chunks_per_chunk[j] = per_chunk
                sub_chunk_width[j] = 2.0 * math.pi / (per_chunk * n_chunks)
        object.__setattr__(self, "_tables",
                           (chunks_per_stripe, sub_chunks_per_chunk, sub_chunk_width))

    @property
    def sub_stripe_height_deg(self) -> float:
        return 180.0 / (self.num_stripes * self.num_sub_stripes)

    def locate(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Chunk ids of points given in degrees (vectorised; RA taken modulo 360)."""
        chunks_per_stripe, sub_per_chunk, sub_width = self._tables
        ra_rad = np.radians(np.mod(np.asarray(ra, dtype=np.float64), 360.0))
        dec_rad = np.radians(np.asarray(dec, dtype=np.float64))
        total_sub = self.num_stripes * self.num_sub_stripes
        sub_height = math.pi / total_sub
        sub_stripe = np.floor((dec_rad + 0.5 * math.pi) / sub_height).astype(np.int64)
        np.clip(sub_stripe, 0, total_sub - 1, out=sub_stripe)
        stripe = sub_stripe // self.num_sub_stripes
        per_chunk = sub_per_chunk[sub_stripe]
        n_chunks = chunks_per_stripe[stripe]
        sub_chunk = np.floor(ra_rad / sub_width[sub_stripe]).astype(np.int64)
        limit = n_chunks * per_chunk
        sub_chunk = np.where(sub_chunk >= limit, limit - 1, sub_chunk)
        chunk = sub_chunk // per_chunk
        return 2 * self.num_stripes * stripe + chunk

    def locate_one(self, ra: float, dec: float) -> int:
        return int(self.locate(np.array([ra]), np.array([dec]))[0])

    @cached_property
    def all_chunks(self) -> np.ndarray:
        """Every chunk id, ascending."""
        chunks_per_stripe = self._tables[0]
        return np.concatenate([
            2 * self.num_stripes * s + np.arange(n, dtype=np.int64)
            for s, n in enumerate(chunks_per_stripe)
        ])


def hpx29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """HEALPix nested order-29 indices of points in degrees (vectorised, int64)."""
    lon = Longitude(np.mod(np.asarray(ra, dtype=np.float64), 360.0), unit=u.deg)
    lat = Latitude(np.asarray(dec, dtype=np.float64), unit=u.deg)
    return np.asarray(cdshealpix.lonlat_to_healpix(lon, lat, HPX_ORDER), dtype=np.int64)


#: Most cells a `SkyCells` cover holds (an IN list the database bisects per row).
MAX_COVER_CELLS = 200_000
#: Deepest order a `SkyCells` cover is made at.
MAX_COVER_ORDER = 9


@dataclass(frozen=True)
class SkyCells:
    """Distinct HEALPix nested cells at one order, sorted: the part of the sky where a
    retroactive match can find anything (the rest of the archive need not be read)."""

    order: int
    cells: np.ndarray

    @property
    def share(self) -> float:
        """The share of the sky the cells cover."""
        return float(self.cells.size) / (12 * 4**self.order)


def sky_cells(parts: Iterable[tuple[int, np.ndarray]]) -> SkyCells:
    """The cells, at the deepest order up to `MAX_COVER_ORDER` that needs at most
    `MAX_COVER_CELLS` of them, that hold every cell of ``parts`` ((order, nested cells)
    pairs, any orders): a cell deeper than the cover's is replaced by its parent, a coarser
    one by all its children."""
    parts = [(int(order), np.unique(np.asarray(cells, dtype=np.int64))) for order, cells in parts]
    for order in range(MAX_COVER_ORDER, -1, -1):
        # An upper bound of the count first, so a coarse cell is never expanded needlessly.
        bound = sum(c.size * 4 ** max(order - o, 0) for o, c in parts)
        if bound > MAX_COVER_CELLS and order > 0:
            deduped = sum(np.unique(c >> 2 * (o - order)).size for o, c in parts if o >= order)
            if deduped + sum(c.size * 4 ** (order - o) for o, c in parts if o < order) \
                    > MAX_COVER_CELLS:
                continue
        pieces = [np.unique(c >> 2 * (o - order)) if o >= order
                  else ((c << 2 * (order - o))[:, None]
                        + np.arange(4 ** (order - o), dtype=np.int64)).ravel()
                  for o, c in parts]
        cells = np.unique(np.concatenate(pieces)) if pieces else np.zeros(0, dtype=np.int64)
        return SkyCells(order, cells)
    raise AssertionError("order 0 has 12 cells")  # pragma: no cover


def angular_separation_deg(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray,
                           dec2: np.ndarray) -> np.ndarray:
    """Great-circle distance in degrees (Vincenty form: accurate at all separations)."""
    ra1, dec1, ra2, dec2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2)
    )
    d_ra = ra2 - ra1
    sin_d1, cos_d1 = np.sin(dec1), np.cos(dec1)
    sin_d2, cos_d2 = np.sin(dec2), np.cos(dec2)
    num1 = cos_d2 * np.sin(d_ra)
    num2 = cos_d1 * sin_d2 - sin_d1 * cos_d2 * np.cos(d_ra)
    denom = sin_d1 * sin_d2 + cos_d1 * cos_d2 * np.cos(d_ra)
    return np.degrees(np.arctan2(np.hypot(num1, num2), denom))


#: Margin added to cone radii when choosing chunks: an object keeps the chunk it was first placed
#: in while its mean position drifts by fractions of an arcsecond.
CHUNK_MARGIN_DEG = 2.0 / 3600.0
# cdshealpix computes a cone's cover this many orders deeper than the depth asked for (its
# default).
_COVER_DEPTH_DELTA = 2


@dataclass(frozen=True, slots=True)
class ConeCover:
    """The chunks a cone touches and the merged hpx29 ranges ``[lo, hi)`` covering it."""

    chunks: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]


def _cover_depth(radius_deg: float) -> int:
    # About 4-16 cells across the cone: few SQL ranges, little area outside the cone.
    if radius_deg <= 0:
        return HPX_ORDER - 2
    depth = math.floor(math.log2(58.6 / radius_deg / 4.0)) if radius_deg < 58.6 else 0
    # cdshealpix refines the cover two orders deeper than asked, and 29 is its deepest order.
    return max(0, min(HPX_ORDER - 2, depth))


def check_cone(ra: float, dec: float, radius_deg: float, limit: int) -> None:
    """Raise ValueError for a cone no catalog can answer: a non-finite centre, dec outside
    [-90, 90], a radius outside [0, 180] deg or a negative row limit."""
    if not (math.isfinite(ra) and math.isfinite(dec)):
        msg = f"cone centre ({ra}, {dec}) is not finite"
        raise ValueError(msg)
    if not -90.0 <= dec <= 90.0:
        msg = f"cone centre dec = {dec} is outside [-90, 90]"
        raise ValueError(msg)
    if not (math.isfinite(radius_deg) and 0.0 <= radius_deg <= 180.0):
        msg = f"cone radius {radius_deg} deg is not within [0, 180]"
        raise ValueError(msg)
    if limit < 0:
        msg = f"limit must not be negative, not {limit}"
        raise ValueError(msg)


def nearest_first(rows: list[dict], ra: float, dec: float, radius_deg: float, limit: int, *,
                  key: str) -> list[dict]:
    """Rows within the radius (exact great-circle distance), nearest first, ties broken by
    ``row[key]``, at most ``limit``, each given ``distance_arcsec``."""
    if not rows:
        return []
    distance = angular_separation_deg(np.full(len(rows), ra), np.full(len(rows), dec),
                                      np.array([r["ra"] for r in rows], dtype=np.float64),
                                      np.array([r["dec"] for r in rows], dtype=np.float64))
    inside = [(d, r) for d, r in zip(distance.tolist(), rows, strict=True) if d <= radius_deg]
    inside.sort(key=lambda pair: (pair[0], str(pair[1][key])))
    out = []
    for d, r in inside[:limit]:
        r["distance_arcsec"] = d * 3600.0
        out.append(r)
    return out


def cone_cover(chunker: Chunker, ra: float, dec: float, radius_deg: float) -> ConeCover:
    """Chunks (via lsst-sphgeom) and merged order-29 ranges (via cdshealpix) covering a cone."""
    import lsst.sphgeom as sg  # noqa: PLC0415 - imported where used: heavy, and only here

    centre = sg.UnitVector3d(sg.LonLat.fromDegrees(ra % 360.0, dec))
    circle = sg.Circle(centre, sg.Angle.fromDegrees(radius_deg + CHUNK_MARGIN_DEG))
    chunks = tuple(sorted(int(c) for c in chunker_sphgeom(chunker).getChunksIntersecting(circle)))
    depth = _cover_depth(radius_deg)
    # cdshealpix's compiled cone search, called as its public `cdshealpix.cone_search` calls
    # it, minus the astropy Longitude/Latitude/Quantity checks that cost ~90 us a call, four
    # times the search itself; a scalar cone needs none of them (the centre is normalised
    # here). tests/domain/test_sky.py checks this against the public function.
    ipix, depths, _ = _cdshealpix_rs.cone_search(
        np.uint8(depth), np.uint8(_COVER_DEPTH_DELTA), np.float64(math.radians(ra % 360.0)),
        np.float64(math.radians(dec)), np.float64(math.radians(max(radius_deg, 1e-9))), False,
    )
    shift = 2 * (HPX_ORDER - np.asarray(depths, dtype=np.int64))
    lo = np.asarray(ipix, dtype=np.int64) << shift
    hi = (np.asarray(ipix, dtype=np.int64) + 1) << shift
    order = np.argsort(lo)
    merged: list[list[int]] = []
    for a, b in zip(lo[order].tolist(), hi[order].tolist(), strict=True):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return ConeCover(chunks, tuple((a, b) for a, b in merged))


_SPHGEOM: dict[tuple[int, int], object] = {}


def chunker_sphgeom(chunker: Chunker) -> Any:
    """The lsst-sphgeom Chunker with the same parameters (cached)."""
    import lsst.sphgeom as sg  # noqa: PLC0415

    key = (chunker.num_stripes, chunker.num_sub_stripes)
    if key not in _SPHGEOM:
        _SPHGEOM[key] = sg.Chunker(*key)
    return _SPHGEOM[key]


def _crc_table() -> np.ndarray:
    table = np.empty(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc_table()


def crc32_of(ids: pa.Array) -> np.ndarray:
    """``zlib.crc32(str(id).encode())`` of every id, vectorised over the id's UTF-8 bytes."""
    text = pc.cast(ids, pa.string()) if not pa.types.is_string(ids.type) else ids
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    n = len(text)
    if n == 0:
        return np.array([], dtype=np.uint32)
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[text.offset: text.offset + n + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(1, dtype=np.uint8))
    if data.size == 0:
        data = np.zeros(1, dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    last = data.size - 1
    for j in range(int(lengths.max(initial=0))):
        byte = data[np.minimum(starts + j, last)].astype(np.uint32)
        stepped = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> np.uint32(8))
        crc = np.where(j < lengths, stepped, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class ChunkPlacement:
    """Which shard holds a chunk: a fixed function of the chunk id and the shard count.

    Neighbouring chunks (consecutive ids along a stripe) go to different shards, so a cone that
    touches several chunks usually queries several shards in parallel.
    """

    shards: int

    def shard_of(self, chunk_id: int) -> int:
        return int(chunk_id) % self.shards

    def shards_of(self, chunk_ids: np.ndarray) -> np.ndarray:
        return np.asarray(chunk_ids, dtype=np.int64) % self.shards

    def director_shard(self, key: object) -> int:
        """The shard of a director row: ``crc32(str(id)) % shards`` (the object catalog's and
        every reference catalog's director)."""
        return zlib.crc32(str(key).encode()) % self.shards

    def director_shards(self, ids: pa.Array) -> np.ndarray:
        """`director_shard` of every id, vectorised."""
        return (crc32_of(ids) % np.uint32(self.shards)).astype(np.int64)

    def by_shard(self, chunk_ids: Iterable[int]) -> dict[int, list[int]]:
        """The chunks grouped by the shard that holds them, in the order given."""
        groups: dict[int, list[int]] = {}
        for chunk in chunk_ids:
            groups.setdefault(self.shard_of(chunk), []).append(int(chunk))
        return groups


def overlap_chunks(chunker: Chunker, ra: np.ndarray, dec: np.ndarray,
                   overlap_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The overlap halos each point belongs to: pairs ``(row index, chunk id)``.

    A point belongs to the halo of every chunk other than its own that lies within
    ``overlap_deg`` of it. Those chunks are found by locating the point displaced by ``±R`` in
    declination and by ``±ΔRA = asin(sin R / cos dec)`` in RA (the RA half-width of the circle of
    radius R; 180° when the circle holds a pole). Qserv's chunks are at least 2R high and at least
    ΔRA wide for the overlaps allowed here, so any chunk within R holds one of those eight
    points. Within a stripe of a pole, where chunks get few and wide, the circle's whole parallel
    is sampled as well. The result is a superset of the exact halo (the circle's bounding box
    counts), which costs a few halo rows and loses nothing: matching filters on exact distances.
    """
    ra = np.mod(np.asarray(ra, dtype=np.float64), 360.0)
    dec = np.asarray(dec, dtype=np.float64)
    home = chunker.locate(ra, dec)
    r = float(overlap_deg) * (1.0 + 1e-6) + 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sin(np.radians(r)) / np.cos(np.radians(dec))
        d_ra = np.where((s >= 1.0) | ~np.isfinite(s) | (s < 0), 180.0,
                        np.degrees(np.arcsin(np.clip(s, 0.0, 1.0))))
    rows, chunks = [], []
    for sign_ra, sign_dec in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0),
                              (1, 1)):
        shifted_dec = np.clip(dec + sign_dec * r, -90.0, 90.0)
        located = chunker.locate(ra + sign_ra * d_ra, shifted_dec)
        other = located != home
        rows.append(np.nonzero(other)[0])
        chunks.append(located[other])
    polar = np.nonzero(np.abs(dec) + r >= 90.0 - 180.0 / chunker.num_stripes)[0]
    if polar.size:
        for shift in (-r, 0.0, r):
            shifted_dec = np.clip(dec[polar] + shift, -90.0, 90.0)
            for sample_ra in np.linspace(0.0, 360.0, 73)[:-1]:
                located = chunker.locate(np.full(polar.size, sample_ra), shifted_dec)
                near = angular_separation_deg(ra[polar], dec[polar], sample_ra,
                                              shifted_dec) <= r
                other = (located != home[polar]) & near
                rows.append(polar[other])
                chunks.append(located[other])
    pairs = np.unique(np.stack([np.concatenate(rows), np.concatenate(chunks)], axis=1), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
