"""Context classification: the ellipse geometry against astropy and against points built
independently (edges at several position angles, RA 0/360, the poles), the rules on constructed
cases, and real stars and galaxies from the bundled Hipparcos and OpenNGC catalogs."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from functools import cache

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import Distance, SkyCoord
from astropy.time import Time

from broker.domain.context import (
    DEFAULT_RULES,
    LABELS,
    REASONS,
    Context,
    ContextRules,
    Counterpart,
    classify,
    classify_many,
    elliptical_offset,
    offset_by,
)
from broker.domain.enrichment import CONTEXTS
from broker.domain.sky import angular_separation_deg
from tests.support.data import BUNDLED_DATA

ARCSEC = 1.0 / 3600.0
PAS = [0.0, 45.0, 90.0, 179.0]
# Galaxy centres: ordinary, straddling RA 0/360 from either side, near and at both poles.
CENTRES = [(150.0, 20.0), (359.9995, 0.0), (0.0004, -30.0), (0.0, 60.0), (123.0, 89.9),
           (200.0, -89.9), (40.0, 90.0), (310.0, -90.0)]
EPS = 1e-7  # relative step off an edge: far above rounding, far below any rule's tolerance


def _point(ra0: float, dec0: float, bearing_deg: float, dist_deg: float) -> tuple[float, float]:
    """The point at a distance and bearing (east of north) from (ra0, dec0), built with a
    rotation matrix (Rz(ra0) Ry(90 - dec0)) of the point seen from the north pole, not with the
    module's formulas. At a pole, north is taken along the meridian ``ra0``, as the module
    does: from the north pole, bearing 0 leaves along RA ``ra0 + 180``."""
    rho, theta = math.radians(dist_deg), math.radians(bearing_deg)
    # Seen from the north pole with the meridian ra = 180 as "north": bearing theta goes to
    # longitude 180 - theta.
    lon = math.pi - theta
    v = np.array([math.sin(rho) * math.cos(lon), math.sin(rho) * math.sin(lon), math.cos(rho)])
    tilt = math.radians(90.0 - dec0)
    ry = np.array([[math.cos(tilt), 0.0, math.sin(tilt)], [0.0, 1.0, 0.0],
                   [-math.sin(tilt), 0.0, math.cos(tilt)]])
    a = math.radians(ra0)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0],
                   [0.0, 0.0, 1.0]])
    p = rz @ ry @ v
    return (math.degrees(math.atan2(p[1], p[0])) % 360.0,
            math.degrees(math.atan2(p[2], math.hypot(p[0], p[1]))))


def _galaxy(ra: float, dec: float, a_arcsec: float = 60.0, b_arcsec: float = 20.0,
            pa: float | None = 30.0, source_id: str = "G1", catalog: str = "gal") -> Counterpart:
    return Counterpart(catalog, "galaxy", source_id, ra, dec, 2 * a_arcsec / 60.0,
                       2 * b_arcsec / 60.0, pa)


def _offset(ra: float, dec: float, g: Counterpart) -> float:
    e = g.ellipse(DEFAULT_RULES)
    return float(elliptical_offset(np.array(ra), np.array(dec), np.array(g.ra), np.array(g.dec),
                                   np.array(e.semi_major_arcsec * ARCSEC),
                                   np.array(e.semi_minor_arcsec * ARCSEC), np.array(e.pa_deg)))


# --- the geometry -----------------------------------------------------------------------------

def test_the_test_points_agree_with_astropy_away_from_the_poles() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        ra0, dec0 = rng.uniform(0, 360), rng.uniform(-89.5, 89.5)
        bearing, dist = rng.uniform(0, 360), rng.uniform(0, 0.3)
        expected = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(
            bearing * u.deg, dist * u.deg)
        ra, dec = _point(ra0, dec0, bearing, dist)
        assert angular_separation_deg(ra, dec, expected.ra.deg, expected.dec.deg) < 1e-10
        mod_ra, mod_dec = offset_by(np.array(ra0), np.array(dec0), bearing, dist)
        assert angular_separation_deg(ra, dec, mod_ra, mod_dec) < 1e-10


def test_elliptical_offset_matches_astropy_separation_and_position_angle() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    ra0 = np.concatenate([rng.uniform(0, 360, n - 200), rng.uniform(-0.01, 0.01, 200) % 360])
    dec0 = np.degrees(np.arcsin(rng.uniform(-1, 1, n))).clip(-89.9, 89.9)
    a = rng.uniform(1, 600, n) * ARCSEC
    b = a * rng.uniform(0.05, 1.0, n)
    pa = rng.uniform(0, 180, n)
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    points = centre.directional_offset_by(rng.uniform(0, 360, n) * u.deg,
                                          a * rng.uniform(0, 3, n) * u.deg)
    sep = centre.separation(points).deg
    angle = np.radians(centre.position_angle(points).deg - pa)
    expected = np.hypot(sep * np.cos(angle) / a, sep * np.sin(angle) / b)
    got = elliptical_offset(points.ra.deg, points.dec.deg, ra0, dec0, a, b, pa)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("centre", CENTRES, ids=[f"{r}_{d}" for r, d in CENTRES])
@pytest.mark.parametrize("pa", PAS)
def test_points_on_just_inside_and_just_outside_the_ellipse_edge(
        centre: tuple[float, float], pa: float) -> None:
    a, b = 60.0, 20.0
    g = _galaxy(*centre, a, b, pa)
    for bearing, semi in ((pa, a), (pa + 180.0, a), (pa + 90.0, b), (pa - 90.0, b)):
        inside, on, outside = (_offset(*_point(*centre, bearing, f * semi * ARCSEC), g)
                               for f in (1.0 - EPS, 1.0, 1.0 + EPS))
        assert inside < 1.0 < outside, (bearing, inside, outside)
        assert on == pytest.approx(1.0, abs=1e-9)
        assert inside == pytest.approx(1.0 - EPS, abs=1e-9)


@pytest.mark.parametrize("centre", CENTRES, ids=[f"{r}_{d}" for r, d in CENTRES])
@pytest.mark.parametrize("pa", PAS)
def test_the_host_and_outskirts_limits_are_sharp_in_every_direction(
        centre: tuple[float, float], pa: float) -> None:
    g = _galaxy(*centre, 60.0, 20.0, pa)
    edge_rules = replace(DEFAULT_RULES, host_limit=1.0)
    for bearing, semi in ((pa, 60.0), (pa + 180.0, 60.0), (pa + 90.0, 20.0), (pa - 90.0, 20.0)):
        inside = _point(*centre, bearing, (1 - EPS) * semi * ARCSEC)
        outside = _point(*centre, bearing, (1 + EPS) * semi * ARCSEC)
        assert classify(*inside, [g], rules=edge_rules).label == "supernova_like"
        assert classify(*outside, [g], rules=edge_rules).reason == "galaxy_outskirts"
        for limit, before, after in ((DEFAULT_RULES.host_limit, "supernova_like", "unclear"),
                                     (DEFAULT_RULES.outskirts_limit, "unclear", "orphan")):
            near = _point(*centre, bearing, limit * (1 - EPS) * semi * ARCSEC)
            far = _point(*centre, bearing, limit * (1 + EPS) * semi * ARCSEC)
            assert classify(*near, [g]).label == before
            assert classify(*far, [g]).label == after


def test_a_galaxy_straddling_ra_0_is_one_ellipse() -> None:
    # Centre just west of RA 0: half the galaxy has RA near 360, half near 0.
    g = _galaxy(359.999, 10.0, 60.0, 30.0, 90.0)
    east = _point(359.999, 10.0, 90.0, 50 * ARCSEC)  # across RA 0
    west = _point(359.999, 10.0, 270.0, 50 * ARCSEC)
    assert east[0] < 1.0 < 359.0 < west[0]
    for ra, dec in (east, west):
        context = classify(ra, dec, [g])
        assert context.label == "supernova_like"
        assert context.offset_semimajor == pytest.approx(50 / 60, rel=1e-9)
    # The point's RA given plus 360 and the galaxy's RA given as -0.001: the same answer.
    same = Counterpart("gal", "galaxy", "G1", -0.001, 10.0, 2.0, 1.0, 90.0)
    assert same.ra == pytest.approx(359.999)
    shifted, plain = classify(east[0] + 360.0, east[1], [same]), classify(*east, [g])
    assert shifted.label == plain.label
    assert shifted.offset_semimajor == pytest.approx(plain.offset_semimajor, rel=1e-9)


def test_the_poles_follow_the_catalogued_meridian_and_are_continuous() -> None:
    a, b = 60.0, 20.0
    for pole in (90.0, -90.0):
        g = _galaxy(40.0, pole, a, b, 0.0)
        # From the north pole, bearing 0 (the major axis) runs down RA 40 + 180 = 220; from the
        # south pole it runs up RA 40. Points built by hand, without any bearing formula.
        major_ra = 220.0 if pole > 0 else 40.0
        inward = -1.0 if pole > 0 else 1.0
        on_major = (major_ra, pole + inward * 0.5 * a * ARCSEC)
        on_minor = ((major_ra + 90.0) % 360.0, pole + inward * 0.5 * b * ARCSEC)
        assert _offset(*on_major, g) == pytest.approx(0.5, rel=1e-9)
        assert _offset(*on_minor, g) == pytest.approx(0.5, rel=1e-9)
        # The limit dec -> ±90 at fixed RA gives the same answer as the pole itself.
        nearly = _galaxy(40.0, pole - math.copysign(1e-9, pole), a, b, 0.0)
        for p in (on_major, on_minor, (7.0, pole + inward * 70 * ARCSEC)):
            assert _offset(*p, nearly) == pytest.approx(_offset(*p, g), rel=1e-6)
        # An alert exactly at the pole is at the centre: nuclear.
        assert classify(123.0, pole, [g]).label == "nuclear"


# --- the rules on constructed cases -------------------------------------------------------------

@pytest.mark.parametrize(("a_arcsec", "nucleus_arcsec"),
                         [(30.0, 1.0), (60.0, 1.0), (200.0, 2.0), (600.0, 3.0), (5000.0, 3.0)])
def test_nucleus_radius_floor_fraction_and_cap(a_arcsec: float, nucleus_arcsec: float) -> None:
    assert DEFAULT_RULES.nucleus_radius_arcsec(a_arcsec) == pytest.approx(nucleus_arcsec)
    g = _galaxy(150.0, 20.0, a_arcsec, a_arcsec / 3, 30.0)
    for bearing in (0.0, 30.0, 120.0):
        inside = _point(150.0, 20.0, bearing, nucleus_arcsec * (1 - 1e-6) * ARCSEC)
        outside = _point(150.0, 20.0, bearing, nucleus_arcsec * (1 + 1e-6) * ARCSEC)
        got = classify(*inside, [g])
        assert (got.label, got.reason, got.source_id) == ("nuclear", "galaxy_nucleus", "G1")
        assert got.separation_arcsec == pytest.approx(nucleus_arcsec, rel=1e-5)
        assert classify(*outside, [g]).label == "supernova_like"


def test_on_a_star() -> None:
    star = Counterpart("hip", "star", "42", 150.0, 20.0)
    got = classify(*_point(150.0, 20.0, 10.0, 1.4 * ARCSEC), [star])
    assert got == Context(label="variable_star", reason="star", catalog="hip", source_id="42",
                          kind="star", separation_arcsec=pytest.approx(1.4))
    assert classify(*_point(150.0, 20.0, 10.0, 1.6 * ARCSEC), [star]).label == "orphan"


def test_a_star_beats_a_galaxy_disk_but_not_its_nucleus() -> None:
    g = _galaxy(150.0, 20.0)
    on_disk = _point(150.0, 20.0, 30.0, 30 * ARCSEC)
    star = Counterpart("hip", "star", "7", *_point(*on_disk, 200.0, 1.0 * ARCSEC))
    got = classify(*on_disk, [g, star])
    assert (got.label, got.source_id) == ("variable_star", "7")
    # The same star 1.6" away no longer counts: the galaxy's disk decides.
    far_star = Counterpart("hip", "star", "7", *_point(*on_disk, 200.0, 1.6 * ARCSEC))
    assert classify(*on_disk, [g, far_star]).label == "supernova_like"
    # A star on the galaxy's nucleus may be that nucleus: unclear, naming the nearer one.
    core_star = Counterpart("hip", "star", "8", *_point(150.0, 20.0, 0.0, 0.8 * ARCSEC))
    at_core = _point(150.0, 20.0, 180.0, 0.1 * ARCSEC)
    got = classify(*at_core, [g, core_star])
    assert (got.label, got.reason, got.source_id) == ("unclear", "star_at_galaxy_nucleus", "G1")


def test_on_a_quasar() -> None:
    qso = Counterpart("milliquas", "qso", "Q1", 10.0, -5.0)
    got = classify(*_point(10.0, -5.0, 77.0, 0.9 * ARCSEC), [qso])
    assert (got.label, got.reason, got.catalog, got.source_id) == ("agn", "qso", "milliquas", "Q1")
    assert classify(*_point(10.0, -5.0, 77.0, 1.1 * ARCSEC), [qso]).label == "orphan"
    # A quasar at a galaxy's centre is its active nucleus; one seen through a disk is behind it.
    g = _galaxy(10.0, -5.0)
    assert classify(10.0, -5.0, [g, qso]).label == "agn"
    behind = Counterpart("milliquas", "qso", "Q2", *_point(10.0, -5.0, 30.0, 40 * ARCSEC))
    assert classify(behind.ra, behind.dec, [g, behind]).label == "agn"
    # A star and a quasar both close contradict each other.
    star = Counterpart("gaia", "star", "S", *_point(10.0, -5.0, 0.0, 0.5 * ARCSEC))
    got = classify(10.0, -5.0, [star, qso])
    assert (got.label, got.reason, got.source_id) == ("unclear", "star_and_qso", "Q1")


def test_orphan() -> None:
    assert classify(10.0, 20.0, []) == Context(label="orphan", reason="nothing_near")
    far = [Counterpart("hip", "star", "1", *_point(10.0, 20.0, 0.0, 3 * ARCSEC)),
           Counterpart("q", "qso", "2", *_point(10.0, 20.0, 90.0, 2 * ARCSEC)),
           Counterpart("g", "generic", "3", *_point(10.0, 20.0, 180.0, 2 * ARCSEC)),
           _galaxy(*_point(10.0, 20.0, 30.0, 3 * 60 * ARCSEC), pa=30.0)]
    assert classify(10.0, 20.0, far).label == "orphan"


def test_generic_sources_alone_are_unclear_and_never_override_a_known_kind() -> None:
    generic = Counterpart("radio", "generic", "R1", 50.0, 30.0)
    got = classify(*_point(50.0, 30.0, 45.0, 1.0 * ARCSEC), [generic])
    assert (got.label, got.reason, got.source_id) == ("unclear", "generic_only", "R1")
    assert classify(*_point(50.0, 30.0, 45.0, 2.0 * ARCSEC), [generic]).label == "orphan"
    g = _galaxy(*_point(50.0, 30.0, 0.0, 20 * ARCSEC), pa=0.0)
    assert classify(50.0, 30.0, [generic, g]).label == "supernova_like"


def test_a_galaxy_without_shape_gets_the_default_circle() -> None:
    g = Counterpart("glade", "galaxy", "X", 80.0, -40.0)
    got = classify(*_point(80.0, -40.0, 123.0, 5 * ARCSEC), [g])
    assert (got.label, got.shape_source, got.semi_major_arcsec) == ("supernova_like", "default",
                                                                    10.0)
    assert got.offset_semimajor == pytest.approx(0.5)
    assert classify(*_point(80.0, -40.0, 123.0, 20 * ARCSEC), [g]).label == "unclear"
    assert classify(*_point(80.0, -40.0, 123.0, 30 * ARCSEC), [g]).label == "orphan"
    assert classify(80.0, -40.0, [g]).label == "nuclear"


def test_partial_shapes() -> None:
    # No position angle: the circle of the same area, radius sqrt(a b).
    no_pa = Counterpart("ngc", "galaxy", "A", 80.0, -40.0, 2.0, 0.5, None)
    e = no_pa.ellipse(DEFAULT_RULES)
    assert (e.semi_major_arcsec, e.semi_minor_arcsec, e.source) == (30.0, 30.0, "circularised")
    # No minor axis: the circle of the major axis; NaN counts as missing.
    no_minor = Counterpart("ngc", "galaxy", "B", 80.0, -40.0, 2.0, math.nan, 45.0)
    assert no_minor.minor_diameter_arcmin is None
    e = no_minor.ellipse(DEFAULT_RULES)
    assert (e.semi_major_arcsec, e.semi_minor_arcsec, e.source) == (60.0, 60.0, "catalog")
    got = classify(*_point(80.0, -40.0, 300.0, 45 * ARCSEC), [no_minor])
    assert got.offset_semimajor == pytest.approx(0.75)


def test_the_host_is_the_galaxy_with_the_smallest_offset_and_a_nucleus_comes_first() -> None:
    big = _galaxy(200.0, 10.0, 300.0, 100.0, 60.0, source_id="BIG")
    small_centre = _point(200.0, 10.0, 60.0, 120 * ARCSEC)
    small = _galaxy(*small_centre, 10.0, 5.0, 0.0, source_id="SMALL")
    # At the small galaxy's centre: its nucleus, though the point is on the big one's disk.
    got = classify(*small_centre, [big, small])
    assert (got.label, got.source_id) == ("nuclear", "SMALL")
    # 4" along the small one's major axis (offset 0.4) vs offset ~0.41 in the big one.
    p = _point(*small_centre, 0.0, 4 * ARCSEC)
    got = classify(*p, [big, small])
    assert (got.label, got.source_id) == ("supernova_like", "SMALL")
    assert got.offset_semimajor == pytest.approx(0.4, rel=1e-6)
    # 8" out (offset 0.8 in the small one) the big disk's smaller offset wins.
    p = _point(*small_centre, 0.0, 8 * ARCSEC)
    assert classify(*p, [big, small]).source_id == "BIG"


def test_the_answer_does_not_depend_on_the_order_of_the_counterparts() -> None:
    rng = random.Random(3)
    centre = (33.0, 44.0)
    cps = [_galaxy(*centre, source_id="A", catalog="one"), _galaxy(*centre, source_id="A",
                                                                   catalog="two"),
           Counterpart("s", "star", "1", *_point(*centre, 10.0, 40 * ARCSEC)),
           Counterpart("s", "star", "2", *_point(*centre, 190.0, 40 * ARCSEC))]
    for p in (centre, _point(*centre, 0.0, 20 * ARCSEC), _point(*centre, 100.0, 40 * ARCSEC)):
        first = classify(*p, cps)
        for _ in range(10):
            rng.shuffle(cps)
            assert classify(*p, cps) == first
    assert classify(*centre, cps).catalog == "one"  # a duplicate: ties go by catalog name


def test_proper_motion_moves_a_star_to_the_alert_epoch() -> None:
    # 200 mas/yr north-east over 35 years: 7" since 1991.25.
    star = Counterpart("hip", "star", "9", 120.0, 30.0, pmra_mas_yr=120.0, pmdec_mas_yr=160.0,
                       epoch_jyear=1991.25)
    now = _point(120.0, 30.0, math.degrees(math.atan2(120.0, 160.0)), 200.0 * 35.0 / 3.6e6)
    got = classify(*now, [star], epoch_jyear=2026.25)
    assert got.label == "variable_star"
    assert got.separation_arcsec < 1e-6
    assert classify(*now, [star]).label == "orphan"  # no alert epoch: the catalogued position
    fixed = replace(star, epoch_jyear=None)
    assert classify(*now, [fixed], epoch_jyear=2026.25).label == "orphan"


def test_classify_many_is_classify_per_alert() -> None:
    rng = np.random.default_rng(4)
    ra, dec, groups = [], [], []
    for k in range(300):
        c = (float(rng.uniform(0, 360)), float(np.clip(rng.normal(0, 50), -90, 90)))
        cps = []
        for j in range(int(rng.integers(0, 5))):
            kind = ("star", "galaxy", "qso", "generic")[int(rng.integers(0, 4))]
            # Distances skewed towards the alert, so that every rule fires now and then.
            dist = 60.0 * float(rng.uniform(0, 1)) ** 2 * ARCSEC
            pos = _point(*c, float(rng.uniform(0, 360)), dist)
            if kind == "galaxy":
                a = float(rng.uniform(3, 40))
                cps.append(_galaxy(*pos, a, 2.0, float(rng.uniform(0, 180)), source_id=f"{k}.{j}"))
            else:
                cps.append(Counterpart("c", kind, f"{k}.{j}", *pos))
        ra.append(c[0])
        dec.append(c[1])
        groups.append(cps)
    got = classify_many(ra, dec, groups)
    assert got == [classify(r, d, g) for r, d, g in zip(ra, dec, groups, strict=True)]
    assert {c.label for c in got} >= {"orphan", "supernova_like", "variable_star"}


def test_search_radii_cover_everything_the_rules_look_at() -> None:
    rules = DEFAULT_RULES
    assert rules.search_radius_arcsec("star") == rules.star_radius_arcsec
    assert rules.search_radius_arcsec("qso") == rules.qso_radius_arcsec
    assert rules.search_radius_arcsec("generic") == rules.generic_radius_arcsec
    assert rules.search_radius_arcsec("galaxy") == rules.outskirts_limit * 10.0
    assert rules.search_radius_arcsec("galaxy", 600.0) == rules.outskirts_limit * 600.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "planet"}, "kind must be one of"),
    ({"dec": 90.5}, "outside"),
    ({"ra": math.inf}, "not finite"),
    ({"kind": "star", "major_diameter_arcmin": 1.0}, "only a galaxy"),
    ({"major_diameter_arcmin": -1.0}, "positive"),
    ({"major_diameter_arcmin": 1.0, "minor_diameter_arcmin": 2.0}, "longer than"),
    ({"position_angle_deg": math.inf}, "not finite"),
])
def test_bad_counterparts_are_refused(kwargs: dict, message: str) -> None:
    base: dict = {"catalog": "c", "kind": "galaxy", "source_id": "1", "ra": 1.0, "dec": 2.0}
    with pytest.raises(ValueError, match=message):
        Counterpart(**(base | kwargs))


@pytest.mark.parametrize("kwargs", [{"star_radius_arcsec": 0.0}, {"nucleus_fraction": -0.1},
                                    {"nucleus_floor_arcsec": 5.0},
                                    {"host_limit": 3.0}, {"outskirts_limit": math.nan}])
def test_bad_rules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"must be|exceeds"):
        ContextRules(**kwargs)


def test_the_labels_are_the_stored_contexts() -> None:
    # solar_system is not decided by the position rules but by the survey's association of
    # the detection with a known moving object (broker.enricher).
    assert (*LABELS, "solar_system") == CONTEXTS
    assert len(set(REASONS)) == 9


def test_a_bad_alert_position_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        classify(0.0, -91.0, [])


# --- the bundled catalogs ------------------------------------------------------------------------

HIPPARCOS_EPOCH = 1991.25
# Galaxy types of OpenNGC that are single galaxies (pairs, triplets and groups are not).
OPENNGC_GALAXY = "G"


@cache
def _hipparcos() -> dict[str, np.ndarray]:
    table = pq.read_table(BUNDLED_DATA / "catalogs" / "hipparcos2.parquet",
                          columns=["hip", "ra", "dec", "plx", "pmra", "pmdec"])
    return {name: table.column(name).to_numpy() for name in table.column_names}


@cache
def _openngc_galaxies() -> dict[str, np.ndarray]:
    table = pa_csv.read_csv(BUNDLED_DATA / "catalogs" / "openngc.csv").to_pydict()
    keep = [i for i, t in enumerate(table["type"])
            if t == OPENNGC_GALAXY and table["ra_deg"][i] is not None]

    def column(name: str) -> np.ndarray:
        values = [table[name][i] for i in keep]
        if name == "id":
            return np.array(values)
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    return {name: column(name) for name in ("id", "ra_deg", "dec_deg", "majax_arcmin",
                                            "minax_arcmin", "pa_deg")}


def _around(ra: float, dec: float, *, with_motion: bool = False) -> list[Counterpart]:
    """Every Hipparcos star within a minute of arc and every OpenNGC galaxy whose search reach
    (outskirts limit times its semi-major axis) holds the position, found by brute force."""
    hip, ngc = _hipparcos(), _openngc_galaxies()
    found = []
    sep = angular_separation_deg(ra, dec, hip["ra"], hip["dec"]) * 3600.0
    for i in np.nonzero(sep < 60.0)[0]:
        motion = ({"pmra_mas_yr": float(hip["pmra"][i]), "pmdec_mas_yr": float(hip["pmdec"][i]),
                   "epoch_jyear": HIPPARCOS_EPOCH} if with_motion else {})
        found.append(Counterpart("hipparcos2", "star", str(hip["hip"][i]), float(hip["ra"][i]),
                                 float(hip["dec"][i]), **motion))
    sep = angular_separation_deg(ra, dec, ngc["ra_deg"], ngc["dec_deg"]) * 3600.0
    reach = np.fmax(DEFAULT_RULES.outskirts_limit * 30.0 * ngc["majax_arcmin"],
                    DEFAULT_RULES.search_radius_arcsec("galaxy"))
    for i in np.nonzero(sep <= reach)[0]:
        found.append(Counterpart("openngc", "galaxy", str(ngc["id"][i]), float(ngc["ra_deg"][i]),
                                 float(ngc["dec_deg"][i]), float(ngc["majax_arcmin"][i]),
                                 float(ngc["minax_arcmin"][i]), float(ngc["pa_deg"][i])))
    return found


def _hip_row(hip_id: int) -> int:
    return int(np.nonzero(_hipparcos()["hip"] == hip_id)[0][0])


# HIP 1 (next to RA 0), Sirius, Polaris, Vega, alpha Cen A (3.7"/yr), two stars within a degree
# of the poles.
STARS = [1, 32349, 11767, 91262, 71683, 47953, 48752]


@pytest.mark.parametrize("hip_id", STARS)
def test_alerts_on_real_hipparcos_stars_are_variable_stars(hip_id: int) -> None:
    hip = _hipparcos()
    row = _hip_row(hip_id)
    ra, dec = float(hip["ra"][row]), float(hip["dec"][row])
    for bearing, dist in ((0.0, 0.0), (70.0, 1.0), (250.0, 1.4)):
        p = _point(ra, dec, bearing, dist * ARCSEC)
        got = classify(*p, _around(*p))
        assert (got.label, got.catalog, got.source_id) == ("variable_star", "hipparcos2",
                                                           str(hip_id))
        assert got.separation_arcsec == pytest.approx(dist, abs=1e-6)


def test_barnards_star_is_found_where_it_is_now_only_with_its_proper_motion() -> None:
    hip = _hipparcos()
    row = _hip_row(87937)  # Barnard's star: 10.3"/yr
    then = SkyCoord(ra=hip["ra"][row] * u.deg, dec=hip["dec"][row] * u.deg,
                    distance=Distance(parallax=hip["plx"][row] * u.mas),
                    pm_ra_cosdec=hip["pmra"][row] * u.mas / u.yr,
                    pm_dec=hip["pmdec"][row] * u.mas / u.yr,
                    obstime=Time(HIPPARCOS_EPOCH, format="jyear"))
    now = then.apply_space_motion(new_obstime=Time(2026.5, format="jyear"))
    p = (float(now.ra.deg), float(now.dec.deg))
    assert angular_separation_deg(*p, then.ra.deg, then.dec.deg) * 3600 > 300
    # Its catalogued position is 6' away: the search must be widened by the motion.
    nearby = _around(float(then.ra.deg), float(then.dec.deg), with_motion=True)
    got = classify(*p, nearby, epoch_jyear=2026.5)
    assert (got.label, got.source_id) == ("variable_star", "87937")
    assert got.separation_arcsec < 0.01
    assert classify(*p, nearby).label == "orphan"


# Real galaxies with both axes and a position angle: Sombrero (PA 90), M83 (PA 45, south), M81
# (dec 69), M77 (on the equator), M33 (31' across), NGC 7800 (RA 359.9), NGC 7796 (RA 359.7,
# dec -55), NGC 2276 (dec +85.8), IC 2051 (dec -83.8).
GALAXIES = ["NGC4594", "NGC5236", "NGC3031", "NGC1068", "NGC0598", "NGC7800", "NGC7796",
            "NGC2276", "IC2051"]


def _ngc(galaxy_id: str) -> tuple[float, float, float, float, float]:
    ngc = _openngc_galaxies()
    i = int(np.nonzero(ngc["id"] == galaxy_id)[0][0])
    return (float(ngc["ra_deg"][i]), float(ngc["dec_deg"][i]), float(ngc["majax_arcmin"][i]),
            float(ngc["minax_arcmin"][i]), float(ngc["pa_deg"][i]))


@pytest.mark.parametrize("galaxy_id", GALAXIES)
def test_alerts_on_real_openngc_galaxies(galaxy_id: str) -> None:
    ra, dec, major, minor, pa = _ngc(galaxy_id)
    a = major * 30.0
    assert not math.isnan(minor)
    assert not math.isnan(pa)
    got = classify(ra, dec, _around(ra, dec))
    assert (got.label, got.reason, got.source_id) == ("nuclear", "galaxy_nucleus", galaxy_id)
    assert got.offset_semimajor == 0.0
    for bearing in (pa, pa + 180.0):
        p = _point(ra, dec, bearing, 0.5 * a * ARCSEC)
        got = classify(*p, _around(*p))
        assert (got.label, got.reason, got.source_id) == ("supernova_like", "galaxy_disk",
                                                          galaxy_id)
        assert got.offset_semimajor == pytest.approx(0.5, rel=1e-9)
        assert got.semi_major_arcsec == a
        # Along the minor axis, 0.5 semi-minor axes out is also 0.5 in elliptical radius.
        p = _point(ra, dec, bearing + 90.0, 0.5 * minor * 30.0 * ARCSEC)
        assert classify(*p, _around(*p)).offset_semimajor == pytest.approx(0.5, rel=1e-9)
        # Three semi-major axes out, beyond the outskirts limit, nothing else is near.
        p = _point(ra, dec, bearing, 3.0 * a * ARCSEC)
        assert classify(*p, _around(*p)).label == "orphan"
        p = _point(ra, dec, bearing, 2.0 * a * ARCSEC)
        got = classify(*p, _around(*p))
        assert (got.label, got.reason, got.source_id) == ("unclear", "galaxy_outskirts",
                                                          galaxy_id)


def test_m32_on_the_disk_of_m31() -> None:
    m32 = _ngc("NGC0221")
    # At M32's centre, deep inside M31's ellipse: M32's nucleus.
    got = classify(m32[0], m32[1], _around(m32[0], m32[1]))
    assert (got.label, got.source_id) == ("nuclear", "NGC0221")
    # Halfway out along M32's major axis, the point is relatively deeper inside M31's ellipse
    # than inside M32's: the smallest elliptical offset names M31 (docs/context.md says why).
    p = _point(m32[0], m32[1], m32[4], 0.5 * m32[2] * 30.0 * ARCSEC)
    got = classify(*p, _around(*p))
    assert (got.label, got.source_id) == ("supernova_like", "NGC0224")
    assert got.offset_semimajor < 0.5
