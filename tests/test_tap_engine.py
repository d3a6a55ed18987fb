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


def _plain(harness: Any, sql: str) -> list[dict[str, Any]]:
    """Rows read from every shard by plain SQL, no rewriting."""
    def work(cursor: Any) -> list[dict[str, Any]]:
        cursor.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    return [row for rows in harness.catalog.shards.all_shards(work, write=False).values()
            for row in rows]


def _distance(a1: float, d1: float, a2: float, d2: float) -> float:
    r = math.radians
    h = (math.sin((r(d2) - r(d1)) / 2) ** 2
         + math.cos(r(d1)) * math.cos(r(d2)) * math.sin((r(a2) - r(a1)) / 2) ** 2)
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def _run(engine: Engine, text: str, maxrec: int = 10_000) -> Any:
    return engine.run(check(text, engine.tap), maxrec)


#: Cones: around CENTRE, and across RA 0 from either side.
CONES = [(*CENTRE, 1.5), (0.4, 0.5, 1.5), (359.7, -0.5, 2.0)]


def test_cones_return_what_a_scan_finds(archive) -> None:
    engine, harness = archive
    objects = _plain(harness, "SELECT object_id, ra, `dec` FROM objects")
    assert len(objects) == OBJECTS
    for ra0, dec0, radius in CONES:
        want = sorted(o["object_id"] for o in objects
                      if _distance(o["ra"], o["dec"], ra0, dec0) <= radius)
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
            assert row["d"] == pytest.approx(_distance(row["ra"], row["dec"], ra0, dec0),
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
    rows = _plain(harness, "SELECT source_id, object_id, mjd, band FROM alert_rows")
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
    rows = _plain(harness, "SELECT source_id, object_id, mjd, band, psf_flux FROM alert_rows")
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
    objects = sorted(r["object_id"] for r in _plain(harness, "SELECT object_id FROM objects"))
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
    # 60**5 (7.8e8) combinations: minutes of work, stopped after a tenth of a second.
    endless = ("SELECT COUNT(*) AS n FROM lanner.objects AS a, lanner.objects AS b, "
               "lanner.objects AS c, lanner.objects AS d, lanner.objects AS e "
               "WHERE a.ra + b.ra + c.ra + d.ra + e.ra > 1e9")
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
                           "WHERE command = 'Query' AND info LIKE '%%AS e%%' "
                           "AND id <> CONNECTION_ID()")
            return list(cursor.fetchall())

        assert not any(harness.catalog.shards.all_shards(running, write=False).values())
    # The same engine answers the next query.
    assert _run(engine, "SELECT COUNT(*) AS n FROM lanner.objects").table.to_pylist() == [
        {"n": OBJECTS}]
