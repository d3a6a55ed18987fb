"""Watchmaps: MOCs in three serialisations, credible regions of real and constructed skymaps."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from astropy.io import fits

from broker.domain.watchmaps import (
    SKY_SQ_DEG,
    WatchmapError,
    area_sq_deg,
    contains,
    from_text,
    moc_from_skymap,
    parse_moc,
    to_text,
)
from tests.support.data import REPO_ROOT

SKYMAP = REPO_ROOT / "tests" / "data" / "skymaps" / "bayestar.multiorder.fits"
CATALOG_MOC = REPO_ROOT / "tests" / "data" / "skymaps" / "CDS-I-125A-catalog_MOC.fits"


def _flat(probability: np.ndarray, ordering: str) -> bytes:
    nside = int(math.sqrt(probability.size / 12))
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="PROB", format="D",
                                                     array=probability)])
    hdu.header["NSIDE"] = nside
    hdu.header["ORDERING"] = ordering
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def test_the_three_serialisations() -> None:
    ascii_moc = parse_moc(b"3/1-4 5/100", "ascii")
    assert area_sq_deg(ascii_moc) == pytest.approx(SKY_SQ_DEG * (4 / 768 + 1 / 12288))
    json_moc = parse_moc(b'{"3": [1, 2, 3, 4], "5": [100]}', "json")
    assert to_text(json_moc) == to_text(ascii_moc)
    real = parse_moc(CATALOG_MOC.read_bytes(), "fits")
    assert area_sq_deg(real) == pytest.approx(669.7, abs=0.1)
    assert to_text(from_text(to_text(real))) == to_text(real)


@pytest.mark.parametrize(("body", "fmt", "message"), [
    (b"not a moc", "fits", "the body is not a FITS MOC"),
    (b"3/x", "ascii", "the body is not a ASCII MOC"),
    (b"[1, 2]", "json", 'a JSON MOC is {"ORDER"'),
    (b"{not json", "json", "the body is not a JSON MOC"),
    (b"3/1", "votable", "MOC format 'votable'"),
    (b"", "ascii", "covers no part of the sky"),
])
def test_bad_mocs(body: bytes, fmt: str, message: str) -> None:
    with pytest.raises(WatchmapError, match=message):
        parse_moc(body, fmt)


def test_credible_regions_of_the_real_multiorder_skymap() -> None:
    body = SKYMAP.read_bytes()
    areas = [area_sq_deg(moc_from_skymap(body, level)) for level in (0.5, 0.9, 0.99)]
    assert areas == sorted(areas)
    assert 1.0 < areas[0] < areas[1] < 1000.0
    # The 90 % region holds (about) 90 % of the probability: sum it over the skymap's cells.
    table = fits.getdata(io.BytesIO(body), 1)
    uniq = table["UNIQ"].astype(np.int64)
    order = (np.log2(uniq / 4) // 2).astype(np.int64)
    ipix = uniq - 4 * 4 ** order
    probability = table["PROBDENSITY"] * 4 * math.pi / (12 * 4.0 ** order)
    theta_phi = [_centre(int(o), int(i)) for o, i in zip(order, ipix, strict=True)]
    ra = np.array([p[0] for p in theta_phi])
    dec = np.array([p[1] for p in theta_phi])
    share = probability / probability.sum()
    for level in (0.5, 0.9):
        held = share[contains(moc_from_skymap(body, level), ra, dec)].sum()
        assert level <= held < level + 0.01  # at least the level, and not much more
    # The whole probability: every cell that has any, not the whole sky.
    everything = moc_from_skymap(body, 1.0)
    assert share[~contains(everything, ra, dec)].sum() < 1e-9
    assert areas[-1] <= area_sq_deg(everything) < SKY_SQ_DEG


def _centre(order: int, ipix: int) -> tuple[float, float]:
    from astropy import units as u
    from cdshealpix.nested import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.array([ipix], dtype=np.uint64), order)
    return float(lon.to_value(u.deg)[0]), float(lat.to_value(u.deg)[0])


@pytest.mark.parametrize("ordering", ["NESTED", "RING"])
def test_a_flat_skymap_in_either_ordering(ordering: str) -> None:
    from broker.domain.watchmaps import ring_to_nested

    nside_order = 4
    n = 12 * 4 ** nside_order
    probability = np.zeros(n)
    hot_nested = np.array([100, 101, 102, 103])  # four cells holding everything
    if ordering == "RING":
        ring = np.arange(n, dtype=np.uint64)
        nested_of_ring = np.asarray(ring_to_nested(ring, nside_order))
        probability[np.isin(nested_of_ring, hot_nested)] = 0.25
    else:
        probability[hot_nested] = 0.25
    moc = moc_from_skymap(_flat(probability, ordering), 0.9)
    assert area_sq_deg(moc) == pytest.approx(SKY_SQ_DEG * 4 / n, rel=1e-6)
    ra, dec = _centre(nside_order, 101)
    far_ra, far_dec = _centre(nside_order, 2000)
    assert contains(moc, np.array([ra, far_ra]), np.array([dec, far_dec])).tolist() == [
        True, False]


@pytest.mark.parametrize(("level", "message"), [
    (0.0, "not in \\(0, 1\\]"), (1.5, "not in \\(0, 1\\]"), (float("nan"), "not in")])
def test_credible_levels_outside_0_1_are_refused(level: float, message: str) -> None:
    with pytest.raises(WatchmapError, match=message):
        moc_from_skymap(SKYMAP.read_bytes(), level)


def test_skymaps_that_do_not_parse() -> None:
    with pytest.raises(WatchmapError, match="not a FITS file"):
        moc_from_skymap(b"garbage", 0.9)
    with pytest.raises(WatchmapError, match="12 NSIDE\\^2"):
        moc_from_skymap(_flat(np.ones(100), "NESTED"), 0.9)
    with pytest.raises(WatchmapError, match="negative or not finite"):
        moc_from_skymap(_flat(np.full(12 * 16, -1.0), "NESTED"), 0.9)
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.zeros(3)).writeto(buffer)
    with pytest.raises(WatchmapError, match="no binary table"):
        moc_from_skymap(buffer.getvalue(), 0.9)


def test_a_mocs_cover_holds_the_moc_at_one_order() -> None:
    from mocpy import MOC

    from broker.domain.watchmaps import cover

    moc = MOC.from_str("3/1-20 9/300000-300100")
    got = cover(moc)
    assert got.order == 9
    assert set(range(300000, 300101)) <= set(got.cells.tolist())
    assert got.cells.size == 20 * 4**6 + 101
