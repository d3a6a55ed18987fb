"""Kill the ingest process at random moments: nothing is lost, nothing is duplicated.

Real services only: a stream of 8,000 packets, the `lanner ingest` process killed with SIGKILL
at random moments (five times) and restarted each time; at the end every alert is archived once
in Cassandra and in the MariaDB chunks, and the dead-letter topic is empty.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from broker.simulator import AlertSimulator
from broker.streaming import lanner_schemas, wire
from tests.support.backends import ServicesHarness
from tests.support.data import REPO_ROOT

PACKETS = 8_000
KILLS = 5


def _ingest_process(harness: ServicesHarness, *args: str) -> subprocess.Popen:
    # A restarted process takes over from the one killed before it at once.
    env = harness.process_env(LANNER_INGEST_INSTANCE_ID="ingest-0",
                              LANNER_INGEST_BATCH_SIZE="300")
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "ingest", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    try:
        alert_ids: set[int] = set()
        detection_ids: set[int] = set()
        object_ids: set[str] = set()
        simulator = AlertSimulator(schema="11.1", seed=2027, cutouts=False)
        for key, value in simulator.encoded(PACKETS):
            record = wire.decode(value)[1]
            alert_ids.add(record["diaSourceId"])
            detection_ids.add(record["diaSourceId"])
            detection_ids.update(p["diaSourceId"] for p in record["prvDiaSources"] or ())
            object_ids.add(key.decode())
            harness.produce(harness.topics.lsst, value, key=key)
        harness.flush()
        assert len(alert_ids) == PACKETS

        rng = random.Random(7)
        for _ in range(KILLS):
            process = _ingest_process(harness)
            time.sleep(rng.uniform(2.0, 7.0))
            assert process.poll() is None, process.stdout.read().decode()
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            assert process.returncode == -signal.SIGKILL

        before = harness.lightcurves.counts()["packets"]
        assert 0 < before < PACKETS, before  # the kills fell mid-stream
        # A last run drains whatever is left and exits by itself.
        final = _ingest_process(harness, "--once")
        output, _ = final.communicate(timeout=900)
        assert final.returncode == 0, output.decode()

        counts = harness.lightcurves.counts()
        catalog = harness.catalog.counts()
        assert counts["packets"] == PACKETS
        assert counts["detections"] == len(detection_ids)
        assert catalog["alert_rows"] == len(detection_ids)
        assert catalog["objects"] == catalog["director"]
        assert harness.outputs(harness.topics.dlq) == []
        published = {lanner_schemas.decode("ingested", m.value)["alert_id"]
                     for m in harness.outputs(harness.topics.ingested)}
        assert published == alert_ids  # at least once: redelivered batches may repeat some
        for object_id in random.Random(3).sample(sorted(object_ids), 25):
            row = harness.catalog.get_object(object_id)
            curve = harness.lightcurves.lightcurve(object_id)
            assert row["n_detections"] == len(curve) == len(harness.catalog.alert_rows(object_id))
            assert len({r["source_id"] for r in curve}) == len(curve)
    finally:
        harness.close()
