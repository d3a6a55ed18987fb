"""Kill the enrich process at random moments: every alert is enriched, and stored once.

Real services only: 20,000 ``internal.ingested`` records of 4,000 objects, Hipparcos loaded as
stars, the `lanner enrich` process killed with SIGKILL at random moments (five times) and
restarted each time. At the end every object has exactly one context row, from its newest
alert; every alert id has an ``internal.enriched`` record (redelivered batches repeat some, so
a reader deduplicates by alert id); the dead-letter topic is empty.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

from broker.domain.sky import hpx29
from broker.storage.refcat import open_catalog_file
from broker.streaming import lanner_schemas
from tests.support.backends import CHUNKER, ServicesHarness
from tests.support.catalogs import HIPPARCOS
from tests.support.data import REPO_ROOT

RECORDS = 20_000
OBJECTS = 4_000
KILLS = 5


def _enrich_process(harness: ServicesHarness, *args: str) -> subprocess.Popen:
    env = harness.process_env(LANNER_ENRICH_INSTANCE_ID="enrich-0",
                              LANNER_ENRICH_BATCH_SIZE="100")
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "enrich", *args],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _records(rng: np.random.Generator) -> tuple[list[dict], dict[str, dict]]:
    """Ingested records: a fifth of the objects sit on Hipparcos stars, the rest anywhere."""
    stars = pq.read_table(HIPPARCOS, columns=["ra", "dec"])
    pick = rng.choice(stars.num_rows, OBJECTS // 5, replace=False)
    ra = np.concatenate([stars.column("ra").to_numpy()[pick],
                         rng.uniform(0, 360, OBJECTS - len(pick))])
    dec = np.concatenate([stars.column("dec").to_numpy()[pick],
                          np.degrees(np.arcsin(rng.uniform(-1, 1, OBJECTS - len(pick))))])
    chunks = CHUNKER.locate(ra, dec)
    indices = hpx29(ra, dec)
    records, newest = [], {}
    for n in range(RECORDS):
        i = int(rng.integers(OBJECTS))
        record = {
            "alert_id": 10_000_000 + n, "object_id": f"obj{i:05d}", "survey": "lsst",
            "alert_schema": "lsst.v11_1", "mjd": 61000.0 + n * 1e-3, "ra": float(ra[i]),
            "dec": float(dec[i]), "band": "r", "psf_flux": 1000.0, "psf_flux_err": 50.0,
            "mag": 23.9, "snr": 20.0, "reliability": 0.9, "object_ra": float(ra[i]),
            "object_dec": float(dec[i]), "chunk_id": int(chunks[i]), "hpx29": int(indices[i]),
            "n_detections": 1, "n_forced": 0, "has_cutouts": False, "topic": "alerts.lsst",
            "partition": 0, "offset": n, "source_timestamp_ms": None,
            "ingested_ms": 1_800_000_000_000 + n,
        }
        records.append(record)
        newest[record["object_id"]] = record
    return records, newest


def _until_output(harness: ServicesHarness, process: subprocess.Popen,
                  timeout_s: float = 120.0) -> None:
    """Wait until the enrich process has written its first records (a loaded machine can take
    longer than the kills' random delays to start one)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": harness.stack.kafka.bootstrap,
                         "group.id": "lanner-test-watermarks"})
    try:
        partitions = consumer.list_topics(harness.enriched, timeout=10).topics[
            harness.enriched].partitions
        deadline = time.monotonic() + timeout_s
        while not any(consumer.get_watermark_offsets(TopicPartition(harness.enriched, p),
                                                     timeout=10)[1] > 0 for p in partitions):
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the enrich process wrote nothing in 2 minutes"
            time.sleep(0.2)
    finally:
        consumer.close()


def test_sigkill_at_random_moments_enriches_every_alert_once(stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    try:
        source = open_catalog_file(HIPPARCOS)
        try:
            harness.refcats.load("hipparcos", source.batches, "hip", "ra", "dec", kind="star")
        finally:
            source.close()
        records, newest = _records(np.random.default_rng(11))
        for record in records:
            harness.produce(harness.topics.ingested, lanner_schemas.encode("ingested", record),
                            key=record["object_id"].encode())
        harness.flush()

        rng = random.Random(5)
        progress = []
        for kill in range(KILLS):
            process = _enrich_process(harness)
            if kill == 0:  # mid-stream: once it has written, however long its start took
                _until_output(harness, process)
                time.sleep(rng.uniform(0.2, 1.0))
            else:
                time.sleep(rng.uniform(2.0, 5.0))
            assert process.poll() is None, process.stdout.read().decode()
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            assert process.returncode == -signal.SIGKILL
            progress.append(len({lanner_schemas.decode("enriched", m.value)["alert_id"]
                                 for m in harness.outputs(harness.enriched)}))
        # The kills fell mid-stream: the first left work for the others.
        assert 0 < progress[0] < RECORDS, progress
        final = _enrich_process(harness, "--once")
        output, _ = final.communicate(timeout=900)
        assert final.returncode == 0, output.decode()

        assert harness.outputs(harness.topics.dlq) == []
        published = [lanner_schemas.decode("enriched", m.value)
                     for m in harness.outputs(harness.enriched)]
        assert {r["alert_id"] for r in published} == {r["alert_id"] for r in records}
        rows = harness.catalog.shards.all_shards(  # type: ignore[attr-defined]
            lambda cursor: (cursor.execute("SELECT object_id, alert_id, context FROM "
                                           "object_context"), cursor.fetchall())[1],
            write=False)
        stored = [row for part in rows.values() for row in part]
        assert len(stored) == len({r[0] for r in stored}) == len(newest)  # one per object
        assert {r[0]: r[1] for r in stored} == {o: r["alert_id"] for o, r in newest.items()}
        on_stars = sum(1 for r in stored if r[2] == "variable_star")
        assert on_stars >= OBJECTS // 5 - 5  # a star or two may share its place with another
    finally:
        harness.close()
