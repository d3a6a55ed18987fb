"""The enrich stage over each backend: real catalogs, alerts placed where the context is known,
idempotent results, one internal.enriched record per alert, reloads picked up."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from broker.domain.catalogs import ShapeSpec
from broker.domain.sky import angular_separation_deg
from broker.simulator import AlertSimulator
from broker.storage.refcat import open_catalog_file
from broker.streaming import lanner_schemas, wire
from tests.support.alerts import offset, placed
from tests.support.catalogs import HIPPARCOS, OPENNGC, SIRIUS

SCHEMA_ID = 1101


def _galaxy(table: pa.Table, name: str) -> dict[str, Any]:
    return table.filter(pa.compute.equal(table.column("id"), name)).to_pylist()[0]


@pytest.fixture
def loaded_catalogs(harness) -> Any:
    """Hipparcos as stars and OpenNGC as galaxies (with their ellipses) on the harness."""
    source = open_catalog_file(HIPPARCOS)
    try:
        harness.refcats.load("hipparcos", source.batches, "hip", "ra", "dec", kind="star")
    finally:
        source.close()
    source = open_catalog_file(OPENNGC)
    try:
        harness.refcats.load("openngc", source.batches, "id", "ra_deg", "dec_deg", kind="galaxy",
                             shape=ShapeSpec("majax_arcmin", "minax_arcmin", "pa_deg"))
    finally:
        source.close()
    return pacsv.read_csv(OPENNGC)


def _empty_sky(ngc: pa.Table) -> tuple[float, float]:
    """A position with no Hipparcos star within 10'' and no OpenNGC object within 5'."""
    hip = pq.read_table(HIPPARCOS, columns=["ra", "dec"])
    for ra, dec in ((201.0, -61.3), (33.3, 44.4), (150.5, 2.2), (300.1, -20.2)):
        near_star = angular_separation_deg(
            ra, dec, hip.column("ra").to_numpy(), hip.column("dec").to_numpy()).min() * 3600
        near_ngc = np.nanmin(angular_separation_deg(
            ra, dec, ngc.column("ra_deg").to_numpy(zero_copy_only=False),
            ngc.column("dec_deg").to_numpy(zero_copy_only=False))) * 3600
        if near_star > 10 and near_ngc > 300:
            return ra, dec
    raise AssertionError("no empty position among the candidates")


def test_contexts_of_placed_alerts(harness, loaded_catalogs, tmp_path) -> None:
    ngc = loaded_catalogs
    m31 = _galaxy(ngc, "NGC0224")
    small = _galaxy(ngc, "IC0002")  # 0.98' x 0.32', PA 142: semi-major 29.4''
    along = math.radians(small["pa_deg"])
    off_ra, off_dec = offset(small["ra_deg"], small["dec_deg"],
                              0.6 * 29.4 * math.sin(along), 0.6 * 29.4 * math.cos(along))
    places = {
        "star": (*offset(SIRIUS[1], SIRIUS[2], 0.3, 0.2), "variable_star"),
        "nucleus": (m31["ra_deg"], m31["dec_deg"], "nuclear"),
        "disk": (off_ra, off_dec, "supernova_like"),
        "empty": (*_empty_sky(ngc), "orphan"),
    }
    records = list(AlertSimulator(schema="11.1", seed=77, cutouts=False).packets(len(places)))
    object_ids = {}
    for i, (name, (ra, dec, _)) in enumerate(places.items()):
        object_ids[name] = 900_000_000_000 + i
        packet = wire.encode(placed(records[i], object_ids[name], ra, dec), SCHEMA_ID)
        harness.produce(harness.topics.lsst, packet, key=str(object_ids[name]).encode())
    assert harness.ingest_once().archived == len(places)
    report = harness.enrich_once()
    assert (report.enriched, report.dead_lettered) == (len(places), 0)

    for name, (_, _, expected) in places.items():
        context = harness.catalog.context(str(object_ids[name]))
        assert context is not None, name
        assert context["context"] == expected, (name, context)
    star = harness.catalog.context(str(object_ids["star"]))
    assert (star["catalog"], star["source_id"]) == ("hipparcos", str(SIRIUS[0]))
    assert star["separation_arcsec"] == pytest.approx(math.hypot(0.3, 0.2), abs=0.05)
    disk = harness.catalog.context(str(object_ids["disk"]))
    assert (disk["catalog"], disk["source_id"]) == ("openngc", "IC0002")
    assert disk["offset_semimajor"] == pytest.approx(0.6, abs=0.05)
    assert harness.catalog.matches(str(object_ids["empty"])) == []
    matches = harness.catalog.matches(str(object_ids["star"]))
    assert matches[0]["catalog"] == "hipparcos"
    assert matches[0]["rank"] == 1

    # The object API shows them.
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(harness.factory(tmp_path))) as http:
        body = http.get(f"/api/v1/objects/{object_ids['disk']}").json()
        assert body["context"]["context"] == "supernova_like"
        assert body["context"]["source_id"] == "IC0002"
        assert body["matches"][0]["catalog"] == "openngc"
        body = http.get(f"/api/v1/objects/{object_ids['empty']}").json()
        assert (body["context"]["context"], body["matches"]) == ("orphan", [])

    # One internal.enriched record per alert, in Lanner's own schema.
    published = [lanner_schemas.decode("enriched", m.value)
                 for m in harness.outputs(harness.enriched)]
    assert sorted(r["object_id"] for r in published) == sorted(str(i) for i in
                                                               object_ids.values())
    by_object = {r["object_id"]: r for r in published}
    assert by_object[str(object_ids["star"])]["context"] == "variable_star"
    assert by_object[str(object_ids["star"])]["matches"][0]["source_id"] == str(SIRIUS[0])

    # Redelivered (a new group reads the topic again): the stored rows do not change.
    before = ([harness.catalog.context(str(i)) for i in object_ids.values()],
              [harness.catalog.matches(str(i)) for i in object_ids.values()])
    again = harness.enrich_once(group="lanner-enrich-again")
    assert again.enriched == len(places)
    assert ([harness.catalog.context(str(i)) for i in object_ids.values()],
            [harness.catalog.matches(str(i)) for i in object_ids.values()]) == before


