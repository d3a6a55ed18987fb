"""Cross-match engine against brute-force astropy: random skies, chunk edges, poles, RA wrap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from broker.domain.crossmatch import (
    ChunkCache,
    ChunkRows,
    CrossMatcher,
    InMemoryChunkSource,
    Matches,
    halo_chunks,
)
from broker.domain.sky import Chunker, angular_separation_deg

OVERLAP_DEG = 1.0 / 60.0
CHUNKERS = {"85/12": Chunker(85, 12), "340/3": Chunker(340, 3)}
# tree_after: 0 = always KD-trees, huge = always the declination-window search, 64 = mixed.
PATHS = [0, 64, 10**9]


def _sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))


def _offset(rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray,
            max_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Points at a random distance below ``max_arcsec`` in a random direction (exact on sphere)."""
    n = len(ra)
    rho = np.radians(rng.uniform(0.0, max_arcsec, n) / 3600.0)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    d0, a0 = np.radians(dec), np.radians(ra)
    d1 = np.arcsin(np.sin(d0) * np.cos(rho) + np.cos(d0) * np.sin(rho) * np.cos(theta))
    a1 = a0 + np.arctan2(np.sin(theta) * np.sin(rho) * np.cos(d0),
                         np.cos(rho) - np.sin(d0) * np.sin(d1))
    return np.mod(np.degrees(a1), 360.0), np.degrees(d1)


