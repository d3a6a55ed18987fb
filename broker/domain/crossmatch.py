"""Batch cross-match of positions against chunked catalogs, with an in-memory chunk cache.

A batch of positions (alerts) is grouped by Qserv chunk (:meth:`Chunker.locate`). Each catalog
chunk is read *with its overlap halo* (the rows of neighbouring chunks within the overlap radius),
so a position only ever needs the chunk it falls in: every catalog row within ``radius`` of it is
in that chunk's rows as long as ``radius <= overlap``. Chunks missing from the cache are read in
ONE :meth:`ChunkSource.load` call per catalog per batch (the storage layer answers it with one
query per shard), then kept in a :class:`ChunkCache` bounded by rows and evicted by least recent
use.

Matching is vectorised two ways, both exact (candidates are filtered on the exact angular
separation, :func:`angular_separation_deg`, so answers do not depend on the path):

* a KD-tree (``scipy.spatial.cKDTree``) on the unit vectors of a chunk's rows, built lazily once a
  chunk has been asked for ``tree_after`` positions in total (``query`` with an upper bound of the
  chord ``2 sin(r/2)`` for the nearest row, ``query_ball_point`` for all rows);
* for chunks that are still cold (few positions so far), a declination-window search: rows are
  kept sorted by declination inside each chunk, one ``searchsorted`` per chunk finds every
  position's window ``|Δdec| <= r``, and the few candidates of all cold chunks are filtered
  exactly in one vectorised pass. Building trees for every cold chunk an ingest batch touches
  (a 100k-position batch touches every chunk of the sky) would cost more than the matching.

Both paths give what a brute-force computation gives (astropy ``match_to_catalog_sky`` and
``search_around_sky``), at RA 0/360, at the poles and on chunk edges: the tests check this.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal, Protocol

import numpy as np
from scipy.spatial import cKDTree

from broker.domain.sky import Chunker, angular_separation_deg, overlap_chunks

Mode = Literal["nearest", "all"]

#: Slack added to declination windows and chord bounds so float rounding never drops a candidate
#: (candidates are then filtered on the exact separation).
_WINDOW_PAD_DEG = 1e-6
_CHORD_SLACK = 1e-9


@dataclass(frozen=True)
class ChunkRows:
    """The rows of one catalog chunk INCLUDING its overlap halo.

    ``ids`` are int64 (or object/str) row identifiers, ``ra``/``dec`` float64 degrees, and
    ``columns`` optional extra per-row arrays of the same length.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        bad = len(self.ra) != n or len(self.dec) != n
        if self.columns and not bad:
            bad = any(len(c) != n for c in self.columns.values())
        if bad:
            msg = "ids, ra, dec and columns of a chunk must have the same length"
            raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.ids)


class ChunkSource(Protocol):
    """Reads chunks of a catalog (with overlap); one call for many chunks."""

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        """Rows (with halo) of each requested chunk; a chunk with no rows may be left out."""
        ...


def halo_chunks(chunker: Chunker, ra: np.ndarray, dec: np.ndarray,
                overlap_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, chunk) pair such that the chunk's rows-with-overlap must include the row:
    the row's own chunk, and the halos of `broker.domain.sky.overlap_chunks`."""
    own = np.arange(len(np.asarray(ra)), dtype=np.int64)
    rows, chunks = overlap_chunks(chunker, ra, dec, overlap_deg)
    return (np.concatenate([own, rows]),
            np.concatenate([chunker.locate(ra, dec), chunks]))


@dataclass
class _CatalogChunks:
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    columns: dict[str, np.ndarray]
    chunk_ids: np.ndarray  # ascending, unique
    starts: np.ndarray  # len(chunk_ids) + 1 offsets


