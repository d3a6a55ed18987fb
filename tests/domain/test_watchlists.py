"""Watchlist uploads (every bad row named) and the cone index (exact against brute force)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from broker.domain.watchlists import (
    MAX_RADIUS_ARCSEC,
    ConeIndex,
    UploadError,
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
    # The nominal cell width at the chosen order is at least three radii, and one order deeper
    # it would not be (unless the order is the deepest).
    radius_deg = np.array([0.1, 1.0, 60.0, 1800.0]) / 3600
    width_deg = 58.6 / 2.0 ** orders.astype(float)
    assert np.all(width_deg / 3 >= radius_deg)
    assert np.all((width_deg / 2 / 3 < radius_deg) | (orders == 16))


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
