"""Chunk ids against lsst-sphgeom's Chunker, HEALPix order-29 indices, angular distances."""

from __future__ import annotations

import cdshealpix
import lsst.sphgeom as sg
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Latitude, Longitude, SkyCoord

from broker.domain.sky import Chunker, angular_separation_deg, cone_cover, hpx29


def _reference_chunk(reference: sg.Chunker, ra: float, dec: float) -> list[int]:
    point = sg.UnitVector3d(sg.LonLat.fromDegrees(ra, dec))
    return list(reference.getChunksIntersecting(sg.Circle(point, sg.Angle(1e-13))))


@pytest.mark.parametrize(("stripes", "sub_stripes"), [(340, 3), (85, 12), (18, 10)])
def test_chunk_ids_match_sphgeom(stripes: int, sub_stripes: int) -> None:
    chunker = Chunker(stripes, sub_stripes)
    reference = sg.Chunker(stripes, sub_stripes)
    assert set(chunker.all_chunks.tolist()) == set(reference.getAllChunks())
    rng = np.random.default_rng(stripes)
    ra = rng.uniform(0, 360, 2000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    # Points near poles, on RA = 0 and close to 360.
    ra = np.concatenate([ra, [0.0, 359.9999999, 180.0, 0.0, 45.0, 359.999]])
    dec = np.concatenate([dec, [0.0, 0.0, 89.9999, -89.9999, 90.0, -90.0]])
    located = chunker.locate(ra, dec)
    for r, d, chunk in zip(ra, dec, located, strict=True):
        candidates = _reference_chunk(reference, r, d)
        assert chunk in candidates, (r, d, chunk, candidates)


def test_known_chunk_ids_at_rubin_parameters() -> None:
    chunker = Chunker(340, 3)
    assert chunker.locate_one(0.0, 0.0) == 115600
    assert chunker.locate_one(10.5, -20.1) == 89778
    assert chunker.locate_one(359.99, 89.9) == 230520
    assert chunker.locate_one(360.0, 0.0) == chunker.locate_one(0.0, 0.0)


def test_bad_chunking_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Chunker(0, 3)


def test_hpx29_coarsens_to_lower_orders() -> None:
    rng = np.random.default_rng(5)
    ra = rng.uniform(0, 360, 500)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 500)))
    index = hpx29(ra, dec)
    assert index.dtype == np.int64
    assert (index >= 0).all()
    assert (index < 12 * 4**29).all()
    order10 = cdshealpix.lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg), 10)
    np.testing.assert_array_equal(index >> (2 * 19), order10)


def test_angular_separation_matches_astropy() -> None:
    rng = np.random.default_rng(9)
    ra1, ra2 = rng.uniform(0, 360, (2, 1000))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 1000))))
    # Tiny separations, where the haversine and cosine forms lose precision.
    ra2[:100] = ra1[:100] + 1e-7
    dec2[:100] = dec1[:100]
    ours = angular_separation_deg(ra1, dec1, ra2, dec2)
    theirs = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("radius", [0.0, 1e-12, 1e-9, 1e-7, 0.1 / 3600, 1.0, 5.0])
def test_cone_cover_contains_every_point_of_the_cone(radius: float) -> None:
    chunker = Chunker(85, 12)
    rng = np.random.default_rng(int(radius * 1e6) + 1)
    for ra, dec in [(0.0, 0.0), (359.9999, 10.0), (45.0, 89.99), (200.0, -89.95), (12.3, -4.5)]:
        cover = cone_cover(chunker, ra, dec, radius)
        # Random points inside the cone, built by offsetting the centre.
        n = 200
        angle = rng.uniform(0, 2 * np.pi, n)
        dist = radius * np.sqrt(rng.uniform(0, 1, n))
        centre = SkyCoord(ra, dec, unit="deg")
        points = centre.directional_offset_by(angle * u.rad, dist * u.deg)
        inside = angular_separation_deg(ra, dec, points.ra.deg, points.dec.deg) <= radius
        pra, pdec = points.ra.deg[inside], points.dec.deg[inside]
        chunks = set(chunker.locate(pra, pdec).tolist())
        assert chunks <= set(cover.chunks)
        index = hpx29(pra, pdec)
        covered = np.zeros(len(index), dtype=bool)
        for lo, hi in cover.ranges:
            covered |= (index >= lo) & (index < hi)
        assert covered.all()