class InMemoryChunkSource:
    """A :class:`ChunkSource` over arrays held in memory (tests, benchmarks).

    Rows are stored grouped by chunk (each chunk with its halo, see :func:`halo_chunks`) and sorted
    by declination within a chunk; ``load`` returns views. ``calls`` records every ``load`` call.
    """

    def __init__(self, catalogs: Mapping[str, _CatalogChunks]) -> None:
        self._catalogs = dict(catalogs)
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    @classmethod
    def from_arrays(
        cls,
        catalogs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]
                          | tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]],
        chunker: Chunker,
        overlap_deg: float,
    ) -> InMemoryChunkSource:
        """Chunk ``{name: (ids, ra, dec[, columns])}`` with an overlap halo of ``overlap_deg``."""
        stripe_height = 180.0 / chunker.num_stripes
        if not 0 < overlap_deg < stripe_height / 2:
            msg = f"overlap must be positive and below half a stripe ({stripe_height / 2}°)"
            raise ValueError(msg)
        built: dict[str, _CatalogChunks] = {}
        for name, spec in catalogs.items():
            ids, ra, dec = (np.asarray(a) for a in spec[:3])
            extra: dict[str, np.ndarray] = dict(spec[3]) if len(spec) > 3 else {}
            ra = np.mod(ra.astype(np.float64, copy=False), 360.0)
            dec = dec.astype(np.float64, copy=False)
            rows, chunks = halo_chunks(chunker, ra, dec, overlap_deg)
            order = np.lexsort((dec[rows], chunks))
            rows, chunks = rows[order], chunks[order]
            chunk_ids, starts = np.unique(chunks, return_index=True)
            built[name] = _CatalogChunks(
                ids=ids[rows], ra=ra[rows], dec=dec[rows],
                columns={k: np.asarray(v)[rows] for k, v in extra.items()},
                chunk_ids=chunk_ids,
                starts=np.append(starts, len(rows)).astype(np.int64),
            )
        return cls(built)

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        self.calls.append((catalog, tuple(int(c) for c in chunk_ids)))
        data = self._catalogs[catalog]
        wanted = np.asarray(chunk_ids, dtype=np.int64)
        pos = np.searchsorted(data.chunk_ids, wanted)
        pos = np.minimum(pos, len(data.chunk_ids) - 1)
        found = data.chunk_ids[pos] == wanted if len(data.chunk_ids) else np.zeros(0, bool)
        out: dict[int, ChunkRows] = {}
        starts = data.starts
        for chunk, p in zip(wanted[found].tolist(), pos[found].tolist(), strict=True):
            a, b = int(starts[p]), int(starts[p + 1])
            out[chunk] = ChunkRows(
                data.ids[a:b], data.ra[a:b], data.dec[a:b],
                {k: v[a:b] for k, v in data.columns.items()},
            )
        return out


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    cos_d = np.cos(dec_r)
    return np.column_stack((cos_d * np.cos(ra_r), cos_d * np.sin(ra_r), np.sin(dec_r)))


class CachedChunk:
    """One (catalog, chunk) in the cache: rows sorted by declination, and a lazy KD-tree."""

    __slots__ = ("_tree", "columns", "dec", "ids", "queries", "ra")

    def __init__(self, ids: np.ndarray, ra: np.ndarray, dec: np.ndarray,
                 columns: dict[str, np.ndarray]) -> None:
        """Rows of a chunk, sorted here by declination unless they already are.

        RA is used as given: unit vectors and separations are periodic in RA.
        """
        ra = np.asarray(ra, dtype=np.float64)
        dec = np.asarray(dec, dtype=np.float64)
        ids = np.asarray(ids)
        if len(dec) > 1 and bool((dec[1:] < dec[:-1]).any()):
            order = np.argsort(dec, kind="stable")
            ra, dec, ids = ra[order], dec[order], ids[order]
            columns = {k: np.asarray(v)[order] for k, v in columns.items()}
        self.ids, self.ra, self.dec, self.columns = ids, ra, dec, columns
        self.queries = 0
        self._tree: cKDTree | None = None

    @classmethod
    def from_rows(cls, rows: ChunkRows | None) -> CachedChunk:
        if rows is None or len(rows) == 0:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), {})
        return cls(rows.ids, rows.ra, rows.dec, dict(rows.columns))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_tree(self) -> bool:
        return self._tree is not None

    def tree(self) -> cKDTree:
        """The KD-tree on the rows' unit vectors (built on first use)."""
        if self._tree is None:
            self._tree = cKDTree(_unit_vectors(self.ra, self.dec), balanced_tree=False,
                                 compact_nodes=False)
        return self._tree