def test_a_reloaded_catalog_is_picked_up(harness) -> None:
    """A catalog reloaded between batches is matched in its new version, without a restart."""
    harness.refcats.load("stars", [pa.record_batch({"sid": [1], "ra": [10.0], "dec": [5.0]})],
                         "sid", "ra", "dec", kind="star")
    record = next(iter(AlertSimulator(schema="11.1", seed=5, cutouts=False).packets(1)))
    harness.produce(harness.topics.lsst, wire.encode(placed(record, 800_000_000_001, 10.0,
                                                             5.0), SCHEMA_ID))
    harness.ingest_once()
    stage = harness.enrich_stage()
    try:
        stage.run(once=True, idle_polls=3)
        assert harness.catalog.context("800000000001")["source_id"] == "1"
        harness.refcats.load("stars", [pa.record_batch({"sid": [2], "ra": [10.0],
                                                        "dec": [5.0]})],
                             "sid", "ra", "dec", kind="star")
        # Once the stage's list of catalogs is older than its TTL, the new version is read.
        stage.enricher.catalogs.clock = lambda: 1e12
        later = placed(record, 800_000_000_001, 10.0, 5.0)
        later["diaSource"]["diaSourceId"] += 1
        later["diaSource"]["midpointMjdTai"] += 1.0
        harness.produce(harness.topics.lsst, wire.encode(later, SCHEMA_ID))
        harness.ingest_once()
        harness.flush()
        stage.run(once=True, idle_polls=3)
    finally:
        stage.source.close()
    assert harness.catalog.context("800000000001")["source_id"] == "2"


