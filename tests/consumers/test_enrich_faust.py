"""The faust-streaming engine of the enrich stage on the real services: it stores what the
confluent-kafka loop stores, publishes the same records on the same partitions, and commits
its group's offsets to the end of its input.

Simulated alerts are placed on Hipparcos stars, on OpenNGC galaxies and anywhere else (the
bundled catalogs loaded as `lanner demo` loads them), ingested, then enriched by
``lanner enrich --engine faust`` in a subprocess until every alert has its record. The stored
results are read, the enrichment tables emptied, and the confluent loop run over the same
``internal.ingested``: it must store the same rows.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from broker.data import CATALOGS
from broker.domain.catalogs import select_rows
from broker.simulator import AlertSimulator
from broker.storage.refcat import open_catalog_file
from broker.streaming import lanner_schemas, wire
from broker.streaming.schemas import latest_version
from tests.support.alerts import offset, placed
from tests.support.backends import ServicesHarness, committed_offsets
from tests.support.catalogs import HIPPARCOS, OPENNGC
from tests.support.data import REPO_ROOT

ALERTS = 240
DEADLINE_S = 60.0


def _load_bundled(harness: ServicesHarness) -> None:
    """The demo's catalogs, with the demo's options (Hipparcos moving, OpenNGC's galaxies)."""
    for catalog in CATALOGS:
        with catalog.path() as path:
            source = open_catalog_file(path)
            batches = source.batches
            if catalog.only is not None:
                batches = select_rows(batches, *catalog.only)
            try:
                harness.refcats.load(catalog.name, batches, catalog.id_col, catalog.ra_col,
                                     catalog.dec_col, kind=catalog.kind, shape=catalog.shape,
                                     motion=catalog.motion)
            finally:
                source.close()


def _places(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A third of the alerts just off slow Hipparcos stars, a third on or in OpenNGC galaxies,
    a third anywhere."""
    hip = pq.read_table(HIPPARCOS, columns=["ra", "dec", "pmra", "pmdec"])
    ra, dec = hip.column("ra").to_numpy(), hip.column("dec").to_numpy()
    pm = np.hypot(hip.column("pmra").to_numpy(), hip.column("pmdec").to_numpy())
    stars = rng.choice(np.flatnonzero(pm < 10), ALERTS // 3, replace=False)
    ngc = pacsv.read_csv(OPENNGC).to_pylist()
    galaxies = [g for g in ngc if g["type"] == "G" and g["majax_arcmin"] is not None]
    places = [offset(float(ra[i]), float(dec[i]), 0.3, -0.2) for i in stars]
    for k, i in enumerate(rng.choice(len(galaxies), ALERTS // 3, replace=False)):
        g = galaxies[i]  # every other one on the nucleus, the others in the disk or beyond
        semi_major_arcsec = g["majax_arcmin"] * 30
        along = 0.0 if k % 2 == 0 else rng.uniform(0.2, 3.0) * semi_major_arcsec
        places.append(offset(g["ra_deg"], g["dec_deg"], 0.0, along))
    while len(places) < ALERTS:
        places.append((float(rng.uniform(0, 360)),
                       float(np.degrees(np.arcsin(rng.uniform(-1, 1))))))
    return places


def _stored(harness: ServicesHarness, object_ids: list[str]) -> dict[str, Any]:
    return {o: (harness.catalog.context(o), harness.catalog.matches(o)) for o in object_ids}


def _published(harness: ServicesHarness) -> dict[int, tuple[int, dict[str, Any]]]:
    """Each alert's newest-read enriched record and its partition, by alert id."""
    out = {}
    for message in harness.outputs(harness.enriched):
        record = lanner_schemas.decode("enriched", message.value)
        out[record["alert_id"]] = (message.partition, record)
    return out


def test_faust_engine_matches_the_confluent_loop(stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    process: subprocess.Popen | None = None
    try:
        _load_bundled(harness)
        rng = np.random.default_rng(3)
        schema = latest_version()
        schema_id = schema.major * 100 + schema.minor
        records = AlertSimulator(schema=schema, seed=21, cutouts=False).packets(ALERTS)
        object_ids = []
        for i, (record, (ra, dec)) in enumerate(zip(records, _places(rng), strict=True)):
            object_id = 700_000_000_000 + i
            object_ids.append(str(object_id))
            harness.produce(harness.topics.lsst,
                            wire.encode(placed(record, object_id, ra, dec), schema_id),
                            key=str(object_id).encode())
        assert harness.ingest_once().archived == ALERTS

        env = harness.process_env(LANNER_ENRICH_BATCH_SIZE="50")
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "enrich", "--engine", "faust"], cwd=REPO_ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        bootstrap = stack.kafka.bootstrap
        group = env["LANNER_ENRICH_GROUP"]
        while True:
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            assert time.monotonic() - started < DEADLINE_S, "faust engine too slow"
            committed, ends = committed_offsets(bootstrap, group, harness.topics.ingested)
            if committed == ends and sum(ends.values()) == ALERTS:
                break
            time.sleep(1.0)
        # Offsets are committed after the records are acknowledged: all are there by now.
        by_faust = _published(harness)
        assert sorted(by_faust) == sorted(r["alert_id"] for r in
                                          (lanner_schemas.decode("ingested", m.value)
                                           for m in harness.outputs(harness.topics.ingested)))
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors.decode()[-3000:]
        assert f"enriched {ALERTS} alerts" in output.decode(), output.decode()
        assert harness.outputs(harness.topics.dlq) == []

        faust_rows = _stored(harness, object_ids)
        contexts = {row["context"] for row, _ in faust_rows.values() if row is not None}
        assert {"variable_star", "nuclear", "orphan"} <= contexts, contexts

        # The same input through the confluent loop, on empty enrichment tables.
        harness.catalog.shards.all_shards(  # type: ignore[attr-defined]
            lambda cursor: [cursor.execute(f"DELETE FROM {table}")
                            for table in ("object_context", "object_matches")])
        assert all(row is None for row, _ in _stored(harness, object_ids).values())
        harness.enrich_once(group="confluent-check", batch_size=50)
        assert _stored(harness, object_ids) == faust_rows

        # The same records on the same partitions, but for the time they were made.
        both = harness.outputs(harness.enriched)
        assert len(both) == 2 * ALERTS
        confluent = {}
        for message in both:
            record = lanner_schemas.decode("enriched", message.value)
            if by_faust[record["alert_id"]][1]["enriched_ms"] != record["enriched_ms"]:
                confluent[record["alert_id"]] = (message.partition, record)
        assert sorted(confluent) == sorted(by_faust)
        for alert_id, (partition, record) in confluent.items():
            faust_partition, faust_record = by_faust[alert_id]
            assert partition == faust_partition
            assert {**record, "enriched_ms": 0} == {**faust_record, "enriched_ms": 0}
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(30)
        harness.close()
