"""Kill the filters process at random moments: every passing alert is published, and counted
exactly once.

Real services only: 30,000 ``internal.enriched`` records, three enabled filters, the
`lanner filters` process killed with SIGKILL at random moments (five times) and restarted each
time, then run with ``--once``. At the end each filter's topic holds every alert it passes (a
redelivered batch may repeat some: readers deduplicate by alert id), its day's count is exactly
the number of alerts it passes (never one counted twice), and the dead-letter topic is empty.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid

import numpy as np

from broker.filterset import utc_day
from broker.storage.filters import FilterStore
from broker.storage.kafka import KafkaClients
from broker.streaming import lanner_schemas
from tests.support.backends import ServicesHarness
from tests.support.data import REPO_ROOT

RECORDS = 30_000
KILLS = 5
FILTERS = {
    "bright": ("SELECT mag WHERE mag < 18", lambda r: r["mag"] < 18),
    "green": ("SELECT band WHERE band = 'g' AND mag < 21", lambda r: r["band"] == "g"
              and r["mag"] < 21),
    "north": ("SELECT dec WHERE dec > 60", lambda r: r["dec"] > 60),
}


def _records(rng: np.random.Generator) -> list[dict]:
    bands = np.array(list("ugrizy"))
    out = []
    for n in range(RECORDS):
        out.append({
            "alert_id": 20_000_000 + n, "object_id": f"obj{n % 6000:05d}", "survey": "lsst",
            "mjd": 61000.0 + n * 1e-4, "band": str(bands[n % 6]),
            "mag": float(rng.uniform(15, 24)), "ra": float(rng.uniform(0, 360)),
            "dec": float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), "chunk_id": 1,
            "context": "orphan", "context_catalog": None, "context_source_id": None,
            "context_separation_arcsec": None, "context_offset_semimajor": None,
            "context_reason": "nothing near", "matches": [], "features": {},
            "source_timestamp_ms": None, "ingested_ms": 0, "enriched_ms": 0,
            "watchlists": [], "watchmaps": []})
    return out


def test_sigkill_at_random_moments_publishes_every_pass_and_counts_it_once(
        stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    run = uuid.uuid4().hex[:8]
    owner = f"k{run}"
    try:
        store = FilterStore(harness.shards)
        made = {}
        for name, (text, _) in FILTERS.items():
            made[name] = store.create(owner, name, text, daily_cap=10**9)
            store.set_state(made[name].filter_id, "enabled")
        KafkaClients(bootstrap=stack.kafka.bootstrap).ensure_topics(
            [f.topic for f in made.values()])
        records = _records(np.random.default_rng(17))
        for record in records:
            harness.produce(harness.enriched, lanner_schemas.encode("enriched", record),
                            key=record["object_id"].encode())
        harness.flush()
        env = harness.process_env(LANNER_FILTERS_GROUP=f"filters-{run}",
                                  LANNER_FILTERS_INSTANCE_ID="filters-0",
                                  LANNER_FILTERS_BATCH_SIZE="50",
                                  LANNER_TOPIC_ANNOTATIONS=f"annotations.{run}")

        def process(*args: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "broker.cli", "filters", *args],
                                    cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)

        rng = random.Random(9)
        progress = []
        for _ in range(KILLS):
            running = process()
            time.sleep(rng.uniform(3.0, 5.0))
            assert running.poll() is None, running.stdout.read().decode()
            running.send_signal(signal.SIGKILL)
            running.wait(30)
            assert running.returncode == -signal.SIGKILL
            progress.append(len(harness.outputs(made["bright"].topic)))
        final = process("--once")
        output, _ = final.communicate(timeout=900)
        assert final.returncode == 0, output.decode()
        want_bright = sum(FILTERS["bright"][1](r) for r in records)
        assert 0 < progress[0] < want_bright, progress  # the first kill fell mid-stream

        assert harness.outputs(harness.topics.dlq) == []
        counts = store.day_counts(utc_day(time.time()))
        for name, (_, passes) in FILTERS.items():
            want = {r["alert_id"] for r in records if passes(r)}
            got = [lanner_schemas.decode("filtered", m.value)
                   for m in harness.outputs(made[name].topic)]
            assert {r["alert_id"] for r in got} == want, name
            assert counts[made[name].filter_id] == (len(want), 0), name
    finally:
        harness.close()