def test_features_come_from_the_whole_stored_history(harness, tmp_path) -> None:
    from broker.storage.archive import FEATURE_COLUMNS

    # Objects repeat in the simulated stream: some get several alerts, in one batch or more.
    packets = list(AlertSimulator(schema="11.1", seed=5, cutouts=False).encoded(60))
    for key, value in packets[:40]:
        harness.produce(harness.topics.lsst, value, key=key)
    harness.ingest_once()
    harness.enrich_once()
    for key, value in packets[40:]:
        harness.produce(harness.topics.lsst, value, key=key)
    harness.ingest_once()
    harness.enrich_once()

    published = [lanner_schemas.decode("enriched", m.value)
                 for m in harness.outputs(harness.enriched)]
    assert len({r["alert_id"] for r in published}) == 60
    newest: dict[str, dict[str, Any]] = {}
    for record in published:
        current = newest.get(record["object_id"])
        if current is None or (record["mjd"], record["alert_id"]) > (current["mjd"],
                                                                      current["alert_id"]):
            newest[record["object_id"]] = record
    assert len(newest) > 5
    for object_id, record in newest.items():
        stored = harness.catalog.features(object_id)
        detections = harness.lightcurves.lightcurve(object_id)
        forced = harness.lightcurves.forced_photometry(object_id)
        # Counts and times over everything archived, not only the newest packet's history.
        assert stored["ndet"] == len({d["source_id"] for d in detections}), object_id
        assert stored["nforced"] == len({f["forced_id"] for f in forced}), object_id
        assert stored["first_det_mjd"] == min(d["mjd"] for d in detections)
        assert stored["last_det_mjd"] == max(d["mjd"] for d in detections)
        for band in "ugrizy":
            assert stored[f"{band}_ndet"] == sum(d["band"] == band for d in detections)
        # The newest alert's record carries the stored features (ints as doubles).
        assert set(record["features"]) == set(FEATURE_COLUMNS)
        assert record["features"] == {k: None if v is None else float(v)
                                      for k, v in stored.items()}
    # Rubin's diaObject fields come through from the packet.
    assert any(harness.catalog.features(o)["dia_n_dia_sources"] for o in newest)

    # Redelivered: nothing stored changes.
    before = {o: harness.catalog.features(o) for o in newest}
    harness.enrich_once(group="lanner-enrich-again")
    assert {o: harness.catalog.features(o) for o in newest} == before

    from fastapi.testclient import TestClient

    from api.app import create_app

    object_id = next(iter(newest))
    with TestClient(create_app(harness.factory(tmp_path))) as http:
        body = http.get(f"/api/v1/objects/{object_id}").json()
    assert body["features"] == before[object_id]


def test_solar_system_alerts_are_archived_and_put_in_context(harness) -> None:
    simulator = AlertSimulator(schema="11.1", seed=3, cutouts=False, profile="realistic")
    solar = []
    for key, value in simulator.encoded(40):
        record = wire.decode(value)[1]
        if record.get("diaObject") is None:
            solar.append((key, value, record["diaSource"]["ssObjectId"]))
    assert solar, "the realistic profile makes one alert in ten a solar-system alert"
    for key, value, _ in solar:
        harness.produce(harness.topics.lsst, value, key=key)
    report = harness.ingest_once()
    assert (report.archived, report.dead_lettered) == (len(solar), 0)
    harness.enrich_once()
    for _, _, ss_object_id in solar:
        object_id = f"ss{ss_object_id}"
        assert harness.catalog.get_object(object_id) is not None
        context = harness.catalog.context(object_id)
        assert context["context"] == "solar_system"
        assert context["reason"] == "known_solar_system_object"
        assert context["catalog"] is None
    published = [lanner_schemas.decode("enriched", m.value)
                 for m in harness.outputs(harness.enriched)]
    assert {r["context"] for r in published} == {"solar_system"}


def test_a_moving_star_is_judged_where_it_has_moved_to(harness) -> None:
    from broker.domain.catalogs import MotionSpec
    from broker.enricher import julian_year

    records = list(AlertSimulator(schema="11.1", seed=9, cutouts=False).packets(2))
    # Both alerts at the first one's time (their source ids differ).
    mjd = records[0]["diaSource"]["midpointMjdTai"]
    records[1]["diaSource"]["midpointMjdTai"] = mjd
    years = julian_year(mjd) - 2000.0
    # 1''/yr east: some 26'' from its catalogued position by the alert's time.
    star = (150.0, 20.0)
    harness.refcats.load("fast", [pa.record_batch({
        "sid": [7], "ra": [star[0]], "dec": [star[1]], "pmra": [1000.0], "pmdec": [0.0]})],
        "sid", "ra", "dec", kind="star", motion=MotionSpec("pmra", "pmdec", 2000.0))
    now = offset(*star, years * 1.0, 0.0)
    for record, object_id, (ra, dec) in ((records[0], 800_000_000_010, now),
                                         (records[1], 800_000_000_011, star)):
        harness.produce(harness.topics.lsst,
                        wire.encode(placed(record, object_id, ra, dec), SCHEMA_ID),
                        key=str(object_id).encode())
    harness.ingest_once()
    harness.enrich_once()
    moved = harness.catalog.context("800000000010")
    assert (moved["context"], moved["source_id"]) == ("variable_star", "7")
    assert moved["separation_arcsec"] == pytest.approx(0.0, abs=0.2)
    # At the catalogued position, the star is no longer there.
    assert harness.catalog.context("800000000011")["context"] == "orphan"


