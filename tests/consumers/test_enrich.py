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
