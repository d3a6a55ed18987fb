"""The cross-match engine over catalogs stored on both backends, against astropy."""

from __future__ import annotations

from collections.abc import Iterator

import astropy.units as u
import numpy as np
import pyarrow as pa
import pytest
from astropy.coordinates import SkyCoord, search_around_sky

from broker.domain.crossmatch import ChunkCache, CrossMatcher
from broker.domain.sky import Chunker
from broker.storage.chunks import RefCatChunkSource
from broker.storage.refcat import ChunkedRefCatalogs
from broker.storage.shards import ShardSet

CHUNKER = Chunker(85, 12)
OVERLAP = 1.0 / 60.0


@pytest.fixture
def refcats(shard_set: ShardSet) -> Iterator[ChunkedRefCatalogs]:
    store = ChunkedRefCatalogs(shard_set, CHUNKER, OVERLAP)
    try:
        yield store
    finally:
        store.close()


def _sky(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rows plus crowds at stripe edges, RA = 0 and both poles."""
    n = 40_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    stripe = 180.0 / CHUNKER.num_stripes
    edges = -90.0 + stripe * rng.integers(1, CHUNKER.num_stripes, 3000)
    ra = np.concatenate([ra, rng.uniform(0, 360, 3000), rng.uniform(-0.01, 0.01, 2000) % 360,
                         rng.uniform(0, 360, 1000), rng.uniform(0, 360, 1000)])
    dec = np.concatenate([dec, edges + rng.uniform(-0.003, 0.003, 3000),
                          rng.uniform(-30, 30, 2000), rng.uniform(89.98, 90.0, 1000),
                          rng.uniform(-90.0, -89.98, 1000)])
    return ra, dec


def test_matches_equal_astropy_on_stored_catalogs(refcats) -> None:
    rng = np.random.default_rng(2026)
    ra, dec = _sky(rng)
    ids = np.arange(1, len(ra) + 1, dtype=np.int64)
    refcats.load("stars", [pa.record_batch({"sid": ids, "ra": ra, "dec": dec})],
                 "sid", "ra", "dec")
    # Positions: half on catalog rows (offset under the radius), half random.
    pick = rng.choice(len(ra), 3000, replace=False)
    offset = SkyCoord(ra[pick], dec[pick], unit="deg").directional_offset_by(
        rng.uniform(0, 360, len(pick)) * u.deg, rng.uniform(0, 2.5, len(pick)) * u.arcsec)
    q_ra = np.concatenate([offset.ra.deg, rng.uniform(0, 360, 3000)])
    q_dec = np.concatenate([offset.dec.deg, np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))])

    source = RefCatChunkSource(refcats)
    matcher = CrossMatcher(source, CHUNKER, ChunkCache(), OVERLAP)
    catalog = SkyCoord(ra, dec, unit="deg")
    queries = SkyCoord(q_ra, q_dec, unit="deg")

    nearest = matcher.match(q_ra, q_dec, ["stars"], 3.0, mode="nearest")["stars"]
    index, sep, _ = queries.match_to_catalog_sky(catalog)
    inside = sep.arcsec <= 3.0
    assert set(zip(nearest.index.tolist(), nearest.ids.tolist(), strict=True)) == set(
        zip(np.nonzero(inside)[0].tolist(), ids[index[inside]].tolist(), strict=True))
    assert len(nearest) >= 3000

    every = matcher.match(q_ra, q_dec, ["stars"], 30.0, mode="all")["stars"]
    qi, ci, _, _ = search_around_sky(queries, catalog, 30 * u.arcsec)
    assert set(zip(every.index.tolist(), every.ids.tolist(), strict=True)) == set(
        zip(qi.tolist(), ids[ci].tolist(), strict=True))