def test_a_large_galaxy_is_seen_to_its_catalogs_overlap(harness) -> None:
    """A galaxy catalog is searched to its overlap: loaded with 10', an alert 2.4' out in a
    galaxy's disk is placed in it; loaded with the default 1', it is not."""
    from broker.domain.catalogs import select_rows

    ngc = pacsv.read_csv(OPENNGC)
    galaxies = ngc.filter(pa.compute.equal(ngc.column("type"), "G")).to_pylist()
    positions = np.array([(g["ra_deg"], g["dec_deg"]) for g in galaxies])

    def isolated(g: dict[str, Any]) -> bool:
        separations = angular_separation_deg(g["ra_deg"], g["dec_deg"], positions[:, 0],
                                             positions[:, 1])
        return int((separations < 0.3).sum()) == 1  # itself only, within 18'

    big = next(g for g in galaxies if g["majax_arcmin"] and 5.5 < g["majax_arcmin"] < 7.0
               and g["minax_arcmin"] and g["pa_deg"] is not None and abs(g["dec_deg"]) < 60
               and isolated(g))
    semi_major_arcsec = big["majax_arcmin"] * 30.0
    along = math.radians(big["pa_deg"])
    where = offset(big["ra_deg"], big["dec_deg"], 0.8 * semi_major_arcsec * math.sin(along),
                    0.8 * semi_major_arcsec * math.cos(along))
    assert 0.8 * semi_major_arcsec > 120.0  # well beyond the default 1' overlap

    for name, overlap in (("ngc_wide", 10.0 / 60.0), ("ngc_narrow", None)):
        source = open_catalog_file(OPENNGC)
        try:
            harness.refcats.load(name, select_rows(source.batches, "type", ["G"]), "id",
                                 "ra_deg", "dec_deg", kind="galaxy",
                                 shape=ShapeSpec("majax_arcmin", "minax_arcmin", "pa_deg"),
                                 overlap_deg=overlap)
        finally:
            source.close()
    assert {e["name"]: e["overlap_deg"] for e in harness.refcats.list()} == pytest.approx(
        {"ngc_wide": 10.0 / 60.0, "ngc_narrow": 1.0 / 60.0})
    record = next(iter(AlertSimulator(schema="11.1", seed=11, cutouts=False).packets(1)))
    harness.produce(harness.topics.lsst,
                    wire.encode(placed(record, 800_000_000_020, *where), SCHEMA_ID),
                    key=b"800000000020")
    harness.ingest_once()
    harness.enrich_once()
    context = harness.catalog.context("800000000020")
    assert (context["context"], context["catalog"], context["source_id"]) == (
        "supernova_like", "ngc_wide", big["id"])
    assert context["offset_semimajor"] == pytest.approx(0.8, abs=0.05)
    assert [m["catalog"] for m in harness.catalog.matches("800000000020")] == ["ngc_wide"]
    with pytest.raises(ValueError, match="overlap 20' is out of range"):
        harness.refcats.load("too_wide", [pa.record_batch({"i": [1], "ra": [0.0],
                                                           "dec": [0.0]})],
                             "i", "ra", "dec", overlap_deg=20.0 / 60.0)


def test_alerts_at_ra_360_and_the_poles_are_matched_like_any_other(harness) -> None:
    """Stars just across RA 0 and next to both poles: an alert at RA 360 or dec +-90 finds
    them, from whichever side of the wrap or pole the chunk of each lies."""
    stars = {1: (0.0002, 10.0), 2: (359.9998, -30.0), 3: (123.0, 89.9999), 4: (301.0, -89.9999)}
    harness.refcats.load("edges", [pa.record_batch({
        "sid": list(stars), "ra": [p[0] for p in stars.values()],
        "dec": [p[1] for p in stars.values()]})], "sid", "ra", "dec", kind="star")
    alerts = {800_000_000_030: (360.0, 10.0, "1"), 800_000_000_031: (0.0, -30.0, "2"),
              800_000_000_032: (0.0, 90.0, "3"), 800_000_000_033: (200.0, -90.0, "4")}
    records = list(AlertSimulator(schema="11.1", seed=13, cutouts=False).packets(len(alerts)))
    for record, (object_id, (ra, dec, _)) in zip(records, alerts.items(), strict=True):
        harness.produce(harness.topics.lsst,
                        wire.encode(placed(record, object_id, ra, dec), SCHEMA_ID),
                        key=str(object_id).encode())
    assert harness.ingest_once().archived == len(alerts)
    assert harness.enrich_once().enriched == len(alerts)
    for object_id, (ra, dec, star) in alerts.items():
        context = harness.catalog.context(str(object_id))
        assert (context["context"], context["source_id"]) == ("variable_star", star), object_id
        expected = angular_separation_deg(ra, dec, *stars[int(star)]) * 3600.0
        assert context["separation_arcsec"] == pytest.approx(expected, abs=0.01)