class ChunkCache:
    """Chunks kept in memory, at most ``max_rows`` rows in total, evicted least recently used.

    Counts ``hits`` and ``misses`` (per chunk looked up), ``loads`` (source calls), ``evictions``.
    A chunk larger than the whole bound is still used for the batch that asked for it.
    """

    def __init__(self, max_rows: int = 50_000_000) -> None:
        if max_rows < 1:
            msg = "max_rows must be positive"
            raise ValueError(msg)
        self.max_rows = max_rows
        self._entries: OrderedDict[tuple[str, int], CachedChunk] = OrderedDict()
        self.rows = 0
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._entries

    def fetch(self, source: ChunkSource, catalog: str,
              chunk_ids: Sequence[int]) -> dict[int, CachedChunk]:
        """The cached chunks, loading the missing ones in one ``source.load`` call."""
        out: dict[int, CachedChunk] = {}
        missing: list[int] = []
        for chunk in chunk_ids:
            key = (catalog, int(chunk))
            entry = self._entries.get(key)
            if entry is None:
                missing.append(int(chunk))
            else:
                self._entries.move_to_end(key)
                out[int(chunk)] = entry
        self.hits += len(out)
        self.misses += len(missing)
        if missing:
            self.loads += 1
            loaded = source.load(catalog, missing)
            for chunk in missing:
                entry = CachedChunk.from_rows(loaded.get(chunk))
                out[chunk] = entry
                self._put((catalog, chunk), entry)
        return out

    def _put(self, key: tuple[str, int], entry: CachedChunk) -> None:
        self._entries[key] = entry
        self.rows += len(entry)
        while self.rows > self.max_rows and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self.rows -= len(old)
            self.evictions += 1
        if self.rows > self.max_rows:  # a single chunk above the bound: do not keep it
            self._entries.clear()
            self.rows = 0
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.rows = 0


@dataclass(frozen=True)
class Matches:
    """Matches of one catalog: ``index`` (position index), ``ids``, ``distance_arcsec``.

    ``nearest``: one row per position that has a match within the radius, sorted by position.
    ``all``: every (position, row) pair within the radius, sorted by position then distance.
    """

    index: np.ndarray
    ids: np.ndarray
    distance_arcsec: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class _Partial:
    index: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    dist: list[np.ndarray] = field(default_factory=list)

    def add(self, index: np.ndarray, ids: np.ndarray, dist_deg: np.ndarray) -> None:
        if len(index):
            self.index.append(index)
            self.ids.append(ids)
            self.dist.append(dist_deg)

    def result(self, id_dtype: np.dtype) -> Matches:
        if not self.index:
            return Matches(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=id_dtype),
                           np.zeros(0, dtype=np.float64))
        index = np.concatenate(self.index)
        ids = np.concatenate(self.ids)
        dist = np.concatenate(self.dist) * 3600.0
        order = np.lexsort((dist, index))
        return Matches(index[order], ids[order], dist[order])


