"""ADQL run over the archive's shards and over TAP_SCHEMA (`broker.tap.execute`), on each
backend: every answer equals one computed without the rewriter, from the rows read plainly."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from broker.exceptions import StatementTimeoutError
from broker.storage.annotations import AnnotationStore
from broker.tap.adql import ADQLError, check
from broker.tap.execute import Engine
from broker.tap.tapschema import TapSchema
from tests.support.alerts import produce_placed
from tests.support.backends import plain_rows, separation_deg

OBJECTS = 60
CENTRE = (150.0, 10.0)


@pytest.fixture
def archive(harness, tmp_path) -> Any:
    """60 objects, a third within 2 degrees of CENTRE, archived; the engine over them."""
    rng = np.random.default_rng(41)
    places = []
    for i in range(OBJECTS):
        if i % 3 == 0:
            ra, dec = CENTRE[0] + rng.uniform(-2, 2), CENTRE[1] + rng.uniform(-2, 2)
        elif i % 3 == 1:  # around RA 0, on both sides of it
            ra, dec = rng.uniform(-2, 2) % 360.0, rng.uniform(-2, 2)
        else:
            ra, dec = rng.uniform(0, 360), rng.uniform(-60, 60)
        places.append((float(ra), float(dec)))
    produce_placed(harness, places, first_id=910_000_000_000, seed=43)
    assert harness.ingest_once().archived == OBJECTS
    tap = TapSchema(tmp_path / "tap_schema.db")
    return Engine(tap, harness.catalog), harness


def _run(engine: Engine, text: str, maxrec: int = 10_000) -> Any:
    return engine.run(check(text, engine.tap), maxrec)


#: Cones: around CENTRE, and across RA 0 from either side.
CONES = [(*CENTRE, 1.5), (0.4, 0.5, 1.5), (359.7, -0.5, 2.0)]


def test_cones_return_what_a_scan_finds(archive) -> None:
    engine, harness = archive
    objects = plain_rows(harness, "SELECT object_id, ra, `dec` FROM objects")
    assert len(objects) == OBJECTS
    for ra0, dec0, radius in CONES:
        want = sorted(o["object_id"] for o in objects
                      if separation_deg(o["ra"], o["dec"], ra0, dec0) <= radius)
        assert 0 < len(want) < OBJECTS
        text = ("SELECT object_id, ra, dec, DISTANCE(POINT('ICRS', ra, dec), "
                f"POINT('ICRS', {ra0}, {dec0})) AS d FROM lanner.objects "
                f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra0}, {dec0}, "
                f"{radius})) ORDER BY d")
        answer = _run(engine, text)
        got = answer.table.to_pylist()
        assert sorted(r["object_id"] for r in got) == want, (ra0, dec0)
        assert [r["d"] for r in got] == sorted(r["d"] for r in got)
        for row in got:
            assert row["d"] == pytest.approx(separation_deg(row["ra"], row["dec"], ra0, dec0),
                                             abs=1e-9)
        # The cone was narrowed to the chunks and HEALPix ranges that cover it.
        pruned, shards = engine._prune(check(text, engine.tap).tree.copy())
        assert "chunk_id IN" in pruned.sql()
        assert "hpx29 >=" in pruned.sql()
        assert shards is not None
        assert set(shards) <= set(range(engine.shards.count))
        assert not answer.overflow
    names = [(f.name, f.datatype, f.ucd) for f in answer.fields]
    assert names[:2] == [("object_id", "char", "meta.id;meta.main"),
                         ("ra", "double", "pos.eq.ra;meta.main")]


def test_order_top_offset_and_maxrec_merge_across_shards(archive) -> None:
    engine, harness = archive
    rows = plain_rows(harness, "SELECT source_id, object_id, mjd, band FROM alert_rows")
    by_time = sorted(rows, key=lambda r: (-r["mjd"], r["source_id"]))
    answer = _run(engine, "SELECT TOP 7 source_id, mjd FROM lanner.alert_rows "
                          "ORDER BY mjd DESC, source_id OFFSET 3")
    assert [r["source_id"] for r in answer.table.to_pylist()] == [
        r["source_id"] for r in by_time[3:10]]
    capped = _run(engine, "SELECT source_id FROM lanner.alert_rows", maxrec=5)
    assert (capped.table.num_rows, capped.overflow) == (5, True)
    whole = _run(engine, "SELECT source_id FROM lanner.alert_rows", maxrec=len(rows))
    assert (whole.table.num_rows, whole.overflow) == (len(rows), False)
    # A shard-local join: an object and its alert rows are on one shard.
    joined = _run(engine, "SELECT o.object_id, a.source_id FROM lanner.objects AS o JOIN "
                          "lanner.alert_rows AS a ON a.object_id = o.object_id WHERE "
                          "a.band = 'g' ORDER BY 2")
    assert [r["source_id"] for r in joined.table.to_pylist()] == sorted(
        r["source_id"] for r in rows if r["band"] == "g")


def test_tap_schema_answers_and_what_is_not_there_yet(archive) -> None:
    engine, _ = archive
    answer = _run(engine, "SELECT table_name, COUNT(*) AS n FROM TAP_SCHEMA.columns "
                          "GROUP BY table_name ORDER BY table_name")
    counts = {r["table_name"]: r["n"] for r in answer.table.to_pylist()}
    assert counts["lanner.objects"] == len(engine.tap.table("lanner.objects").columns)
    logs = _run(engine, "SELECT TOP 1 LOG(100) AS ln, LOG10(100) AS l10, COT(1) AS c, "
                        "MOD(7, 3) AS m FROM TAP_SCHEMA.schemas").table.to_pylist()[0]
    assert logs == pytest.approx({"ln": math.log(100), "l10": 2.0, "c": 1 / math.tan(1),
                                  "m": 1.0})
    with pytest.raises(ADQLError, match="not supported yet"):
        _run(engine, "SELECT COUNT(DISTINCT band) FROM lanner.alert_rows")
    with pytest.raises(ADQLError, match="annotations cannot be joined"):
        _run(engine, "SELECT o.ra FROM lanner.objects AS o JOIN lanner.annotations AS a "
                     "ON a.object_id = o.object_id")
    with pytest.raises(ADQLError, match="unknown table"):
        _run(engine, "SELECT * FROM lanner.dr_objects")
    with pytest.raises(ADQLError, match="not both"):
        _run(engine, "SELECT o.ra FROM lanner.objects AS o, TAP_SCHEMA.schemas AS s")


def test_aggregates_merge_exactly_across_shards(archive) -> None:
    engine, harness = archive
    rows = plain_rows(harness, "SELECT source_id, object_id, mjd, band, psf_flux FROM alert_rows")
    assert engine.shards.count > 1
    bands: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        bands.setdefault(row["band"], []).append(row)
    answer = _run(engine, "SELECT band, COUNT(*) AS n, SUM(psf_flux) AS total, "
                          "AVG(psf_flux) AS mean, MIN(mjd) AS first, MAX(mjd) AS last "
                          "FROM lanner.alert_rows GROUP BY band ORDER BY n DESC, band")
    got = answer.table.to_pylist()
    want = sorted(bands, key=lambda b: (-len(bands[b]), b))
    assert [r["band"] for r in got] == want
    for row in got:
        members = bands[row["band"]]
        fluxes = [m["psf_flux"] for m in members if m["psf_flux"] is not None]
        assert row["n"] == len(members)
        assert row["total"] == pytest.approx(sum(fluxes))
        assert row["mean"] == pytest.approx(sum(fluxes) / len(fluxes))
        assert (row["first"], row["last"]) == (min(m["mjd"] for m in members),
                                               max(m["mjd"] for m in members))
    assert [f.name for f in answer.fields] == ["band", "n", "total", "mean", "first", "last"]
    # HAVING, a global aggregate, DISTINCT, and counts per band per night.
    busy = _run(engine, "SELECT object_id, COUNT(*) AS n FROM lanner.alert_rows "
                        "GROUP BY object_id HAVING COUNT(*) > 3 ORDER BY n DESC, object_id")
    per_object: dict[str, int] = {}
    for row in rows:
        per_object[row["object_id"]] = per_object.get(row["object_id"], 0) + 1
    assert [(r["object_id"], r["n"]) for r in busy.table.to_pylist()] == sorted(
        ((o, n) for o, n in per_object.items() if n > 3), key=lambda x: (-x[1], x[0]))
    total = _run(engine, "SELECT COUNT(*) AS n, MAX(mjd) AS newest FROM lanner.alert_rows")
    assert total.table.to_pylist() == [{"n": len(rows), "newest": max(r["mjd"] for r in rows)}]
    distinct = _run(engine, "SELECT DISTINCT band FROM lanner.alert_rows ORDER BY band")
    assert [r["band"] for r in distinct.table.to_pylist()] == sorted(bands)
    nights = _run(engine, "SELECT band, FLOOR(mjd) AS night, COUNT(*) AS n FROM "
                          "lanner.alert_rows GROUP BY band, FLOOR(mjd) ORDER BY night, band")
    counted: dict[tuple[str, int], int] = {}
    for row in rows:
        key = (row["band"], math.floor(row["mjd"]))
        counted[key] = counted.get(key, 0) + 1
    assert [(r["band"], r["night"], r["n"]) for r in nights.table.to_pylist()] == sorted(
        ((b, n, c) for (b, n), c in counted.items()), key=lambda x: (x[1], x[0]))
    with pytest.raises(ADQLError, match="neither in GROUP BY"):
        _run(engine, "SELECT band, mjd, COUNT(*) FROM lanner.alert_rows GROUP BY band")


def test_annotations_are_read_on_shard_zero(archive) -> None:
    engine, harness = archive
    store = AnnotationStore(harness.catalog.shards)
    objects = sorted(r["object_id"] for r in plain_rows(harness, "SELECT object_id FROM objects"))
    store.add(objects[0], "classifier", "SN Ia", 0.9)
    store.add(objects[0], "classifier", "SN II", 0.6)
    store.add(objects[1], "other", "AGN")
    answer = _run(engine, "SELECT object_id, annotator, version, class, score "
                          "FROM lanner.annotations ORDER BY object_id, version")
    assert [(r["object_id"], r["annotator"], r["version"], r["class"])
            for r in answer.table.to_pylist()] == [
        (objects[0], "classifier", 1, "SN Ia"), (objects[0], "classifier", 2, "SN II"),
        (objects[1], "other", 1, "AGN")]
    counted = _run(engine, "SELECT annotator, COUNT(*) AS n FROM lanner.annotations "
                           "GROUP BY annotator ORDER BY annotator")
    assert counted.table.to_pylist() == [{"annotator": "classifier", "n": 2},
                                         {"annotator": "other", "n": 1}]


def test_a_query_past_its_time_limit_is_stopped_by_the_database(archive) -> None:
    engine, harness = archive
    # An object's alert rows joined with themselves six times: (its rows)**6 combinations,
    # minutes of work for the archive's objects of 20 or more rows, stopped after 0.1 s.
    endless = ("SELECT COUNT(*) AS n FROM lanner.alert_rows AS a "
               + " ".join(f"JOIN lanner.alert_rows AS {t} ON {t}.object_id = a.object_id"
                          for t in "bcdef")
               + " WHERE a.mjd + b.mjd + c.mjd + d.mjd + e.mjd + f.mjd < 0")
    most = max(r["n"] for r in plain_rows(harness, "SELECT COUNT(*) AS n FROM alert_rows "
                                               "GROUP BY object_id"))
    assert most >= 20
    for text in (endless, "SELECT COUNT(*) AS n FROM TAP_SCHEMA.columns AS a, "
                          "TAP_SCHEMA.columns AS b, TAP_SCHEMA.columns AS c "
                          "WHERE a.column_index + b.column_index + c.column_index < 0"):
        started = time.monotonic()
        with pytest.raises(StatementTimeoutError, match=r"time limit of 0\.1 s"):
            engine.run(check(text, engine.tap), 100, seconds=0.1)
        # Stopped by the database, not abandoned: the call returns soon after the limit.
        assert time.monotonic() - started < 5
    if harness.name == "services":  # and MariaDB runs nothing of it any more
        def running(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT info FROM information_schema.processlist "
                           "WHERE command = 'Query' AND id <> CONNECTION_ID() "
                           "AND db = DATABASE()")
            return list(cursor.fetchall())

        assert not any(harness.catalog.shards.all_shards(running, write=False).values())
    # The same engine answers the next query.
    assert _run(engine, "SELECT COUNT(*) AS n FROM lanner.objects").table.to_pylist() == [
        {"n": OBJECTS}]


# -- geometry


@pytest.fixture
def sky(harness, tmp_path) -> Any:
    """Objects around RA 0 on both sides of it, around both poles, and anywhere."""
    rng = np.random.default_rng(47)
    places = [(float(rng.uniform(-4, 4) % 360.0), float(rng.uniform(-4, 4))) for _ in range(40)]
    places += [(float(rng.uniform(0, 360)), float(s * rng.uniform(83, 90)))
               for s in (1, -1) for _ in range(15)]
    places += [(float(rng.uniform(0, 360)), float(rng.uniform(-80, 80))) for _ in range(20)]
    produce_placed(harness, places, first_id=920_000_000_000, seed=53)
    assert harness.ingest_once().archived == len(places)
    engine = Engine(TapSchema(tmp_path / "tap_schema.db"), harness.catalog)
    objects = plain_rows(harness, "SELECT object_id, ra, `dec` FROM objects")
    assert len(objects) == len(places)
    return engine, objects


def _vectors(ra: Any, dec: Any) -> np.ndarray:
    a, d = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _in_box(ra: Any, dec: Any, box: tuple[float, float, float, float]) -> np.ndarray:
    """ADQL's BOX, brute force: astropy's offset frame about the centre puts the arms of the
    box's cross along its equator and prime meridian; a point is inside if the planes through
    it and the frame's poles (for the width) or the frame's east (for the height) make angles
    within half the size with the centre's."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord, SkyOffsetFrame

    centre = SkyCoord(box[0] * u.deg, box[1] * u.deg, frame="icrs")
    offset = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg, frame="icrs").transform_to(
        SkyOffsetFrame(origin=centre))
    lon, lat = offset.lon.radian, offset.lat.radian
    across = np.arctan2(np.cos(lat) * np.sin(lon), np.cos(lat) * np.cos(lon))
    up = np.arctan2(np.sin(lat), np.cos(lat) * np.cos(lon))
    return (np.abs(across) <= math.radians(box[2]) / 2) & (np.abs(up) <= math.radians(box[3]) / 2)