def test_watchlist_cones_are_matched_live_and_their_hits_stored_once(harness, tmp_path) -> None:
    from broker.domain.watchlists import Cones

    factory = harness.factory(tmp_path)
    watchlists = factory.watchlists
    records = list(AlertSimulator(schema="11.1", seed=17, cutouts=False).packets(3))
    places = {800_000_000_040: (150.0, 20.0), 800_000_000_041: (150.0, 20.2),
              800_000_000_042: (40.0, -30.0)}
    alice = watchlists.create("alice", "hosts", Cones(
        ["near", "wide", "elsewhere"], np.array([150.0, 150.0, 300.0]),
        np.array([20.0005, 20.1, 0.0]), np.array([3.0, 1800.0, 10.0])))
    bob = watchlists.create("bob", "mine", Cones(["b"], np.array([40.0]), np.array([-30.0]),
                                                 np.array([1.0])), visibility="public")
    # A watchmap (a 1-degree disc) around the first two positions, none near the third.
    from astropy import units as u
    from mocpy import MOC

    factory_maps = factory.watchmaps
    disc = factory_maps.create("carol", "gw", MOC.from_cone(
        lon=150.0 * u.deg, lat=20.0 * u.deg, radius=1.0 * u.deg, max_depth=12), source="moc")
    for record, (object_id, (ra, dec)) in zip(records, places.items(), strict=True):
        harness.produce(harness.topics.lsst,
                        wire.encode(placed(record, object_id, ra, dec), SCHEMA_ID),
                        key=str(object_id).encode())
    harness.ingest_once()
    stage = harness.enrich_stage(watchlists=watchlists, watchmaps=factory_maps)
    try:
        stage.run(once=True, idle_polls=3)
    finally:
        stage.source.close()
    by_object = {r["object_id"]: r for r in (lanner_schemas.decode("enriched", m.value)
                                             for m in harness.outputs(harness.enriched))}
    assert [(w["watchlist_id"], w["cone_name"]) for w in by_object["800000000040"][
        "watchlists"]] == [(alice.watchlist_id, "near"), (alice.watchlist_id, "wide")]
    assert by_object["800000000040"]["watchlists"][0]["separation_arcsec"] == pytest.approx(
        1.8, abs=0.01)
    assert [w["cone_name"] for w in by_object["800000000041"]["watchlists"]] == ["wide"]
    assert [(w["watchlist_id"], w["cone_name"]) for w in by_object["800000000042"][
        "watchlists"]] == [(bob.watchlist_id, "b")]
    hits = watchlists.hits(alice.watchlist_id, "alice")
    assert sorted((h["cone_name"], h["object_id"], h["live"]) for h in hits) == [
        ("near", "800000000040", True), ("wide", "800000000040", True),
        ("wide", "800000000041", True)]
    assert [h["object_id"] for h in watchlists.hits(bob.watchlist_id, None)] == ["800000000042"]
    assert [by_object[f"80000000004{i}"]["watchmaps"] for i in range(3)] == [
        [disc.watchmap_id], [disc.watchmap_id], []]
    assert sorted(h["object_id"] for h in factory_maps.hits(disc.watchmap_id, "carol")) == [
        "800000000040", "800000000041"]
    # The object API lists the lists and maps an object is in that the caller may see.
    from fastapi.testclient import TestClient

    from api.app import create_app

    headers = {}
    for name in ("alice", "bob", "carol"):
        factory.accounts.add_user(name)
        headers[name] = {"Authorization": f"Bearer {factory.accounts.issue_token(name)[0].text}"}
    with TestClient(create_app(factory)) as http:
        def seen(object_id: str, who: dict[str, str]) -> tuple[list, list]:
            body = http.get(f"/api/v1/objects/{object_id}", headers=who).json()
            return ([(w["name"], w["cone_name"]) for w in body["watchlists"]],
                    [m["name"] for m in body["watchmaps"]])

        assert seen("800000000040", headers["alice"]) == ([("hosts", "near"),
                                                           ("hosts", "wide")], [])
        assert seen("800000000040", headers["carol"]) == ([], ["gw"])
        assert seen("800000000040", {}) == ([], [])
        assert seen("800000000042", {}) == ([("mine", "b")], [])  # bob's list is public
        assert seen("800000000042", headers["alice"]) == ([("mine", "b")], [])
    # Redelivered: the hits are there once.
    again = harness.enrich_stage(watchlists=watchlists, group="lanner-enrich-again")
    try:
        again.run(once=True, idle_polls=3)
    finally:
        again.source.close()
    assert len(watchlists.hits(alice.watchlist_id, "alice")) == 3
