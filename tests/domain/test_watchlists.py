"""Watchlist uploads (every bad row named) and the cone index (exact against brute force)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from broker.domain.watchlists import (
    DENSE_MAX_ORDER,
    MAX_RADIUS_ARCSEC,
    ConeIndex,
    UploadError,
    max_cell_radius_deg,
    order_for_radius,
    parse_cones,
    separation_arcsec,
)


def test_a_good_csv_and_json() -> None:
    body = "name,ra,dec,radius\nSN 2024abc,10.5,-20.25,5\nM31,10.6847,41.269,\nwrap,360,90,1800\n"
    cones = parse_cones(body, "csv", default_radius_arcsec=2.0, max_rows=10)
    assert cones.name == ["SN 2024abc", "M31", "wrap"]
    assert cones.ra.tolist() == [10.5, 10.6847, 0.0]  # RA 360 is RA 0
    assert cones.radius_arcsec.tolist() == [5.0, 2.0, 1800.0]
    same = parse_cones(json.dumps({"cones": [
        {"name": "SN 2024abc", "ra": 10.5, "dec": -20.25, "radius": 5},
        {"name": "M31", "ra": 10.6847, "dec": 41.269},
        {"name": "wrap", "ra": 360, "dec": 90, "radius": 1800}]}), "json",
        default_radius_arcsec=2.0, max_rows=10)
    assert (same.name, same.ra.tolist(), same.radius_arcsec.tolist()) == (
        cones.name, cones.ra.tolist(), cones.radius_arcsec.tolist())


def test_every_bad_row_is_named_and_nothing_is_kept() -> None:
    body = "\n".join([
        "ra,dec,name,radius",       # line 1
        "10,10,ok,3",               # 2
        "nan,10,a,3",               # 3
        "400,10,b,3",               # 4
        "10,-91,c,3",               # 5
        ",10,d,3",                  # 6
        "10,10,e,-1",               # 7
        "10,10,f,1801",             # 8
        "10,10,ok,3",               # 9: name of line 2 again
        "10,10,,3",                 # 10
        "ten,10,g,3",               # 11
        "10,10,h",                  # 12: a field short
        "10,inf,i,0",               # 13: two problems
    ])
    with pytest.raises(UploadError) as caught:
        parse_cones(body, "csv", default_radius_arcsec=2.0, max_rows=100)
    reasons = {e.line: e.reason for e in caught.value.errors}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert reasons[3] == "ra is 'nan', not a finite number"
    assert reasons[4] == "ra 400 is outside [0, 360]"
    assert reasons[5] == "dec -91 is outside [-90, 90]"
    assert reasons[6] == "ra is missing"
    assert reasons[7] == "radius -1 is not in (0, 1800] arcsec"
    assert reasons[8] == "radius 1801 is not in (0, 1800] arcsec"
    assert reasons[9] == "name 'ok' is also on line 2"
    assert reasons[10] == "name is missing"
    assert reasons[11] == "ra 'ten' is not a number"
    assert reasons[12] == "has 3 fields, the header 4"
    assert reasons[13] == ("dec is 'inf', not a finite number; radius 0 is not in (0, 1800] "
                           "arcsec")
    assert str(caught.value).startswith("11 bad rows, nothing kept: line 3: ra is 'nan'")


@pytest.mark.parametrize(("body", "fmt", "message"), [
    ("", "csv", "the upload is empty"),
    ("ra,dec\n1,2\n", "csv", "the header line has no name column"),
    ("ra,dec,name,mag\n1,2,x,3\n", "csv", "unknown columns mag"),
    ("ra,dec,name\n", "csv", "the upload has no cones"),
    ("{not json", "json", "the body is not JSON"),
    ('{"x": 1}', "json", "must be a list of cones"),
    ("<votable/>", "xml", "format 'xml' is not csv or json"),
])
def test_uploads_that_are_not_watchlists(body: str, fmt: str, message: str) -> None:
    with pytest.raises(UploadError, match=message):
        parse_cones(body, fmt, default_radius_arcsec=2.0, max_rows=10)


def test_json_items_are_numbered_and_the_row_cap_holds() -> None:
    with pytest.raises(UploadError) as caught:
        parse_cones(json.dumps([{"ra": 1, "dec": 1, "name": "a"}, 5,
                                {"ra": 1, "dec": 1, "name": "b", "colour": "red"},
                                {"ra": True, "dec": 1, "name": "c"}]), "json",
                    default_radius_arcsec=2.0, max_rows=10)
    assert [(e.line, e.reason) for e in caught.value.errors] == [
        (2, "is not an object with ra, dec and name"), (3, "has unknown fields colour"),
        (4, "ra True is not a number")]
    body = "ra,dec,name\n" + "".join(f"1,1,n{i}\n" for i in range(11))
    with pytest.raises(UploadError, match="has 11 cones, more than the 10 your tier allows"):
        parse_cones(body, "csv", default_radius_arcsec=2.0, max_rows=10)
    with pytest.raises(UploadError, match="default radius 0 is not in"):
        parse_cones("ra,dec,name\n1,1,a\n", "csv", default_radius_arcsec=0.0, max_rows=10)


def test_order_for_radius_keeps_a_cone_within_nine_cells() -> None:
    orders = order_for_radius(np.array([0.1, 1.0, 60.0, 1800.0]))
    assert orders.tolist() == sorted(orders.tolist(), reverse=True)  # wider: coarser
    assert orders[-1] >= 1
    # The radius is at most 0.45 of the nominal cell width at the chosen order, and one order
    # deeper it would not be (unless the order is the deepest).
    radius_deg = np.array([0.1, 1.0, 60.0, 1800.0]) / 3600
    width_deg = 58.6 / 2.0 ** orders.astype(float)
    assert np.all(width_deg * 0.45 >= radius_deg)
    assert np.all((width_deg / 2 * 0.45 < radius_deg) | (orders == 16))


def test_the_index_finds_exactly_what_brute_force_finds() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    radius = np.exp(rng.uniform(math.log(1.0), math.log(MAX_RADIUS_ARCSEC), n))
    # Cones at the RA wrap and the poles too.
    ra[:6] = [0.0, 359.9999, 180.0, 0.0, 45.0, 359.99]
    dec[:6] = [0.0, 0.0, 89.9999, 90.0, -90.0, -89.98]
    radius[:6] = [30.0, 30.0, 600.0, 1800.0, 60.0, 100.0]
    index = ConeIndex(ra, dec, radius)
    m = 3000
    pra = np.concatenate([rng.uniform(0, 360, m), [359.9995, 0.0005, 10.0, 200.0, 0.0]])
    pdec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, m))),
                           [0.0, 0.0, 89.99995, -89.9999, 90.0]])
    # Points placed inside some cones, near their edges.
    pick = rng.choice(n, 500, replace=False)
    along = rng.uniform(0, 2 * math.pi, 500)
    frac = rng.uniform(0.9, 0.999, 500) * radius[pick] / 3600.0
    pdec_in = np.clip(dec[pick] + frac * np.cos(along), -90, 90)
    pra_in = (ra[pick] + frac * np.sin(along) / np.maximum(
        np.cos(np.radians(pdec_in)), 1e-6)) % 360.0
    pra = np.concatenate([pra, pra_in])
    pdec = np.concatenate([pdec, pdec_in])
    points, cones, distance = index.match(pra, pdec)
    got = {(int(p), int(c)) for p, c in zip(points, cones, strict=True)}
    want = set()
    for i in range(pra.size):
        d = separation_arcsec(np.full(n, pra[i]), np.full(n, pdec[i]), ra, dec)
        want |= {(i, int(c)) for c in np.flatnonzero(d <= radius)}
    assert got == want
    assert len(want) > 600  # most placed points, and some random ones, fall in cones
    assert np.all(distance <= radius[cones])
    assert ConeIndex(np.zeros(0), np.zeros(0), np.zeros(0)).match(pra, pdec)[0].size == 0
    assert index.match(np.zeros(0), np.zeros(0))[0].size == 0


@pytest.mark.parametrize("order", [5, 9, 12, 16])
def test_no_point_of_a_cell_is_farther_than_max_cell_radius(order: int) -> None:
    """The bound that decides which neighbour cells a cone is filed in, against random points
    (a quarter of them in the polar caps, where cells are most distorted)."""
    from astropy import units as u
    from cdshealpix.nested import healpix_to_lonlat, lonlat_to_healpix

    rng = np.random.default_rng(order)
    n = 400_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    dec[: n // 4] = 90 - rng.uniform(0, 3 * 58.6 / 2**order, n // 4)
    cells = lonlat_to_healpix(ra * u.deg, dec * u.deg, order)
    lon, lat = healpix_to_lonlat(cells, order)
    distance = separation_arcsec(ra, dec, lon.deg, lat.deg) / 3600
    bound = max_cell_radius_deg(order)
    assert distance.max() <= bound
    assert distance.max() > 0.85 * bound  # and it is not so loose that it files cones widely


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)


def _brute_force(index_ra: np.ndarray, index_dec: np.ndarray, radius: np.ndarray,
                 pra: np.ndarray, pdec: np.ndarray) -> set[tuple[int, int]]:
    """Every (position, cone) pair within the cone's radius, with no HEALPix at all: a k-d tree
    of unit vectors gives every cone within the widest radius (a chord 1 % longer), then the
    exact separation decides."""
    from scipy.spatial import cKDTree

    chord = 2 * np.sin(np.radians(radius.max() / 3600) / 2) * 1.01
    near = cKDTree(_unit(index_ra, index_dec)).query_ball_point(_unit(pra, pdec), chord)
    want = set()
    for i, found in enumerate(near):
        cones = np.asarray(found, dtype=np.int64)
        d = separation_arcsec(np.full(cones.size, pra[i]), np.full(cones.size, pdec[i]),
                              index_ra[cones], index_dec[cones])
        want |= {(i, int(c)) for c in cones[d <= radius[cones]]}
    return want


def _inside_near_edges(rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray,
                       radius: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    pick = rng.choice(ra.size, m)
    along = rng.uniform(0, 2 * math.pi, m)
    frac = rng.uniform(0.95, 1.02, m) * radius[pick] / 3600.0  # some just outside
    pdec = np.clip(dec[pick] + frac * np.cos(along), -90, 90)
    pra = (ra[pick] + frac * np.sin(along) / np.maximum(np.cos(np.radians(pdec)), 1e-6)) % 360
    return pra, pdec


def test_cones_at_cell_corners_are_found_in_every_cell_they_reach() -> None:
    """Cones centred on and next to the corners of the cells they are filed in (where a cone
    spills into up to three other cells), and positions just inside and outside their edges."""
    from cdshealpix.nested import vertices

    rng = np.random.default_rng(11)
    radius = np.exp(rng.uniform(math.log(1.0), math.log(MAX_RADIUS_ARCSEC), 3000))
    orders = order_for_radius(radius)
    ra = np.empty(radius.size)
    dec = np.empty(radius.size)
    for order in np.unique(orders).tolist():
        members = np.flatnonzero(orders == order)
        cells = rng.integers(0, 12 * 4**order, members.size).astype(np.uint64)
        lon, lat = vertices(cells, order)
        which = rng.integers(0, 4, members.size)
        ra[members] = lon.deg[np.arange(members.size), which]
        dec[members] = lat.deg[np.arange(members.size), which]
    nudge = rng.uniform(-1, 1, (2, radius.size)) * radius / 3600 * 0.3
    ra = (ra + nudge[0] / np.maximum(np.cos(np.radians(dec)), 1e-6)) % 360
    dec = np.clip(dec + nudge[1], -90, 90)
    index = ConeIndex(ra, dec, radius)
    pra, pdec = _inside_near_edges(rng, ra, dec, radius, 6000)
    points, cones, _ = index.match(pra, pdec)
    got = {(int(p), int(c)) for p, c in zip(points, cones, strict=True)}
    want = _brute_force(ra, dec, radius, pra, pdec)
    assert got == want
    assert len(want) > 4000


def test_a_crowded_field_of_small_cones_keeps_its_own_order() -> None:
    """100,000 cones of 1-3 arcsec in half a square degree are too crowded to merge into the
    dense order: they keep their deep order (a binary-searched level), and still match exactly."""
    rng = np.random.default_rng(3)
    n = 100_000
    ra = 150.0 + rng.uniform(-0.35, 0.35, n)
    dec = 2.0 + rng.uniform(-0.35, 0.35, n)
    radius = rng.uniform(1.0, 3.0, n)
    index = ConeIndex(ra, dec, radius)
    assert [level.order for level in index.levels] != [DENSE_MAX_ORDER]
    assert all(level.offsets is None for level in index.levels if level.order > DENSE_MAX_ORDER)
    pra, pdec = _inside_near_edges(rng, ra, dec, radius, 2000)
    pra = np.concatenate([pra, 150.0 + rng.uniform(-0.4, 0.4, 2000)])
    pdec = np.concatenate([pdec, 2.0 + rng.uniform(-0.4, 0.4, 2000)])
    points, cones, _ = index.match(pra, pdec)
    got = {(int(p), int(c)) for p, c in zip(points, cones, strict=True)}
    assert got == _brute_force(ra, dec, radius, pra, pdec)
    assert len(got) > 1500


@pytest.mark.parametrize("order", [5, 9, 16])
def test_the_widest_cone_of_an_order_stays_within_its_cells_neighbours(order: int) -> None:
    """The claim `order_for_radius` rests on, checked directly: a cone of the widest radius
    filed at an order, centred on cell corners (polar caps and base-cell corners, where cells
    are narrowest, included), has every point of its edge in its centre's 3 x 3 block."""
    from astropy import units as u
    from cdshealpix.nested import lonlat_to_healpix, neighbours, vertices

    rng = np.random.default_rng(order)
    width = 58.6 / 2**order
    radius_deg = width * 0.45 * 0.999
    assert order_for_radius(np.array([radius_deg * 3600]))[0] == order or order == 16
    n = 20_000
    # Cells everywhere, near both poles, and around the base cells' corners (z = +-2/3).
    ra = rng.uniform(0, 360, n)
    z = np.concatenate([rng.uniform(-1, 1, n // 4), rng.uniform(0.98, 1, n // 4),
                        rng.uniform(-1, -0.98, n // 4), rng.choice([-2 / 3, 2 / 3], n // 4)])
    cells = lonlat_to_healpix(ra * u.deg, np.degrees(np.arcsin(z)) * u.deg, order)
    lon, lat = vertices(cells, order)
    which = rng.integers(0, 4, n)
    cra = lon.deg[np.arange(n), which] + rng.normal(0, width * 0.01, n)
    cdec = np.clip(lat.deg[np.arange(n), which] + rng.normal(0, width * 0.01, n), -90, 90)
    centre = lonlat_to_healpix((cra % 360) * u.deg, cdec * u.deg, order)
    block = neighbours(centre, order)  # (n, 9)
    from astropy.coordinates import SkyCoord

    centres = SkyCoord(cra % 360, cdec, unit="deg")
    for angle in np.linspace(0, 360, 48, endpoint=False):
        edge = centres.directional_offset_by(angle * u.deg, radius_deg * u.deg)
        cell = lonlat_to_healpix(edge.ra, edge.dec, order).astype(np.int64)
        assert np.all((block == cell[:, None]).any(axis=1)), angle