def _edge_points(chunker: Chunker, rng: np.random.Generator,
                 n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points within ±0.5″ of stripe and sub-stripe dec edges and of chunk RA edges, plus
    RA 0/360 and pole points."""
    stripe_h = 180.0 / chunker.num_stripes
    edges_dec = -90.0 + stripe_h * rng.integers(1, chunker.num_stripes, n)
    ra_a = rng.uniform(0.0, 360.0, n)
    dec_a = edges_dec + rng.uniform(-0.5, 0.5, n) / 3600.0
    # Chunk RA edges: bisect along RA between two random RAs in different chunks.
    dec_b = np.degrees(np.arcsin(rng.uniform(-0.98, 0.98, n)))
    lo, hi = rng.uniform(0.0, 360.0, n), rng.uniform(0.0, 360.0, n)
    same = chunker.locate(lo, dec_b) == chunker.locate(hi, dec_b)
    lo, hi, dec_b = lo[~same], hi[~same], dec_b[~same]
    c_lo = chunker.locate(lo, dec_b)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        left = chunker.locate(mid, dec_b) == c_lo
        lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
    ra_b = np.mod(hi + rng.uniform(-0.5, 0.5, len(hi)) / 3600.0 / np.cos(np.radians(dec_b)),
                  360.0)
    # RA wrap and poles.
    k = n // 4
    ra_c = np.mod(rng.uniform(-0.5, 0.5, k) / 3600.0, 360.0)
    dec_c = rng.uniform(-80.0, 80.0, k)
    ra_d = rng.uniform(0.0, 360.0, k)
    dec_d = np.sign(rng.uniform(-1, 1, k)) * rng.uniform(89.99, 90.0, k)
    return (np.concatenate([ra_a, ra_b, ra_c, ra_d]),
            np.concatenate([dec_a, dec_b, dec_c, dec_d]))


def _astropy_nearest(cat: SkyCoord, ra: np.ndarray, dec: np.ndarray,
                     radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx, sep, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(cat)
    ok = sep.arcsec <= radius
    return np.flatnonzero(ok), idx[ok], sep.arcsec[ok]


def _astropy_all(cat: SkyCoord, ra: np.ndarray, dec: np.ndarray,
                 radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, rows, sep, _ = cat.search_around_sky(SkyCoord(ra * u.deg, dec * u.deg),
                                               radius * u.arcsec)
    order = np.lexsort((sep.arcsec, pos))
    return pos[order], rows[order], sep.arcsec[order]


def _assert_same(got: Matches, ref: tuple[np.ndarray, np.ndarray, np.ndarray],
                 ids: np.ndarray) -> None:
    pos, rows, sep = ref
    np.testing.assert_array_equal(got.index, pos)
    np.testing.assert_array_equal(got.ids, ids[rows])
    np.testing.assert_allclose(got.distance_arcsec, sep, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def sky() -> dict[str, object]:
    rng = np.random.default_rng(20260101)
    n = 200_000
    ra, dec = _sphere(rng, n)
    # Catalog rows on chunk edges, RA 0/360 and poles too (for both chunkers).
    extra = [_edge_points(c, rng, 3000) for c in CHUNKERS.values()]
    ra = np.concatenate([ra, *(e[0] for e in extra)])
    dec = np.concatenate([dec, *(e[1] for e in extra)])
    ids = rng.permutation(len(ra)).astype(np.int64) * 3 + 1_000_000
    on_rows = rng.choice(len(ra), 6000, replace=False)
    near_ra, near_dec = _offset(rng, ra[on_rows], dec[on_rows], 0.45)
    rand_ra, rand_dec = _sphere(rng, 4000)
    edge = [_edge_points(c, rng, 1500) for c in CHUNKERS.values()]
    p_ra = np.concatenate([ra[on_rows[:1000]], near_ra, rand_ra, *(e[0] for e in edge)])
    p_dec = np.concatenate([dec[on_rows[:1000]], near_dec, rand_dec, *(e[1] for e in edge)])
    # Positions near catalog rows at up to 30″ (so the 30″ radius sees several rows).
    wide_ra, wide_dec = _offset(rng, ra[on_rows[:2000]], dec[on_rows[:2000]], 29.0)
    p_ra = np.concatenate([p_ra, wide_ra])
    p_dec = np.concatenate([p_dec, wide_dec])
    return {
        "ids": ids, "ra": ra, "dec": dec, "cat": SkyCoord(ra * u.deg, dec * u.deg),
        "p_ra": p_ra, "p_dec": p_dec,
        "sources": {
            name: InMemoryChunkSource.from_arrays({"cat": (ids, ra, dec)}, c, OVERLAP_DEG)
            for name, c in CHUNKERS.items()
        },
    }


@pytest.mark.parametrize("chunker_name", list(CHUNKERS))
@pytest.mark.parametrize("radius", [0.5, 1.0, 30.0])
@pytest.mark.parametrize("tree_after", PATHS)
def test_nearest_and_all_match_astropy(sky: dict, chunker_name: str, radius: float,
                                       tree_after: int) -> None:
    chunker = CHUNKERS[chunker_name]
    source = sky["sources"][chunker_name]
    for mode, reference in (("nearest", _astropy_nearest), ("all", _astropy_all)):
        matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG,
                               tree_after=tree_after)
        got = matcher.match(sky["p_ra"], sky["p_dec"], ["cat"], radius, mode=mode)["cat"]
        ref = reference(sky["cat"], sky["p_ra"], sky["p_dec"], radius)
        assert len(ref[0]) > 1000
        _assert_same(got, ref, sky["ids"])


def test_edge_pole_and_wrap_positions_match(sky: dict) -> None:
    """Only the hard positions, each chunker, so a failure points at edges/poles."""
    for chunker in CHUNKERS.values():
        rng = np.random.default_rng(7)
        ra, dec = _edge_points(chunker, rng, 4000)
        # Put a catalog row 0.8″ away on the other side of the edge, in a small catalog.
        c_ra, c_dec = _offset(rng, ra, dec, 0.9)
        c_ids = np.array([f"row-{i}" for i in range(len(ra))], dtype=object)
        source = InMemoryChunkSource.from_arrays({"edge": (c_ids, c_ra, c_dec)}, chunker,
                                                 OVERLAP_DEG)
        crossing = chunker.locate(ra, dec) != chunker.locate(c_ra, c_dec)
        assert crossing.sum() > 500, "the edge generator must put pairs across chunk edges"
        cat = SkyCoord(c_ra * u.deg, c_dec * u.deg)
        for tree_after in (0, 10**9):
            matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG,
                                   tree_after=tree_after)
            got = matcher.match(ra, dec, ["edge"], 1.0)["edge"]
            _assert_same(got, _astropy_nearest(cat, ra, dec, 1.0), c_ids)
            got = matcher.match(ra, dec, ["edge"], 1.0, mode="all")["edge"]
            _assert_same(got, _astropy_all(cat, ra, dec, 1.0), c_ids)


def test_poles_exactly() -> None:
    chunker = Chunker(340, 3)
    ra = np.array([0.0, 123.0, 359.9999, 0.0, 200.0, 45.0])
    dec = np.array([90.0, 89.99995, 89.99999, -90.0, -89.99996, -89.9999])
    ids = np.arange(len(ra), dtype=np.int64)
    source = InMemoryChunkSource.from_arrays({"p": (ids, ra, dec)}, chunker, OVERLAP_DEG)
    matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG, tree_after=0)
    q_ra = np.array([180.0, 10.0, 270.0, 90.0])
    q_dec = np.array([89.99999, 90.0, -89.99999, -90.0])
    got = matcher.match(q_ra, q_dec, ["p"], 60.0, mode="all")["p"]
    ref = _astropy_all(SkyCoord(ra * u.deg, dec * u.deg), q_ra, q_dec, 60.0)
    _assert_same(got, ref, ids)
    assert len(got) == 12  # three rows around each pole, for two queries per pole


def test_halo_is_a_superset_of_the_exact_overlap() -> None:
    chunker = Chunker(340, 3)
    rng = np.random.default_rng(3)
    ra, dec = _edge_points(chunker, rng, 2000)
    rows, chunks = halo_chunks(chunker, ra, dec, OVERLAP_DEG)
    assert len(set(zip(rows.tolist(), chunks.tolist(), strict=True))) == len(rows)
    have = set(zip(rows.tolist(), chunks.tolist(), strict=True))
    # Every chunk of a point on a small circle of radius R around a row must receive the row.
    for angle in np.linspace(0.0, 2 * np.pi, 16, endpoint=False):
        d0, a0, rho = np.radians(dec), np.radians(ra), np.radians(OVERLAP_DEG * 0.999)
        d1 = np.arcsin(np.sin(d0) * np.cos(rho) + np.cos(d0) * np.sin(rho) * np.cos(angle))
        a1 = a0 + np.arctan2(np.sin(angle) * np.sin(rho) * np.cos(d0),
                             np.cos(rho) - np.sin(d0) * np.sin(d1))
        target = chunker.locate(np.degrees(a1), np.degrees(d1))
        missing = [(i, c) for i, c in enumerate(target.tolist()) if (i, c) not in have]
        assert not missing


class CountingSource:
    def __init__(self, inner: InMemoryChunkSource) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        self.calls.append((catalog, tuple(chunk_ids)))
        return self.inner.load(catalog, chunk_ids)


def test_cache_loads_once_per_batch_and_evicts(sky: dict) -> None:
    chunker = CHUNKERS["85/12"]
    source = CountingSource(sky["sources"]["85/12"])
    cache = ChunkCache(max_rows=10**9)
    matcher = CrossMatcher(source, chunker, cache, OVERLAP_DEG)
    ra, dec = sky["p_ra"][:500], sky["p_dec"][:500]
    first = matcher.match(ra, dec, ["cat"], 1.0)["cat"]
    assert len(source.calls) == 1
    assert cache.loads == 1
    k = len(set(chunker.locate(ra, dec).tolist()))
    assert cache.misses == k
    assert len(source.calls[0][1]) == k
    second = matcher.match(ra, dec, ["cat"], 1.0)["cat"]
    assert len(source.calls) == 1, "an identical batch must load nothing"
    assert cache.hits == k
    np.testing.assert_array_equal(first.ids, second.ids)
    # A batch touching some new chunks: one load call, for exactly the new chunks.
    ra2, dec2 = sky["p_ra"][500:900], sky["p_dec"][500:900]
    chunks2 = set(chunker.locate(ra2, dec2).tolist())
    new = chunks2 - set(chunker.locate(ra, dec).tolist())
    assert new
    matcher.match(ra2, dec2, ["cat"], 1.0)
    assert len(source.calls) == 2
    assert set(source.calls[1][1]) == new

    # A small cache: bounded, evicts, and still gives the right answers.
    small = ChunkCache(max_rows=5000)
    source2 = CountingSource(sky["sources"]["85/12"])
    matcher2 = CrossMatcher(source2, chunker, small, OVERLAP_DEG, tree_after=0)
    got = matcher2.match(sky["p_ra"], sky["p_dec"], ["cat"], 1.0)["cat"]
    assert small.evictions > 0
    assert small.rows <= 5000
    assert len(source2.calls) == 1
    _assert_same(got, _astropy_nearest(sky["cat"], sky["p_ra"], sky["p_dec"], 1.0),
                 sky["ids"])
    matcher2.match(sky["p_ra"][:50], sky["p_dec"][:50], ["cat"], 1.0)
    assert len(source2.calls) == 2, "evicted chunks are loaded again"


def test_many_catalogs_and_radius_per_catalog(sky: dict) -> None:
    chunker = CHUNKERS["340/3"]
    rng = np.random.default_rng(11)
    ra2, dec2 = _sphere(rng, 50_000)
    ra2 = np.concatenate([ra2, sky["p_ra"][:3000]])
    dec2 = np.concatenate([dec2, sky["p_dec"][:3000]])
    ids2 = np.array([f"g{i}" for i in range(len(ra2))], dtype=object)
    source = CountingSource(InMemoryChunkSource.from_arrays(
        {"a": (sky["ids"], sky["ra"], sky["dec"]), "b": (ids2, ra2, dec2)}, chunker,
        OVERLAP_DEG))
    matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG)
    got = matcher.match(sky["p_ra"], sky["p_dec"], ["a", "b"], {"a": 1.0, "b": 0.5})
    assert [c[0] for c in source.calls] == ["a", "b"]
    _assert_same(got["a"], _astropy_nearest(sky["cat"], sky["p_ra"], sky["p_dec"], 1.0),
                 sky["ids"])
    cat_b = SkyCoord(ra2 * u.deg, dec2 * u.deg)
    _assert_same(got["b"], _astropy_nearest(cat_b, sky["p_ra"], sky["p_dec"], 0.5), ids2)
    assert got["b"].ids.dtype == object


def test_distances_are_exact_separations(sky: dict) -> None:
    chunker = CHUNKERS["85/12"]
    matcher = CrossMatcher(sky["sources"]["85/12"], chunker, ChunkCache(), OVERLAP_DEG)
    got = matcher.match(sky["p_ra"], sky["p_dec"], ["cat"], 30.0, mode="all")["cat"]
    row_of = {int(i): k for k, i in enumerate(sky["ids"].tolist())}
    rows = np.array([row_of[int(i)] for i in got.ids])
    sep = angular_separation_deg(sky["p_ra"][got.index], sky["p_dec"][got.index],
                                 sky["ra"][rows], sky["dec"][rows]) * 3600.0
    np.testing.assert_allclose(got.distance_arcsec, sep, rtol=0, atol=1e-9)
    assert np.all(got.distance_arcsec <= 30.0)


def test_radius_beyond_overlap_and_bad_input_raise(sky: dict) -> None:
    chunker = CHUNKERS["85/12"]
    matcher = CrossMatcher(sky["sources"]["85/12"], chunker, ChunkCache(), OVERLAP_DEG)
    with pytest.raises(ValueError, match="overlap"):
        matcher.match(np.array([1.0]), np.array([2.0]), ["cat"], 61.0)
    with pytest.raises(ValueError, match="overlap"):
        matcher.match(np.array([1.0]), np.array([2.0]), ["cat"], {"cat": 120.0})
    with pytest.raises(ValueError, match="positive"):
        matcher.match(np.array([1.0]), np.array([2.0]), ["cat"], 0.0)
    with pytest.raises(ValueError, match="mode"):
        matcher.match(np.array([1.0]), np.array([2.0]), ["cat"], 1.0, mode="any")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dec"):
        matcher.match(np.array([1.0]), np.array([91.0]), ["cat"], 1.0)


def test_empty_batch_and_empty_chunks() -> None:
    chunker = Chunker(85, 12)
    ids = np.array([5], dtype=np.int64)
    source = InMemoryChunkSource.from_arrays(
        {"one": (ids, np.array([10.0]), np.array([10.0]))}, chunker, OVERLAP_DEG)
    matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG)
    empty = matcher.match(np.zeros(0), np.zeros(0), ["one"], 1.0)["one"]
    assert len(empty) == 0
    got = matcher.match(np.array([200.0, 10.0 + 0.5 / 3600]), np.array([-40.0, 10.0]),
                        ["one"], 1.0)["one"]
    np.testing.assert_array_equal(got.index, [1])
    np.testing.assert_array_equal(got.ids, [5])


class StringIdSource:
    """Chunks with string ids, each chunk's array as wide as its own longest id (as the stores
    build them), unlike `InMemoryChunkSource`'s slices of one array."""

    def __init__(self, inner: InMemoryChunkSource) -> None:
        self.inner = inner

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        return {chunk: ChunkRows(ids=np.array([str(i) for i in rows.ids.tolist()]),
                                 ra=rows.ra, dec=rows.dec)
                for chunk, rows in self.inner.load(catalog, chunk_ids).items()}


@pytest.mark.parametrize("tree_after", PATHS)
def test_string_ids_of_different_widths_are_kept_whole(tree_after: int) -> None:
    """A batch over chunks whose ids differ in width returns each id whole (a short id's chunk
    first once cut the longer ids of the others to its width)."""
    chunker = Chunker(85, 12)
    ra, dec = np.array([10.0, 100.0, 200.0]), np.array([10.0, -30.0, 45.0])
    order = np.argsort(chunker.locate(ra, dec))  # the shortest id in the first chunk
    ra, dec = ra[order], dec[order]
    ids = np.array(["NGC1", "IC0803 NED01", "NGC3794"])
    source = StringIdSource(InMemoryChunkSource.from_arrays({"cat": (ids, ra, dec)}, chunker,
                                                            OVERLAP_DEG))
    matcher = CrossMatcher(source, chunker, ChunkCache(), OVERLAP_DEG, tree_after=tree_after)
    got = matcher.match(ra, dec + 0.5 / 3600, ["cat"], 1.0, mode="all")["cat"]
    assert dict(zip(got.index.tolist(), got.ids.tolist(), strict=True)) == {
        0: "NGC1", 1: "IC0803 NED01", 2: "NGC3794"}
