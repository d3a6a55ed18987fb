"""The faust-streaming engine of the filters stage on the real services: it publishes exactly
what each filter passes on the filter's topic, counts it, commits its group's offsets to the
end of its input, and records the progress that keeps the confluent loop, on the same input
afterwards, from publishing any of it again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from broker.filterset import utc_day
from broker.streaming import lanner_schemas
from consumers import filters as filters_stage
from tests.support.alerts import produce_placed, scattered
from tests.support.backends import ServicesHarness, committed_offsets
from tests.support.data import REPO_ROOT

ALERTS = 40
DEADLINE_S = 90.0


def _enriched(harness: ServicesHarness) -> list[dict[str, Any]]:
    produce_placed(harness, scattered(ALERTS, 21), first_id=710_000_000_100, seed=8)
    assert harness.ingest_once().archived == ALERTS
    assert harness.enrich_once().enriched == ALERTS
    return [lanner_schemas.decode("enriched", m.value) for m in harness.outputs(harness.enriched)]


def _published(harness: ServicesHarness, topic: str) -> list[dict[str, Any]]:
    return [lanner_schemas.decode("filtered", m.value) for m in harness.outputs(topic)]


def test_faust_engine_publishes_counts_and_records_progress(stack, kafka_topics,
                                                            tmp_path) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    process: subprocess.Popen | None = None
    try:
        enriched = _enriched(harness)
        factory = harness.factory(tmp_path)
        owner = f"u{uuid.uuid4().hex[:10]}"
        factory.accounts.add_user(owner)
        store = factory.filters
        mags = sorted(r["mag"] for r in enriched if r["mag"] is not None)
        cut = round(mags[len(mags) // 2], 3)
        bright = store.create(owner, "bright", f"SELECT mag, band WHERE mag < {cut}",
                              daily_cap=1000)
        capped = store.create(owner, "capped", "SELECT * WHERE mag IS NOT NULL", daily_cap=5)
        for made in (bright, capped):
            factory.create_topics([made.topic])
            store.set_state(made.filter_id, "enabled")

        env = harness.process_env(
            # The factory's database, where its filters are (`ServicesHarness.factory`).
            LANNER_MARIADB_DATABASE=factory.settings.mariadb_database,
            LANNER_FILTERS_GROUP=f"filters-{uuid.uuid4().hex[:8]}",
            LANNER_TOPIC_ANNOTATIONS=kafka_topics("internal.annotations", partitions=1),
            LANNER_FILTERS_BATCH_SIZE="15")
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "filters", "--engine", "faust"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while True:
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            assert time.monotonic() - started < DEADLINE_S, "faust engine too slow"
            committed, ends = committed_offsets(stack.kafka.bootstrap,
                                                env["LANNER_FILTERS_GROUP"], harness.enriched)
            if committed == ends and sum(ends.values()) == ALERTS:
                break
            time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors.decode()[-3000:]
        with_mag = sum(r["mag"] is not None for r in enriched)
        want = {r["alert_id"]: r for r in enriched if r["mag"] is not None and r["mag"] < cut}
        assert 0 < len(want) < ALERTS
        assert f"published {len(want) + 5} alerts for 2 filters" in output.decode(), output

        # Offsets are committed after the records are acknowledged: all are there by now.
        got = _published(harness, bright.topic)
        assert sorted(r["alert_id"] for r in got) == sorted(want)
        for record in got:
            source = want[record["alert_id"]]
            assert record["columns"] == {"mag": source["mag"], "band": source["band"]}
            assert (record["filter_id"], record["filter_version"], record["backfill"]) == (
                bright.filter_id, 1, False)
        assert len(_published(harness, capped.topic)) == 5
        day = utc_day(time.time())
        assert store.day_counts(day, [bright.filter_id, capped.filter_id]) == {
            bright.filter_id: (len(want), 0), capped.filter_id: (5, with_mag - 5)}

        # The confluent loop, in a group of its own over the same input, finds every record
        # already done for both filters: nothing is published or counted twice.
        stage = filters_stage.build(factory, source=harness.source("confluent-after-faust",
                                                                   [harness.enriched]),
                                    publisher=harness.publisher(), batch_size=15)
        again = stage.run(once=True, idle_polls=3)
        assert (again.consumed, again.published) == (ALERTS, 0)
        assert len(_published(harness, bright.topic)) == len(want)
        assert store.day_counts(day, [bright.filter_id])[bright.filter_id] == (len(want), 0)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        harness.close()
