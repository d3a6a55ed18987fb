"""Filters-stage benchmark on the real services: the confluent-kafka loop against the
faust-streaming agent (`lanner filters --engine confluent|faust`), many filters, many topics.

Needs `lanner services up` and the ``faust`` extra. Everything lives in a run of its own
(topics ``bench.<run>.*`` and ``filter.bench<run>.*``, database ``bench_<run>``, consumer
groups ``bench-<run>-*``), all dropped at the end, even on failure.

1. Filters: ``--filters`` enabled filters (default 1,000) of the shapes of `bench/filters.py`
   that name no watchlist, watchmap or reference catalog (this run has none), each with its
   own topic of `Settings.kafka_partitions` partitions, created as enabling a filter over the
   API creates it: the stage's output is spread over a thousand topics.
2. Records: ``--count`` ``lanner.enriched`` records (default 20,000) made by
   `bench.filters.records` (all 144 features, about a fifth NULL; realistic ranges), keyed by
   object id.
3. Warm-up: one unmeasured confluent run first. The first records written to a thousand new
   topics (four thousand partitions) make the broker create every partition's log segment
   files; measured, that took a first run three times as long as the next one of the same
   engine, whichever engine went first.
4. Engines, ``--rounds`` times each (the order alternating from round to round): a new
   `lanner filters --engine E` process, in a group of its own, on a topic of its own; once it
   owns every partition, the records are produced there. One more filter, the probe, passes
   every alert (``mag IS NULL OR mag IS NOT NULL``; a new probe per run, the previous one
   disabled); the rate is records over the time from the first record produced to the newest
   ``published_ms`` on the probe's topic, once it holds every record. The CPU time the
   process used meanwhile (from /proc) is reported per alert: both engines run the same
   `consumers.filters.FiltersStage.process`, so the difference is what their Kafka clients
   cost: fetching, and publishing every pass on its filter's topic.

Each engine's figure is the median of its rounds. Per-core figures divide by every core of
the machine (the services share them). Prints human lines, then one JSON object as the last
line: ``filters``, ``alerts``, ``passes_per_run``, ``confluent_alerts_per_s``,
``faust_alerts_per_s``, ``confluent_per_core``, ``faust_per_core``,
``cpu_ms_per_alert`` (by engine), ``faster`` and the runs.

    python bench/filters_engines.py [--count 20000] [--filters 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from bench.enrich import (  # noqa: E402
    PARTITIONS,
    _interrupt,
    cpu_seconds,
    lanner,
    orders,
    read_topic,
    stop,
    wait_joined,
)
from bench.filters import records, shapes  # noqa: E402
from broker.config import get_settings  # noqa: E402
from broker.factory import Factory  # noqa: E402
from broker.filterset import utc_day  # noqa: E402
from broker.storage.kafka import KafkaClients, produce_all  # noqa: E402
from broker.streaming import lanner_schemas  # noqa: E402

PROBE = "SELECT mag WHERE mag IS NULL OR mag IS NOT NULL"


class Run:
    """The names of one benchmark run, its filters' store, and what its processes are told."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.owner = f"bench{self.id}"
        self.settings = get_settings().model_copy(update={
            "mariadb_database": f"bench_{self.id}", "kafka_partitions": PARTITIONS})
        self.factory = Factory(self.settings)
        self.annotations = f"bench.{self.id}.annotations"
        self.dlq = f"bench.{self.id}.dlq"
        self.topics: list[str] = [self.annotations, self.dlq]
        self.groups: list[str] = []

    def engine_env(self, engine: str, round_: int) -> dict[str, str]:
        name = f"{engine}{round_}"
        env = {**os.environ, "LANNER_BACKEND": "services", "LANNER_LOG_LEVEL": "WARNING",
               "LANNER_MARIADB_DATABASE": self.settings.mariadb_database,
               "LANNER_KAFKA_PARTITIONS": str(PARTITIONS),
               "LANNER_TOPIC_ENRICHED": f"bench.{self.id}.enriched.{name}",
               "LANNER_TOPIC_ANNOTATIONS": self.annotations, "LANNER_TOPIC_DLQ": self.dlq,
               "LANNER_FILTERS_GROUP": f"bench-{self.id}-{name}"}
        self.topics.append(env["LANNER_TOPIC_ENRICHED"])
        self.groups.append(env["LANNER_FILTERS_GROUP"])
        return env

    def cleanup(self) -> None:
        """Drop everything the run made; each step tried even if another fails."""
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        steps = [
            lambda: [f.result(120) for f in admin.delete_topics(
                list(dict.fromkeys(self.topics)), operation_timeout=120).values()],
            lambda: [f.result(60) for f in admin.delete_consumer_groups(
                self.groups, request_timeout=30).values()] if self.groups else None,
            self.factory.shards.drop_database,
            self.factory.close,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # report and go on cleaning
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)