def _nearest_of(pos: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Indices (into ``pos``/``dist``) of the smallest distance for each distinct ``pos``."""
    order = np.lexsort((dist, pos))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pos[order][1:] != pos[order][:-1]
    return order[first]


class CrossMatcher:
    """Cross-matches batches of positions against chunked catalogs (see the module doc).

    ``tree_after``: a chunk gets its KD-tree once this many positions in total have been matched
    against it (0: always use trees); colder chunks use the vectorised declination-window search.
    """

    def __init__(self, source: ChunkSource, chunker: Chunker, cache: ChunkCache,
                 overlap_deg: float, *, tree_after: int = 64) -> None:
        if overlap_deg <= 0:
            msg = "overlap must be positive"
            raise ValueError(msg)
        self.source = source
        self.chunker = chunker
        self.cache = cache
        self.overlap_deg = float(overlap_deg)
        self.tree_after = tree_after

    def match(self, ra: np.ndarray, dec: np.ndarray, catalogs: Sequence[str],
              radius_arcsec: float | Mapping[str, float],
              mode: Mode = "nearest") -> dict[str, Matches]:
        """For each catalog, the nearest (or all) rows within the radius of each position."""
        if mode not in ("nearest", "all"):
            msg = f"mode must be 'nearest' or 'all', not {mode!r}"
            raise ValueError(msg)
        ra = np.mod(np.atleast_1d(np.asarray(ra, dtype=np.float64)), 360.0)
        dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
        if ra.shape != dec.shape or ra.ndim != 1:
            msg = "ra and dec must be 1-D arrays of the same length"
            raise ValueError(msg)
        if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))
                and np.all(np.abs(dec) <= 90.0)):
            msg = "positions must be finite with |dec| <= 90"
            raise ValueError(msg)
        radii: dict[str, float] = {}
        for name in catalogs:
            r = (radius_arcsec[name] if isinstance(radius_arcsec, Mapping)
                 else radius_arcsec)
            r = float(r)
            if not r > 0:
                msg = f"radius for {name!r} must be positive, not {r}"
                raise ValueError(msg)
            if r / 3600.0 > self.overlap_deg:
                msg = (f"radius {r}\" for {name!r} exceeds the overlap "
                       f"{self.overlap_deg * 3600.0}\": matches beyond it could be missed")
                raise ValueError(msg)
            radii[name] = r
        # Group positions by chunk.
        chunk_of = self.chunker.locate(ra, dec)
        order = np.argsort(chunk_of, kind="stable")
        chunk_ids, starts = np.unique(chunk_of[order], return_index=True)
        bounds = np.append(starts, len(order))
        groups = [order[bounds[i]:bounds[i + 1]] for i in range(len(chunk_ids))]
        chunk_list = chunk_ids.tolist()
        return {
            name: self._match_catalog(name, ra, dec, chunk_list, groups, radii[name] / 3600.0,
                                      mode)
            for name in catalogs
        }

    def _match_catalog(self, catalog: str, ra: np.ndarray, dec: np.ndarray,
                       chunk_list: list[int], groups: list[np.ndarray], radius_deg: float,
                       mode: Mode) -> Matches:
        entries = self.cache.fetch(self.source, catalog, chunk_list)
        partial = _Partial()
        cold: list[tuple[CachedChunk, np.ndarray]] = []
        id_dtype: np.dtype = np.dtype(np.int64)
        chord = 2.0 * np.sin(np.radians(radius_deg) / 2.0) * (1.0 + _CHORD_SLACK) + 1e-15
        for chunk, group in zip(chunk_list, groups, strict=True):
            entry = entries[chunk]
            if len(entry) == 0:
                continue
            id_dtype = entry.ids.dtype
            entry.queries += len(group)
            if entry.has_tree or entry.queries >= self.tree_after:
                self._match_tree(entry, group, ra, dec, radius_deg, chord, mode, partial)
            else:
                cold.append((entry, group))
        if cold:
            self._match_window(cold, ra, dec, radius_deg, mode, partial)
        return partial.result(id_dtype)

    @staticmethod
    def _match_tree(entry: CachedChunk, group: np.ndarray, ra: np.ndarray, dec: np.ndarray,
                    radius_deg: float, chord: float, mode: Mode, partial: _Partial) -> None:
        tree = entry.tree()
        xyz = _unit_vectors(ra[group], dec[group])
        if mode == "nearest":
            _, rows = tree.query(xyz, k=1, distance_upper_bound=chord)
            hit = rows < len(entry)
            pos, rows = group[hit], rows[hit]
        else:
            found = tree.query_ball_point(xyz, chord)
            counts = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
            total = int(counts.sum())
            rows = np.fromiter(chain.from_iterable(found), dtype=np.int64, count=total)
            pos = np.repeat(group, counts)
        sep = angular_separation_deg(ra[pos], dec[pos], entry.ra[rows], entry.dec[rows])
        ok = sep <= radius_deg
        partial.add(pos[ok], entry.ids[rows[ok]], sep[ok])

    @staticmethod
    def _match_window(cold: list[tuple[CachedChunk, np.ndarray]], ra: np.ndarray,
                      dec: np.ndarray, radius_deg: float, mode: Mode,
                      partial: _Partial) -> None:
        """Declination-window search over many cold chunks at once (rows sorted by dec)."""
        half = radius_deg + _WINDOW_PAD_DEG
        los: list[np.ndarray] = []
        his: list[np.ndarray] = []
        for entry, group in cold:
            d = dec[group]
            los.append(entry.dec.searchsorted(d - half, side="left"))
            his.append(entry.dec.searchsorted(d + half, side="right"))
        counts_pos = np.fromiter((len(g) for _, g in cold), dtype=np.int64, count=len(cold))
        pos = np.concatenate([g for _, g in cold])
        pos_rank = np.repeat(np.arange(len(cold), dtype=np.int64), counts_pos)
        lo = np.concatenate(los)
        n = np.maximum(np.concatenate(his) - lo, 0)
        total = int(n.sum())
        if total == 0:
            return
        # Candidates (position, chunk rank, row in chunk), ordered by chunk rank.
        cand_pos = np.repeat(pos, n)
        cand_rank = np.repeat(pos_rank, n)
        offsets = np.repeat(np.cumsum(n) - n, n)
        cand_row = np.repeat(lo, n) + (np.arange(total, dtype=np.int64) - offsets)
        cand_ra = np.empty(total)
        cand_dec = np.empty(total)
        for rank, sel in _runs(cand_rank):
            entry = cold[rank][0]
            rows = cand_row[sel]
            cand_ra[sel] = entry.ra[rows]
            cand_dec[sel] = entry.dec[rows]
        sep = angular_separation_deg(ra[cand_pos], dec[cand_pos], cand_ra, cand_dec)
        ok = sep <= radius_deg
        cand_pos, cand_rank, cand_row, sep = cand_pos[ok], cand_rank[ok], cand_row[ok], sep[ok]
        if mode == "nearest" and len(cand_pos):
            best = np.sort(_nearest_of(cand_pos, sep))  # keep the chunk-rank order
            cand_pos, cand_rank, cand_row, sep = (cand_pos[best], cand_rank[best],
                                                  cand_row[best], sep[best])
        if not len(cand_pos):
            return
        runs = _runs(cand_rank)
        # Each chunk read from a store holds string ids as fixed-width strings as wide as its
        # own longest: the output takes the widest, or a longer id would be cut short.
        id_dtype = np.result_type(*(cold[rank][0].ids.dtype for rank, _ in runs))
        ids_out = np.empty(len(cand_pos), dtype=id_dtype)
        for rank, sel in runs:
            ids_out[sel] = cold[rank][0].ids[cand_row[sel]]
        partial.add(cand_pos, ids_out, sep)


def _runs(sorted_keys: np.ndarray) -> list[tuple[int, slice]]:
    """``(key, slice)`` of each run of equal values in a non-decreasing int array."""
    if not len(sorted_keys):
        return []
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], change)).tolist()
    ends = [*starts[1:], len(sorted_keys)]
    keys = sorted_keys[starts].tolist()
    return [(k, slice(a, b)) for k, a, b in zip(keys, starts, ends, strict=True)]
