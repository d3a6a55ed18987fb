"""Benchmark: ingest -> enrich -> filters on the real services, throughput and latency.

Needs `lanner services up`. As `bench/pipeline.py` (fresh topics, keyspace and database, the
demo's reference catalogs, ``--processes`` `lanner ingest` processes and one `lanner enrich`),
plus one `lanner filters` process running ``--filters`` enabled filters (default 100): the
shapes of `bench/filters.py` that name no watchlist or watchmap (they would name lists of no
one here), each passing a few per cent of alerts, and one more, the probe, that passes every
alert (``mag IS NULL OR mag IS NOT NULL``), on whose topic the latency is read.

1. Sustained rate: ``--count`` packets (profile ``--profile``, ``realistic`` by default) are
   produced as fast as Kafka takes them; the rate is the alerts that reached the probe's topic
   over the time from the first produce to the last probe record read.
2. Latency: packets at 250 alerts/s for ``--seconds``, or at half the sustained rate when the
   machine sustains less than 500/s (``latency_rate_rule`` says which); latency is from each
   packet's Kafka timestamp (carried through as ``source_timestamp_ms``) to the moment a reader
   of the probe's topic receives its ``lanner.filtered`` record: p50 and p99.

Prints human lines, then one JSON object as the last line::

    {"profile": ..., "filters": ..., "p50_s": ..., "p99_s": ..., "sustained_alerts_per_s": ...,
     "sustained_alerts_per_s_per_core": ..., "latency_rate": ..., "latency_rate_rule": ...}

Run: ``python bench/latency.py [--count N] [--seconds S] [--filters N]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.filters import shapes  # noqa: E402
from bench.pipeline import (  # noqa: E402
    _TOPICS,
    Reader,
    _cleanup,
    _env,
    _lanner,
    _load_catalogs,
    _stop,
    arguments,
    feed,
)
from broker.config import Settings  # noqa: E402
from broker.simulator import AlertSimulator  # noqa: E402
from broker.storage.filters import FilterStore  # noqa: E402
from broker.storage.kafka import KafkaClients  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402

OWNER = "bench"
PROBE = "SELECT mag WHERE mag IS NULL OR mag IS NOT NULL"


def _filters(settings: Settings, env: dict[str, str], count: int, seed: int) -> list[str]:
    """``count`` filters and the probe, enabled in the run's database; their topics."""
    shards = MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                           password=settings.mariadb_password.get_secret_value(),
                           database=env["LANNER_MARIADB_DATABASE"])
    store = FilterStore(shards)
    rng = np.random.default_rng(seed)
    texts = []
    while len(texts) < count:
        texts += [t for t in shapes(rng) if "watch" not in t and "gaia" not in t]
    topics = []
    for i, text in enumerate([PROBE, *texts[:count]]):
        made = store.create(OWNER, "probe" if i == 0 else f"f{i}", text, daily_cap=10**9)
        store.set_state(made.filter_id, "enabled")
        topics.append(made.topic)
    shards.close()
    return topics


def _start(settings: Settings, env: dict[str, str], processes: int, partitions: int,
           filters: int, seed: int) -> tuple[KafkaClients, list[subprocess.Popen], str]:
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=partitions)
    clients.ensure_topics([env[k] for k in _TOPICS])
    _load_catalogs(env)
    topics = _filters(settings, env, filters, seed)
    clients.ensure_topics(topics)
    workers = ([_lanner(env, "ingest") for _ in range(processes)]
               + [_lanner(env, "enrich"), _lanner(env, "filters")])
    time.sleep(10)  # set up, join the groups
    for worker in workers:
        if worker.poll() is not None:
            stderr = worker.stderr.read().decode() if worker.stderr else ""
            raise RuntimeError(f"a stage died: {stderr[-2000:]}")
    return clients, workers, topics[0]


def _run_env(run: str) -> dict[str, str]:
    env = _env(run)
    env["LANNER_FILTERS_GROUP"] = f"bench-{run}-filters"
    env["LANNER_TOPIC_ANNOTATIONS"] = f"bench.{run}.annotations"
    return env


def _drop(settings: Settings, topics: list[str]) -> None:
    admin = KafkaClients(bootstrap=settings.kafka_bootstrap).admin()
    for future in admin.delete_topics(topics, operation_timeout=60).values():
        future.result(60)


def measure(settings: Settings, *, count: int, rate: float | None, processes: int,
            partitions: int, filters: int, seed: int, profile: str) -> dict[str, Any]:
    """One run: as fast as Kafka takes them (``rate`` None), or at ``rate``."""
    messages = list(AlertSimulator(schema="11.1", seed=seed, profile=profile).encoded(count))
    env = _run_env(uuid.uuid4().hex[:8])
    workers: list[subprocess.Popen] = []
    topics: list[str] = []
    try:
        clients, workers, probe = _start(settings, env, processes, partitions, filters, seed)
        topics = [probe]
        reader = Reader(settings.kafka_bootstrap, probe, family="filtered")
        reader.start()
        started_ms = feed(clients, env["LANNER_TOPIC_ALERTS_LSST"], messages, reader, count,
                          rate=rate)
    finally:
        _stop(workers)
        _cleanup(settings, env)
        if topics:
            _drop(settings, [f"filter.{OWNER}.{n}" for n in ["probe"] +
                             [f"f{i}" for i in range(1, filters + 1)]]
                  + [env["LANNER_TOPIC_ANNOTATIONS"]])
    if rate is None:
        elapsed = (max(at for at, _ in reader.received.values()) - started_ms) / 1000.0
        return {"alerts": count, "elapsed_s": elapsed}
    latencies = sorted((at - source) / 1000.0 for at, source in reader.received.values()
                       if source)
    return {"latencies": latencies}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = arguments(__doc__.splitlines()[0], seed=31)
    parser.add_argument("--filters", type=int, default=100, help="filters besides the probe")
    args = parser.parse_args(argv)
    settings = Settings()
    common = {"processes": args.processes, "partitions": args.partitions,
              "filters": args.filters, "profile": args.profile}
    run = measure(settings, count=args.count, rate=None, seed=args.seed, **common)
    cores = os.cpu_count() or 1
    sustained = run["alerts"] / run["elapsed_s"]
    print(f"sustained: {args.count} alerts through ingest, enrich and {args.filters + 1} "
          f"filters in {run['elapsed_s']:.1f} s: {sustained:.1f} alerts/s, "
          f"{sustained / cores:.1f} per core", flush=True)
    if sustained >= 500.0:
        rate, rule = 250.0, "LSST mean (250/s)"
    else:
        rate, rule = sustained / 2.0, "half the sustained rate (below 500/s)"
    timed = measure(settings, count=max(1, int(rate * args.seconds)), rate=rate,
                    seed=args.seed + 1, **common)
    latencies = timed["latencies"]
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"latency at {rate:.1f} alerts/s for {args.seconds:.0f} s ({len(latencies)} alerts): "
          f"produced -> filter topic read: p50 {p50:.2f} s, p99 {p99:.2f} s", flush=True)
    result = {"profile": args.profile, "filters": args.filters + 1,
              "ingest_processes": args.processes, "alerts": args.count,
              "sustained_alerts_per_s": round(sustained, 1),
              "sustained_alerts_per_s_per_core": round(sustained / cores, 1), "cores": cores,
              "latency_rate": round(rate, 1), "latency_rate_rule": rule,
              "p50_s": round(p50, 3), "p99_s": round(p99, 3),
              "latency_alerts": len(latencies)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