def make_filters(run: Run, count: int, seed: int) -> list[int]:
    """``count`` enabled filters, their topics created; their ids."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    while len(texts) < count:
        texts += [t for t in shapes(rng)
                  if not any(word in t for word in ("watch", "gaia", "openngc"))]
    store = run.factory.filters
    topics, ids = [], []
    for i, text in enumerate(texts[:count]):
        made = store.create(run.owner, f"f{i}", text, daily_cap=10**9)
        store.set_state(made.filter_id, "enabled")
        topics.append(made.topic)
        ids.append(made.filter_id)
    started = time.perf_counter()
    run.factory.create_topics(topics)
    run.topics += topics
    print(f"{count} filters enabled, their topics created in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return ids


def engine_run(run: Run, engine: str, round_: int, values: list[tuple[bytes, bytes]],
               probe: int | None) -> tuple[dict[str, Any], int]:
    """One engine's run; its figures and its probe (disabled by the next run)."""
    store = run.factory.filters
    if probe is not None:
        store.set_state(probe, "disabled")
    made = store.create(run.owner, f"probe{engine}{round_}", PROBE, daily_cap=10**9)
    store.set_state(made.filter_id, "enabled")
    run.factory.create_topics([made.topic])
    run.topics.append(made.topic)
    env = run.engine_env(engine, round_)
    source = env["LANNER_TOPIC_ENRICHED"]
    clients = KafkaClients(bootstrap=run.settings.kafka_bootstrap, partitions=PARTITIONS)
    clients.ensure_topics([source, run.annotations, run.dlq])
    process = lanner(env, "filters", "--engine", engine)
    try:
        wait_joined(run.settings.kafka_bootstrap, env["LANNER_FILTERS_GROUP"], source,
                    [process], timeout=300)
        producer = clients.producer()
        cpu_before = cpu_seconds(process)
        started_ms = time.time() * 1000
        produce_all(producer, source, values)
        probed = read_topic(run.settings.kafka_bootstrap, made.topic, len(values), 3600,
                            [process])
        cpu = cpu_seconds(process) - cpu_before
    finally:
        stop([process])
    published = [lanner_schemas.decode("filtered", m.value()) for m in probed]
    alerts = len({p["alert_id"] for p in published})
    if alerts != len(values):
        raise RuntimeError(f"{engine}: the probe passed {alerts} alerts of {len(values)}")
    elapsed = (max(p["published_ms"] for p in published) - started_ms) / 1000
    rate = alerts / elapsed
    which = f"round {round_}" if round_ else "warm-up, not counted"
    print(f"filters, {engine} engine ({which}): {alerts} alerts in {elapsed:.1f} s: "
          f"{rate:.0f} alerts/s; the process used {cpu:.1f} s of CPU "
          f"({cpu / alerts * 1000:.2f} ms per alert)", flush=True)
    return {"engine": engine, "round": round_, "seconds": round(elapsed, 2),
            "alerts_per_s": round(rate, 1),
            "cpu_ms_per_alert": round(cpu / alerts * 1000, 3)}, made.filter_id


def passes(run: Run, ids: list[int], day: str) -> int:
    """What one run published besides the probe: the filters' counts of the day over the
    runs (every run publishes the same passes)."""
    counts = run.factory.filters.day_counts(day, ids)
    return sum(published for published, _ in counts.values()) // max(1, len(run.groups))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="enriched records")
    parser.add_argument("--filters", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    values = [(r["object_id"].encode(), lanner_schemas.encode("enriched", r))
              for r in records(args.count, args.seed)]
    run = Run()
    runs: list[dict[str, Any]] = []
    try:
        ids = make_filters(run, args.filters, args.seed)
        day = utc_day(time.time())
        _, probe = engine_run(run, "confluent", 0, values, None)  # the warm-up
        for round_, engine in orders(args.rounds):
            figures, probe = engine_run(run, engine, round_, values, probe)
            runs.append(figures)
        published = passes(run, ids, day)
    finally:
        run.cleanup()
    cores = os.cpu_count() or 1
    rate = {e: round(statistics.median(r["alerts_per_s"] for r in runs if r["engine"] == e), 1)
            for e in ("confluent", "faust")}
    cpu = {e: round(statistics.median(r["cpu_ms_per_alert"] for r in runs if r["engine"] == e),
                    3) for e in ("confluent", "faust")}
    result = {"filters": args.filters, "alerts": args.count, "passes_per_run": published,
              "confluent_alerts_per_s": rate["confluent"], "faust_alerts_per_s": rate["faust"],
              "confluent_per_core": round(rate["confluent"] / cores, 1),
              "faust_per_core": round(rate["faust"] / cores, 1), "cpu_ms_per_alert": cpu,
              "faster": max(rate, key=lambda e: rate[e]), "runs": runs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