def test_cone_cover_ranges_are_those_of_the_public_cdshealpix_cone_search() -> None:
    # cone_cover calls cdshealpix's compiled search directly (skipping astropy's argument
    # checks): it must give exactly what the public function gives, so a change of the
    # binding in a cdshealpix release is caught here.
    from broker.domain.sky import HPX_ORDER, _cover_depth

    chunker = Chunker(85, 12)
    rng = np.random.default_rng(23)
    cones = [(0.0, 0.0, 1e-9), (359.99999, 0.0, 3 / 3600), (10.0, 90.0, 1 / 3600),
             (10.0, -90.0, 0.5), (370.0, 45.0, 1.0)]
    cones += [(float(r), float(d), float(s)) for r, d, s in zip(
        rng.uniform(0, 360, 300), np.degrees(np.arcsin(rng.uniform(-1, 1, 300))),
        10 ** rng.uniform(-4.5, 0.5, 300), strict=True)]
    for ra, dec, radius in cones:
        ipix, depths, _ = cdshealpix.cone_search(
            Longitude(ra % 360.0, u.deg), Latitude(dec, u.deg), radius * u.deg,
            depth=_cover_depth(radius), flat=False)
        shift = 2 * (HPX_ORDER - np.asarray(depths, dtype=np.int64))
        cells = sorted(zip((np.asarray(ipix, dtype=np.int64) << shift).tolist(),
                           ((np.asarray(ipix, dtype=np.int64) + 1) << shift).tolist(),
                           strict=True))
        merged: list[list[int]] = []
        for lo, hi in cells:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        assert [list(r) for r in cone_cover(chunker, ra, dec, radius).ranges] == merged


def test_overlap_halos_hold_every_row_within_the_radius_of_a_chunk() -> None:
    from broker.domain.sky import overlap_chunks

    chunker = Chunker(85, 12)
    overlap = 1.0 / 60.0
    rng = np.random.default_rng(17)
    # Points crowded around chunk boundaries (stripe edges, RA 0, poles) and at random.
    stripe = 180.0 / 85
    edges = -90.0 + stripe * rng.integers(1, 85, 3000)
    ra = np.concatenate([rng.uniform(0, 360, 3000), rng.uniform(0, 360, 3000),
                         rng.uniform(-0.02, 0.02, 1000) % 360, rng.uniform(0, 360, 500)])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 3000))),
                          edges + rng.uniform(-0.02, 0.02, 3000),
                          rng.uniform(-60, 60, 1000), rng.uniform(89.9, 90.0, 500)])
    rows, chunks = overlap_chunks(chunker, ra, dec, overlap)
    halo = set(zip(rows.tolist(), chunks.tolist(), strict=True))
    home = chunker.locate(ra, dec)
    # Brute force: a point within the overlap radius of a chunk is near some point of that
    # chunk; sample points on circles of radius <= overlap around each row and locate them.
    centre = SkyCoord(ra, dec, unit="deg")
    for angle in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        for fraction in (0.5, 0.999):
            moved = centre.directional_offset_by(angle * u.rad, fraction * overlap * u.deg)
            near = chunker.locate(moved.ra.deg, moved.dec.deg)
            for i in np.nonzero(near != home)[0]:
                assert (int(i), int(near[i])) in halo, (ra[i], dec[i], near[i])


def test_sky_cells_hold_every_given_cell_at_one_order() -> None:
    """Deeper cells become their parents, coarser ones all their children, at the deepest
    order that needs at most MAX_COVER_CELLS cells."""
    from broker.domain import sky

    rng = np.random.default_rng(5)
    deep = rng.integers(0, 12 * 4**12, 1000)
    coarse = np.array([3, 700])
    cover = sky.sky_cells([(12, deep), (5, coarse)])
    assert cover.order == sky.MAX_COVER_ORDER
    want = set((deep >> 2 * (12 - 9)).tolist())
    for c in coarse.tolist():
        want |= set(range(c << 8, (c + 1) << 8))
    assert cover.cells.tolist() == sorted(want)
    assert cover.share == pytest.approx(len(want) / (12 * 4**9))
    # Too many cells at order 9: a coarser order, still holding every one.
    many = rng.integers(0, 12 * 4**9, 400_000)
    wide = sky.sky_cells([(9, many)])
    assert wide.order < 9
    assert wide.cells.size <= sky.MAX_COVER_CELLS
    assert set((many >> 2 * (9 - wide.order)).tolist()) == set(wide.cells.tolist())
    # A cone index's cover holds every position that matches.
    from broker.domain.watchlists import ConeIndex

    ra = rng.uniform(0, 360, 2000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    radius = np.exp(rng.uniform(0, np.log(1800), 2000))
    index = ConeIndex(ra, dec, radius)
    index_cover = index.cover()
    pra = rng.uniform(0, 360, 200_000)
    pdec = np.degrees(np.arcsin(rng.uniform(-1, 1, 200_000)))
    points, _, _ = index.match(pra, pdec)
    cells = sky.hpx29(pra[points], pdec[points]) >> 2 * (29 - index_cover.order)
    assert points.size > 100
    assert np.isin(cells, index_cover.cells).all()
    assert index_cover.share < 0.5