def _in_polygon(ra: Any, dec: Any, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Brute force by winding: the vertices' directions seen from a point turn once around it
    if the boundary separates the point from its antipode; of the two, the point is the one
    in the smaller region, on the side of the vertices' mean direction."""
    p = _vectors(ra, dec)
    v = _vectors(*zip(*vertices, strict=True))
    tangents = v[None, :, :] - (p @ v.T)[:, :, None] * p[:, None, :]
    following = np.roll(tangents, -1, axis=1)
    turns = np.arctan2(np.einsum("ij,ikj->ik", p, np.cross(tangents, following)),
                       np.einsum("ikj,ikj->ik", tangents, following))
    winding = np.abs(turns.sum(axis=1))
    return (winding > math.pi) & (p @ v.mean(axis=0) > 0)


#: Boxes across RA 0, tall and wide, and about the north pole.
BOXES = [(0.5, 0.5, 3.0, 2.0), (359.0, -1.0, 4.0, 6.0), (1.0, 0.0, 7.0, 1.5),
         (45.0, 88.0, 8.0, 5.0), (200.0, -90.0, 10.0, 10.0)]
#: Polygons across RA 0 (a convex one each way round, a concave "L" each way round) and about
#: the south pole.
CONVEX = [(358.0, -2.0), (2.5, -3.0), (3.0, 1.5), (0.5, 3.5), (357.5, 1.0)]
CONCAVE = [(357.0, -3.0), (3.0, -3.0), (3.0, -1.0), (359.0, -1.0), (359.0, 3.0), (357.0, 3.0)]
POLAR = [(0.0, -84.0), (100.0, -85.0), (200.0, -86.0), (290.0, -84.5)]
POLYGONS = [CONVEX, CONVEX[::-1], CONCAVE, CONCAVE[::-1], POLAR, POLAR[::-1]]


def _shape(name: str, values: Any) -> str:
    return f"{name}('ICRS', " + ", ".join(repr(float(x)) for x in values) + ")"


def test_boxes_and_polygons_return_what_a_scan_finds(sky) -> None:
    engine, objects = sky
    ra = np.array([o["ra"] for o in objects])
    dec = np.array([o["dec"] for o in objects])
    ids = np.array([o["object_id"] for o in objects])
    cases = [(_shape("BOX", b), _in_box(ra, dec, b)) for b in BOXES]
    cases += [(_shape("POLYGON", [x for v in p for x in v]), _in_polygon(ra, dec, p))
              for p in POLYGONS]
    import lsst.sphgeom as sg

    convex = sg.ConvexPolygon([sg.UnitVector3d(sg.LonLat.fromDegrees(a, d)) for a, d in CONVEX])
    assert [convex.contains(sg.UnitVector3d(sg.LonLat.fromDegrees(a, d)))
            for a, d in zip(ra, dec, strict=True)] == cases[len(BOXES)][1].tolist()
    for shape, inside in cases:
        want = sorted(ids[inside].tolist())
        assert 0 < len(want) < len(objects), shape
        text = ("SELECT object_id FROM lanner.objects WHERE 1 = CONTAINS(POINT('ICRS', ra, "
                f"dec), {shape})")
        assert sorted(r["object_id"] for r in _run(engine, text).table.to_pylist()) == want, shape
        flipped = (f"SELECT object_id FROM lanner.objects WHERE INTERSECTS({shape}, "
                   "POINT('ICRS', ra, dec)) = 1")
        assert sorted(r["object_id"] for r in _run(engine, flipped).table.to_pylist()) == want
        outside = (f"SELECT COUNT(*) AS n FROM lanner.objects WHERE 0 = CONTAINS(POINT('ICRS', "
                   f"ra, dec), {shape})")
        assert _run(engine, outside).table.to_pylist() == [{"n": len(objects) - len(want)}]
        # Pruned to the chunks of a cone holding the region, on their shards only.
        pruned, shards = engine._prune(check(text, engine.tap).tree.copy())
        assert "chunk_id IN" in pruned.sql()
        assert shards is not None
        assert set(shards) <= set(range(engine.shards.count))


def test_circles_intersect_and_contain_circles(sky) -> None:
    engine, objects = sky
    far = {o["object_id"]: separation_deg(o["ra"], o["dec"], 359.0, 1.0) for o in objects}
    near = _run(engine, "SELECT object_id FROM lanner.objects WHERE 1 = INTERSECTS("
                        "CIRCLE('ICRS', 359.0, 1.0, 1.5), CIRCLE('ICRS', ra, dec, 0.5))")
    want = sorted(i for i, d in far.items() if d <= 2.0)
    assert 0 < len(want) < len(objects)
    assert sorted(r["object_id"] for r in near.table.to_pylist()) == want
    inner = _run(engine, "SELECT object_id FROM lanner.objects WHERE 1 = CONTAINS("
                         "CIRCLE('ICRS', ra, dec, 0.5), CIRCLE('ICRS', 359.0, 1.0, 3))")
    want = sorted(i for i, d in far.items() if d + 0.5 <= 3.0)
    assert 0 < len(want) < len(objects)
    assert sorted(r["object_id"] for r in inner.table.to_pylist()) == want


def test_area_centroid_and_coordsys_of_literal_regions(sky) -> None:
    engine, _ = sky
    box, polygon = (0.5, 0.5, 30.0, 20.0), CONCAVE
    text = ("SELECT TOP 1 AREA(" + _shape("BOX", box) + ") AS box, AREA("
            + _shape("POLYGON", [x for v in polygon for x in v]) + ") AS polygon, "
            "AREA(CIRCLE('ICRS', 10, 20, 2)) AS circle, AREA(POINT('ICRS', 1, 2)) AS point, "
            "AREA(CIRCLE('ICRS', ra, dec, 2)) AS cap, "
            "COORD1(CENTROID(" + _shape("POLYGON", [x for v in polygon for x in v]) + ")) AS a, "
            "COORD2(CENTROID(" + _shape("POLYGON", [x for v in polygon for x in v]) + ")) AS d, "
            "COORD2(CENTROID(" + _shape("BOX", box) + ")) AS box_d, "
            "COORDSYS(POINT('ICRS', ra, dec)) AS frame FROM lanner.objects")
    got = _run(engine, text).table.to_pylist()[0]
    # Quadrature on a fine grid of RA and declination, each cell weighted by its area.
    def grid(ra0: float, dec0: float, half: float, step: float) -> tuple[Any, Any, Any]:
        ras, decs = np.meshgrid(np.arange(ra0 - half, ra0 + half, step) + step / 2,
                                np.arange(dec0 - half, dec0 + half, step) + step / 2)
        weights = np.cos(np.radians(decs)) * step * step
        return ras.ravel() % 360.0, decs.ravel(), weights.ravel()

    ras, decs, weights = grid(0.5, 0.5, 20.0, 0.02)
    assert got["box"] == pytest.approx(weights[_in_box(ras, decs, box)].sum(), rel=2e-3)
    ras, decs, weights = grid(0.0, 0.0, 4.0, 0.005)
    inside = _in_polygon(ras, decs, polygon)
    assert got["polygon"] == pytest.approx(weights[inside].sum(), rel=2e-3)
    assert got["polygon"] == pytest.approx(20.0, rel=0.01)  # 6 x 2 + 2 x 4 square degrees
    cap = 2 * math.pi * (1 - math.cos(math.radians(2))) * (180 / math.pi) ** 2
    assert (got["circle"], got["cap"], got["point"]) == (pytest.approx(cap),
                                                         pytest.approx(cap), 0)
    mean = (_vectors(ras[inside], decs[inside]) * weights[inside, None]).sum(axis=0)
    assert separation_deg(got["a"], got["d"], math.degrees(math.atan2(mean[1], mean[0])) % 360.0,
                     math.degrees(math.asin(mean[2] / np.linalg.norm(mean)))) < 1e-3
    assert (got["box_d"], got["frame"]) == (0.5, "ICRS")


# -- near-neighbour joins

RADIUS = 30.0 / 3600.0


def _edges() -> list[tuple[float, float]]:
    """Places on chunk edges: RA 0, a stripe edge, an RA edge inside a stripe, the corner of
    both, and a stripe edge near the north pole."""
    from tests.support.backends import CHUNKER

    stripe = 180.0 / CHUNKER.num_stripes
    dec_edge = -90.0 + 43 * stripe
    lo, hi = 0.001, 30.0  # the first RA edge of the equator's stripe, by bisection
    start = CHUNKER.locate_one(lo, 0.5)
    assert CHUNKER.locate_one(hi, 0.5) != start
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if CHUNKER.locate_one(mid, 0.5) == start else (lo, mid)
    return [(0.0, 0.3), (10.0, dec_edge), (hi, 0.5), (hi, dec_edge),
            (123.0, -90.0 + 84 * stripe)]


@pytest.fixture
def pairs(harness, tmp_path) -> Any:
    """Clusters of objects within 25 arcseconds of chunk edges, and others anywhere."""
    rng = np.random.default_rng(61)
    places = []
    for ra, dec in _edges():
        for _ in range(7):
            offset = rng.uniform(-25, 25, size=2) / 3600.0
            places.append((float((ra + offset[0] / math.cos(math.radians(dec))) % 360.0),
                           float(dec + offset[1])))
    places += [(float(rng.uniform(0, 360)), float(rng.uniform(-70, 70))) for _ in range(25)]
    produce_placed(harness, places, first_id=930_000_000_000, seed=67)
    assert harness.ingest_once().archived == len(places)
    engine = Engine(TapSchema(tmp_path / "tap_schema.db"), harness.catalog)
    return engine, harness


def _near(left: list[dict[str, Any]], right: list[dict[str, Any]], key: str,
          radius: float = RADIUS) -> list[tuple[Any, Any]]:
    """All pairs within the radius, brute force."""
    return sorted((a["object_id"], b[key]) for a in left for b in right
                  if separation_deg(a["ra"], a["dec"], b["ra"], b["dec"]) <= radius)


def test_near_neighbour_joins_find_every_pair_once(pairs) -> None:
    engine, harness = pairs
    objects = plain_rows(harness, "SELECT object_id, ra, `dec`, chunk_id FROM objects")
    want = _near(objects, objects, "object_id")
    chunk = {o["object_id"]: o["chunk_id"] for o in objects}
    count = engine.shards.count
    across = [(a, b) for a, b in want if chunk[a] != chunk[b]]
    assert any(chunk[a] % count != chunk[b] % count for a, b in across)
    assert len(want) > len(objects) + 20  # more than each object with itself
    point, circle = "POINT('ICRS', b.ra, b.dec)", f"CIRCLE('ICRS', a.ra, a.dec, {RADIUS!r})"
    queries = [
        f"SELECT a.object_id AS x, b.object_id AS y FROM lanner.objects AS a JOIN "
        f"lanner.objects AS b ON 1 = CONTAINS({point}, {circle})",
        f"SELECT a.object_id AS x, b.object_id AS y FROM lanner.objects AS a, lanner.objects "
        f"AS b WHERE DISTANCE(POINT('ICRS', a.ra, a.dec), {point}) <= {RADIUS!r}",
        f"SELECT a.object_id AS x, b.object_id AS y FROM lanner.objects AS b JOIN "
        f"lanner.objects AS a ON {RADIUS!r} >= DISTANCE(a.ra, a.dec, b.ra, b.dec)",
    ]
    for text in queries:
        got = sorted((r["x"], r["y"]) for r in _run(engine, text).table.to_pylist())
        assert got == want, text
    counted = _run(engine, "SELECT COUNT(*) AS n FROM lanner.objects AS a JOIN lanner.objects "
                           f"AS b ON 1 = CONTAINS({point}, {circle}) WHERE a.object_id <> "
                           "b.object_id")
    assert counted.table.to_pylist() == [{"n": sum(1 for a, b in want if a != b)}]
    # A LEFT JOIN keeps the objects with no other object near.
    lonely = _run(engine, "SELECT a.object_id AS x, b.object_id AS y FROM lanner.objects AS a "
                          f"LEFT JOIN lanner.objects AS b ON 1 = CONTAINS({point}, {circle}) "
                          "AND a.object_id <> b.object_id")
    others = [(a, b) for a, b in want if a != b]
    alone = {o["object_id"] for o in objects} - {a for a, _ in others}
    assert alone
    assert sorted(((r["x"], r["y"]) for r in lonely.table.to_pylist()),
                  key=lambda p: (p[0], p[1] or "")) == sorted(
        others + [(a, None) for a in alone], key=lambda p: (p[0], p[1] or ""))
    # Narrowed by a region on one table: the pairs whose first member is in it.
    ra0, dec0 = _edges()[2]
    box = f"BOX('ICRS', {ra0!r}, {dec0!r}, 0.02, 0.02)"
    boxed = _run(engine, "SELECT a.object_id AS x, b.object_id AS y FROM lanner.objects AS a "
                         f"JOIN lanner.objects AS b ON DISTANCE(POINT('ICRS', a.ra, a.dec), "
                         f"{point}) <= {RADIUS!r} WHERE 1 = CONTAINS({point}, {box})")
    inside = {o["object_id"] for o in objects
              if _in_box([o["ra"]], [o["dec"]], (ra0, dec0, 0.02, 0.02))[0]}
    assert inside
    assert sorted((r["x"], r["y"]) for r in boxed.table.to_pylist()) == [
        (a, b) for a, b in want if b in inside]


def test_objects_near_other_objects_alert_rows(pairs) -> None:
    engine, harness = pairs
    objects = plain_rows(harness, "SELECT object_id, ra, `dec` FROM objects")
    rows = plain_rows(harness, "SELECT source_id, object_id, ra, `dec` FROM alert_rows")
    # Source ids repeat between the simulator's objects: a row is told apart by its object.
    want = sorted((o["object_id"], r["source_id"]) for o in objects for r in rows
                  if r["object_id"] != o["object_id"]
                  and separation_deg(o["ra"], o["dec"], r["ra"], r["dec"]) <= RADIUS)
    assert want
    got = _run(engine, "SELECT o.object_id AS x, s.source_id AS y FROM lanner.objects AS o "
                       "JOIN lanner.alert_rows AS s ON DISTANCE(POINT('ICRS', o.ra, o.dec), "
                       f"POINT('ICRS', s.ra, s.dec)) <= {RADIUS!r} WHERE s.object_id <> "
                       "o.object_id ORDER BY x, y")
    assert [(r["x"], r["y"]) for r in got.table.to_pylist()] == want


@pytest.mark.parametrize(("text", "message"), [
    ("SELECT a.ra FROM lanner.objects AS a JOIN lanner.objects AS b ON a.n_detections = "
     "b.n_detections", "joined on object_id"),
    ("SELECT a.ra FROM lanner.objects AS a JOIN lanner.objects AS b ON DISTANCE(POINT('ICRS', "
     "a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < 0.1", "at most 60 arcseconds"),
    ("SELECT a.ra FROM lanner.objects AS a JOIN lanner.objects AS b ON DISTANCE(POINT('ICRS', "
     "a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < b.ra", "joined on object_id"),
    ("SELECT a.ra FROM lanner.objects AS a FULL JOIN lanner.objects AS b ON DISTANCE("
     "POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < 0.001", "not FULL"),
    ("SELECT a.ra FROM lanner.objects AS a, lanner.objects AS b, lanner.alert_rows AS c WHERE "
     "DISTANCE(POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < 0.001 AND "
     "c.object_id = a.object_id", "joined on object_id"),
])
def test_joins_that_would_lose_pairs_are_refused(archive, text: str, message: str) -> None:
    engine, _ = archive
    with pytest.raises(ADQLError, match=message):
        _run(engine, text)
