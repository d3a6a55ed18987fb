"""Reference catalogs over TAP (`broker.tap.refcats`), on each backend: TAP_SCHEMA describes
every loaded catalog with the units and UCDs its load recorded; a cone on a catalog, and a
near-neighbour join of the archive's objects with it, equal what brute force finds in the rows
read plainly, across chunk and shard edges; a reload is seen by the next query, and a query
that read the replaced version is refused rather than answered from it."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broker.data import CATALOGS
from broker.domain.context import offset_by
from broker.exceptions import CatalogReloadedError
from broker.storage.refcat import table_names
from broker.tap import refcats
from broker.tap.adql import ADQLError, check
from broker.tap.execute import Engine
from broker.tap.refcats import TapSource
from tests.support.alerts import produce_placed
from tests.support.backends import CHUNKER, plain_rows, separation_deg
from tests.support.catalogs import HIPPARCOS

RADIUS = 30.0 / 3600.0
#: Regions whose Hipparcos stars are loaded: one around (150, 10), one across RA 0.
CENTRES = ((150.0, 10.0), (0.5, 0.3))
REGION_DEG = 2.5
STEP_DEG = 25.0 / 3600.0


def _within(ra: np.ndarray, dec: np.ndarray, centre: tuple[float, float],
            radius: float) -> np.ndarray:
    return np.array([separation_deg(a, d, *centre) <= radius for a, d in zip(ra, dec, strict=True)])


@cache
def _stars() -> tuple[pa.Table, dict[int, float]]:
    """The Hipparcos stars of the regions and a dozen others, each 25 arcseconds from a chunk
    edge, with the bearing that crosses it (by HIP)."""
    table = pq.read_table(HIPPARCOS)
    ra = table.column("ra").to_numpy()
    dec = table.column("dec").to_numpy()
    home = CHUNKER.locate(ra, dec)
    crossing = np.full(len(ra), np.nan)
    for bearing in range(0, 360, 45):
        moved = CHUNKER.locate(*offset_by(ra, dec, float(bearing), STEP_DEG))
        crossing = np.where(np.isnan(crossing) & (moved != home), float(bearing), crossing)
    near = np.zeros(len(ra), dtype=bool)
    for centre in CENTRES:
        box = (np.abs(dec - centre[1]) < REGION_DEG) & (
            np.minimum(np.abs(ra - centre[0]), 360 - np.abs(ra - centre[0])) < 3 * REGION_DEG)
        near[np.nonzero(box)[0]] = _within(ra[box], dec[box], centre, REGION_DEG)
    rng = np.random.default_rng(71)
    edge = rng.choice(np.nonzero(~np.isnan(crossing) & ~near)[0], 12, replace=False)
    keep = np.union1d(np.nonzero(near)[0], edge)
    hip = table.column("hip").to_numpy()
    return table.take(pa.array(keep)), {int(hip[i]): float(crossing[i]) for i in edge}


def _load(harness: Any, table: pa.Table, *, described: bool = True) -> None:
    harness.refcats.load("hipparcos", table.to_batches(max_chunksize=500), "hip", "ra", "dec",
                         kind="star", description=CATALOGS[0].description if described
                         else None)


@pytest.fixture
def sky(harness, tmp_path) -> Any:
    """The stars loaded as the catalog ``hipparcos``; objects 25 arcseconds from the edge
    stars across their chunk edge, within 20 arcseconds of 15 stars of the regions, and 10
    anywhere in the regions; the TAP source over both."""
    stars, crossing = _stars()
    _load(harness, stars)
    rng = np.random.default_rng(73)
    hip = stars.column("hip").to_numpy()
    ra, dec = stars.column("ra").to_numpy(), stars.column("dec").to_numpy()
    places = []
    for i in np.nonzero(np.isin(hip, list(crossing)))[0]:
        moved = offset_by(ra[i], dec[i], crossing[int(hip[i])], STEP_DEG)
        places.append((float(moved[0]) % 360.0, float(moved[1])))
    inner = np.nonzero(~np.isin(hip, list(crossing)))[0]
    for i in rng.choice(inner, 15, replace=False):
        moved = offset_by(ra[i], dec[i], rng.uniform(0, 360), rng.uniform(0, 20) / 3600.0)
        places.append((float(moved[0]) % 360.0, float(moved[1])))
    for k in range(10):
        centre = CENTRES[k % 2]
        moved = offset_by(centre[0], centre[1], rng.uniform(0, 360), rng.uniform(0, 2))
        places.append((float(moved[0]) % 360.0, float(moved[1])))
    produce_placed(harness, places, first_id=940_000_000_000, seed=79)
    assert harness.ingest_once().archived == len(places)
    source = TapSource(folder=tmp_path / "tap", catalog=harness.catalog,
                       refcats=harness.refcats)
    try:
        yield source, harness, stars
    finally:
        source.close()


def _stored(harness: Any) -> list[dict[str, Any]]:
    """The catalog's rows as stored, read plainly from its current version's table."""
    [entry] = [e for e in harness.refcats.list() if e["name"] == "hipparcos"]
    table = table_names("hipparcos", entry["version"])[0]
    return plain_rows(harness, f"SELECT id, ra, `dec`, chunk_id, hpmag FROM {table}")


def _run(engine: Engine, text: str, maxrec: int = 100_000) -> list[dict[str, Any]]:
    answer = engine.run(check(text, engine.tap), maxrec)
    assert not answer.overflow
    return answer.table.to_pylist()


def test_tap_schema_describes_each_loaded_catalog(sky) -> None:
    source, harness, stars = sky
    engine = source.engine()
    [entry] = harness.refcats.list()
    assert entry["metadata"]["columns"]["pmra"] == {
        "unit": "mas/yr", "ucd": "pos.pm;pos.eq.ra",
        "description": "Proper motion in RA (mu_alpha cos delta)."}
    table = engine.tap.table("refcat.hipparcos")
    assert table is not None
    assert table.schema == "refcat"
    assert [c.name for c in table.columns] == [
        *(name for name, _ in entry["columns"]), "chunk_id", "hpx29"]
    described = {c.name: (c.datatype, c.unit, c.ucd, c.principal) for c in table.columns}
    assert described["id"] == ("long", None, "meta.id;meta.main", True)
    assert described["ra"] == ("double", "deg", "pos.eq.ra;meta.main", True)
    assert described["dec"] == ("double", "deg", "pos.eq.dec;meta.main", True)
    assert described["plx"] == ("double", "mas", "pos.parallax.trig", False)
    assert described["sn"][0] == "long"
    assert described["hpx29"] == ("long", None, "pos.healpix", False)
    assert table.column("ra").description == "ICRS right ascension at epoch J1991.25."
    assert f"{stars.num_rows:,} rows, version 1" in (table.description or "")
    # The same through ADQL over TAP_SCHEMA, beside the archive's tables.
    rows = _run(engine, "SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns WHERE "
                        "table_name = 'refcat.hipparcos'")
    assert {r["column_name"]: (r["unit"], r["ucd"]) for r in rows}["pmdec"] == (
        "mas/yr", "pos.pm;pos.eq.dec")
    schemas = _run(engine, "SELECT schema_name FROM TAP_SCHEMA.schemas ORDER BY schema_index")
    assert [r["schema_name"] for r in schemas] == ["lanner", "refcat", "TAP_SCHEMA"]
    assert engine.tap.table("lanner.objects") is not None


def test_a_cone_on_a_catalog_equals_a_scan(sky) -> None:
    source, harness, stars = sky
    engine = source.engine()
    stored = _stored(harness)
    assert len(stored) == stars.num_rows
    for ra0, dec0 in CENTRES:
        want = sorted(s["id"] for s in stored
                      if separation_deg(s["ra"], s["dec"], ra0, dec0) <= 1.5)
        assert 0 < len(want) < len(stored)
        text = (f"SELECT id, ra, dec, hpmag FROM refcat.hipparcos WHERE 1 = CONTAINS("
                f"POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra0}, {dec0}, 1.5)) ORDER BY id")
        got = _run(engine, text)
        assert [r["id"] for r in got] == want, (ra0, dec0)
        plain = {s["id"]: s["hpmag"] for s in stored}
        assert [r["hpmag"] for r in got] == pytest.approx([plain[i] for i in want])
        # Narrowed to the cone's chunks and HEALPix ranges, on the version's own table.
        checked = check(text, engine.tap)
        with refcats.pinned(engine, checked) as (view, renamed):
            pruned, shards = view._prune(renamed.tree.copy())
        assert "rc_hipparcos_v1 AS hipparcos" in pruned.sql()
        assert "chunk_id IN" in pruned.sql()
        assert "hpx29 >=" in pruned.sql()
        assert shards is not None
    # Unqualified, aggregated, and its FIELDs as TAP_SCHEMA has them.
    [counted] = _run(engine, "SELECT COUNT(*) AS n, MAX(hpmag) AS faintest FROM hipparcos")
    assert counted == {"n": len(stored),
                       "faintest": pytest.approx(max(s["hpmag"] for s in stored
                                                     if s["hpmag"] is not None))}
    answer = engine.run(check("SELECT TOP 1 id, ra FROM refcat.hipparcos", engine.tap), 10)
    assert [(f.name, f.unit, f.ucd) for f in answer.fields] == [
        ("id", None, "meta.id;meta.main"), ("ra", "deg", "pos.eq.ra;meta.main")]


def test_objects_cross_matched_with_a_catalog_equal_all_pairs(sky) -> None:
    source, harness, _ = sky
    engine = source.engine()
    objects = plain_rows(harness, "SELECT object_id, ra, `dec`, chunk_id FROM objects")
    stored = _stored(harness)
    want = sorted((o["object_id"], s["id"]) for o in objects for s in stored
                  if separation_deg(o["ra"], o["dec"], s["ra"], s["dec"]) <= RADIUS)
    assert len(want) >= 25
    chunk = {o["object_id"]: o["chunk_id"] for o in objects}
    star_chunk = {s["id"]: s["chunk_id"] for s in stored}
    count = engine.shards.count
    across = [(o, s) for o, s in want if chunk[o] != star_chunk[s]]
    assert len(across) >= 6
    assert any(chunk[o] % count != star_chunk[s] % count for o, s in across)
    point, circle = "POINT('ICRS', s.ra, s.dec)", f"CIRCLE('ICRS', o.ra, o.dec, {RADIUS!r})"
    for text in (
        f"SELECT o.object_id AS x, s.id AS y FROM lanner.objects AS o JOIN refcat.hipparcos "
        f"AS s ON 1 = CONTAINS({point}, {circle})",
        f"SELECT o.object_id AS x, s.id AS y FROM refcat.hipparcos AS s JOIN lanner.objects "
        f"AS o ON DISTANCE(POINT('ICRS', o.ra, o.dec), {point}) <= {RADIUS!r}",
        f"SELECT o.object_id AS x, s.id AS y FROM lanner.objects AS o, refcat.hipparcos AS s "
        f"WHERE {RADIUS!r} >= DISTANCE(o.ra, o.dec, s.ra, s.dec)",
    ):
        got = sorted((r["x"], r["y"]) for r in _run(engine, text))
        assert got == want, text
    # Separations and the catalog's columns come along.
    rows = _run(engine, "SELECT o.object_id AS x, s.id AS y, s.hpmag AS mag, DISTANCE(POINT("
                        f"'ICRS', o.ra, o.dec), {point}) * 3600 AS sep FROM lanner.objects AS o "
                        f"JOIN refcat.hipparcos AS s ON 1 = CONTAINS({point}, {circle}) "
                        "ORDER BY sep")
    position = {o["object_id"]: (o["ra"], o["dec"]) for o in objects}
    by_id = {s["id"]: s for s in stored}
    assert sorted((r["x"], r["y"]) for r in rows) == want
    assert [r["sep"] for r in rows] == sorted(r["sep"] for r in rows)
    for r in rows:
        star = by_id[r["y"]]
        assert r["sep"] == pytest.approx(
            separation_deg(*position[r["x"]], star["ra"], star["dec"]) * 3600, abs=1e-6)
        assert r["mag"] == pytest.approx(star["hpmag"])
    # Objects with no star near are kept by a LEFT JOIN; a region on the objects narrows.
    left = _run(engine, "SELECT o.object_id AS x, s.id AS y FROM lanner.objects AS o LEFT "
                        f"JOIN refcat.hipparcos AS s ON 1 = CONTAINS({point}, {circle})")
    alone = {o["object_id"] for o in objects} - {o for o, _ in want}
    assert alone
    assert sorted((r["x"], r["y"] or 0) for r in left) == sorted(
        want + [(o, 0) for o in alone])
    ra0, dec0 = CENTRES[1]
    inside = {o["object_id"] for o in objects
              if separation_deg(o["ra"], o["dec"], ra0, dec0) <= REGION_DEG}
    assert inside
    narrowed = _run(engine, "SELECT o.object_id AS x, s.id AS y FROM lanner.objects AS o JOIN "
                            f"refcat.hipparcos AS s ON 1 = CONTAINS({point}, {circle}) WHERE "
                            f"1 = CONTAINS(POINT('ICRS', o.ra, o.dec), CIRCLE('ICRS', {ra0}, "
                            f"{dec0}, {REGION_DEG}))")
    assert sorted((r["x"], r["y"]) for r in narrowed) == [p for p in want if p[0] in inside]
    [counted] = _run(engine, "SELECT COUNT(*) AS n FROM lanner.objects AS o JOIN "
                             f"refcat.hipparcos AS s ON 1 = CONTAINS({point}, {circle})")
    assert counted == {"n": len(want)}


def test_a_reload_is_seen_by_the_next_query(sky) -> None:
    source, harness, stars = sky
    before = source.engine()
    assert source.engine() is before  # nothing changed: the same TAP_SCHEMA
    text = "SELECT COUNT(*) AS n FROM refcat.hipparcos"
    checked = check(text, before.tap)
    assert _run(before, text) == [{"n": stars.num_rows}]
    fewer = stars.select(["hip", "ra", "dec", "hpmag"]).slice(0, 40)
    _load(harness, fewer, described=False)
    after = source.engine()
    assert after is not before
    assert _run(after, text) == [{"n": 40}]
    table = after.tap.table("refcat.hipparcos")
    assert [c.name for c in table.columns] == ["id", "ra", "dec", "hpmag", "chunk_id", "hpx29"]
    assert "40 rows, version 2" in (table.description or "")
    # Described by this load alone: the position as always, hpmag as the input says nothing.
    assert (table.column("ra").unit, table.column("ra").ucd) == ("deg", "pos.eq.ra;meta.main")
    assert (table.column("hpmag").unit, table.column("hpmag").ucd) == (None, None)
    with pytest.raises(ADQLError, match="unknown column plx"):
        check("SELECT plx FROM refcat.hipparcos", after.tap)
    assert not [t for t in harness.refcats.tables() if t.startswith("rc_hipparcos_v1")]
    # A query pinned to version 1 (checked before the reload) is refused, not answered from
    # what is left of it.
    with pytest.raises(CatalogReloadedError, match="hipparcos version 1 is gone: version 2"):
        before.run(checked, 100)


def test_what_is_refused_with_catalogs(sky) -> None:
    source, harness, _ = sky
    harness.refcats.load("linked", [pa.record_batch({
        "i": [1, 2], "ra": [150.0, 150.1], "dec": [10.0, 10.1], "object_id": ["a", "b"]})],
        "i", "ra", "dec")
    engine = source.engine()
    for text, said in [
        ("SELECT s.id FROM refcat.hipparcos AS s JOIN TAP_SCHEMA.tables AS t ON "
         "t.table_name = 'x'", "either TAP_SCHEMA or the archive's tables"),
        ("SELECT s.id FROM refcat.hipparcos AS s JOIN lanner.annotations AS a ON "
         "a.object_id = 'x'", "lanner.annotations cannot be joined with the reference catalogs"),
        ("SELECT o.object_id FROM lanner.objects AS o JOIN refcat.hipparcos AS s ON s.id = "
         "o.n_detections", "joined on object_id"),
        ("SELECT o.object_id FROM lanner.objects AS o JOIN refcat.linked AS s ON s.object_id = "
         "o.object_id", "a reference catalog's object_id is its own column"),
        ("SELECT o.object_id FROM lanner.objects AS o JOIN refcat.hipparcos AS s ON DISTANCE("
         "POINT('ICRS', o.ra, o.dec), POINT('ICRS', s.ra, s.dec)) < 0.1", "at most 60"),
    ]:
        with pytest.raises(ADQLError, match=said):
            engine.run(check(text, engine.tap), 10)
    with pytest.raises(ADQLError, match=r"unknown table refcat\.nosuch"):
        check("SELECT id FROM refcat.nosuch", engine.tap)


def test_catalogs_without_recorded_notes_are_described_by_felis(tmp_path) -> None:
    """The data release's catalog, made by row-level changes (nothing recorded), takes its
    felis table's notes; any catalog has its position's; notes felis refuses (a registry
    edited by hand) are left out rather than failing TAP_SCHEMA."""
    entry = {"name": "dr_objects", "rows": 2, "version": 4, "loaded_at": "2026-01-01",
             "kind": "generic", "metadata": None,
             "columns": [["id", "int64"], ["ra", "float64"], ["dec", "float64"],
                         ["g_psfflux", "float64"], ["refband", "text"]]}
    other = {**entry, "name": "mine", "columns": [["id", "text"], ["ra", "float64"],
                                                   ["dec", "float64"], ["v", "float64"]],
             "metadata": {"columns": {"v": {"unit": "not a unit at all"}}}}
    tap = refcats.build(tmp_path / "tap_schema.db", [entry, other])
    dr = tap.table("refcat.dr_objects")
    assert dr is not None
    assert (dr.column("g_psfflux").unit, dr.column("g_psfflux").ucd) == ("nJy", "phot.flux")
    assert dr.column("refband").datatype == "char"
    assert dr.column("ra").description.startswith("Fiducial ICRS right ascension")
    assert "data-release object catalog" in (dr.description or "")
    mine = tap.table("refcat.mine")
    assert mine is not None
    assert (mine.column("id").datatype, mine.column("id").arraysize) == ("char", "191*")
    assert mine.column("v").unit is None
    assert (mine.column("ra").unit, mine.column("ra").ucd) == ("deg", "pos.eq.ra;meta.main")
    assert tap.catalogs["refcat.dr_objects"] == refcats.Pinned(
        "dr_objects", 4, "2026-01-01", "rc_dr_objects_v4")
